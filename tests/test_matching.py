"""Hungarian matching against scipy's linear_sum_assignment, with padding and NaNs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from vision_jax import matching

match = jax.jit(matching.hungarian_match)


def check_one_to_one(result, valid):
  index = np.asarray(result.target_index)
  np.testing.assert_array_equal(result.matched, index >= 0)
  used = index[index >= 0]
  assert len(set(used)) == len(used) and np.all(valid[used])  # no padding, no repeats
  return index


def scipy_total(cost):
  rows, cols = optimize.linear_sum_assignment(cost)
  return cost[rows, cols].sum()


@pytest.mark.parametrize('n, m', [(12, 5), (20, 7)])
@pytest.mark.parametrize('seed', range(3))
def test_minimum_cost_is_scipys_on_rectangular_matrices(n, m, seed):
  cost = np.random.default_rng(seed).uniform(-2, 3, (n, m)).astype(np.float32)
  result = match(jnp.asarray(cost))
  index = check_one_to_one(result, np.ones(m, bool))
  assert sorted(index[index >= 0]) == list(range(m))  # every target matched
  total = cost[np.flatnonzero(result.matched), index[result.matched]].sum()
  np.testing.assert_allclose(total, scipy_total(cost.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize('n', [10, 4])  # more, then fewer predictions than real targets
@pytest.mark.parametrize('seed', range(3))
def test_padded_targets_are_ignored_and_real_ones_matched_first(n, seed):
  rng = np.random.default_rng(seed)
  valid = np.zeros(8, bool)
  valid[rng.choice(8, 6, replace=False)] = True
  cost = rng.uniform(0, 1, (n, 8)).astype(np.float32)
  # Padding slots hold garbage, attractive (very low) or NaN: it must not matter.
  cost[:, ~valid] = rng.choice([-100.0, np.nan], (n, (~valid).sum()))
  result = match(jnp.asarray(cost), jnp.asarray(valid))
  index = check_one_to_one(result, valid)
  assert result.matched.sum() == min(n, valid.sum())
  total = cost[np.flatnonzero(result.matched), index[result.matched]].sum()
  np.testing.assert_allclose(total, scipy_total(cost[:, valid].astype(np.float64)),
                             rtol=1e-6)


@pytest.mark.parametrize('seed', range(3))
def test_nan_costs_are_avoided_as_scipy_avoids_a_huge_cost(seed):
  rng = np.random.default_rng(seed)
  cost = rng.uniform(0, 5, (9, 6)).astype(np.float32)
  cost[rng.uniform(size=cost.shape) < 0.3] = np.nan
  cost[0, 0], cost[1, 1] = np.inf, -np.inf
  result = match(jnp.asarray(cost))
  index = check_one_to_one(result, np.ones(6, bool))
  assert result.matched.sum() == 6
  replaced = np.where(np.isfinite(cost), cost, 1e6).astype(np.float64)
  total = replaced[np.flatnonzero(result.matched), index[result.matched]].sum()
  np.testing.assert_allclose(total, scipy_total(replaced), rtol=1e-9)
  guarded = matching.guard_costs(jnp.asarray(cost))
  assert bool(jnp.all(jnp.isfinite(guarded)))
  assert float(guarded.max()) > np.nanmax(np.where(np.isfinite(cost), cost, np.nan)) * 6


def test_batched_under_vmap_and_jit_and_no_gradient_through_the_solver():
  rng = np.random.default_rng(7)
  cost = rng.uniform(0, 1, (3, 10, 5)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
  batched = jax.jit(jax.vmap(matching.hungarian_match))(cost, valid)
  chex.assert_shape([batched.target_index, batched.matched], [(3, 10), (3, 10)])
  for i in range(3):
    single = match(cost[i], valid[i])
    np.testing.assert_array_equal(batched.target_index[i], single.target_index)
  assert not batched.matched[2].any() and batched.matched.sum(1).tolist() == [5, 3, 0]

  def loss(c):  # DETR's shape: the cost of matched pairs, from un-stopped predictions
    m = matching.hungarian_match(c, valid[1])
    picked = jnp.take_along_axis(c, jnp.maximum(m.target_index, 0)[:, None], 1)[:, 0]
    return jnp.sum(jnp.where(m.matched, picked, 0))

  grad = jax.jit(jax.grad(loss))(jnp.asarray(cost[1]))
  expected = np.zeros((10, 5), np.float32)
  index = np.asarray(batched.target_index[1])
  expected[np.flatnonzero(index >= 0), index[index >= 0]] = 1
  np.testing.assert_array_equal(grad, expected)
