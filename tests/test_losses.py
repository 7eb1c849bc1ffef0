"""Losses against literal transcriptions of their papers' formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import losses, parallel


def nt_xent_algorithm_1(z: np.ndarray, tau: float) -> float:
  """SimCLR's Algorithm 1, loop by loop (0-based: the views of image k are 2k, 2k+1)."""
  n2 = len(z)
  s = np.empty((n2, n2))
  for i in range(n2):
    for j in range(n2):
      s[i, j] = z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))

  def l(i, j):
    return -np.log(np.exp(s[i, j] / tau) / sum(np.exp(s[i, k] / tau)
                                                for k in range(n2) if k != i))
  return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n2 // 2)) / n2


@pytest.mark.parametrize('n, dim, tau', [(1, 3, 0.5), (2, 4, 0.1), (5, 8, 1.0), (8, 2, 0.07)])
def test_nt_xent_is_algorithm_1(n, dim, tau):
  z = np.random.default_rng(n).standard_normal((2 * n, dim))
  with jax.enable_x64(True):
    actual = losses.nt_xent(jnp.asarray(z), tau)
  np.testing.assert_allclose(actual, nt_xent_algorithm_1(z, tau), rtol=1e-12)
  np.testing.assert_allclose(losses.nt_xent(jnp.asarray(z, jnp.float32), tau),
                             nt_xent_algorithm_1(z, tau), rtol=1e-5)


def test_nt_xent_gradient_matches_finite_differences():
  rng = np.random.default_rng(0)
  z, direction = rng.standard_normal((2, 6, 5))
  with jax.enable_x64(True):
    f = functools.partial(losses.nt_xent, temperature=0.3)
    grad = jax.grad(f)(jnp.asarray(z))
    eps = 1e-6
    expected = (f(jnp.asarray(z + eps * direction)) - f(jnp.asarray(z - eps * direction))) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), expected, rtol=1e-7)


def test_nt_xent_pairs_views_and_checks_its_shape():
  # Views that agree with their own pair and not with the others: a small loss;
  # pairing rows the other way round (2k with 2k + 2) is a large one.
  base = np.eye(4)[[0, 0, 1, 1, 2, 2, 3, 3]]
  assert losses.nt_xent(jnp.asarray(base), 0.1) < 0.01
  assert losses.nt_xent(jnp.asarray(np.roll(base, 1, axis=0)), 0.1) > 5
  with pytest.raises(ValueError, match=r'\[2N, D\].*\(5, 3\)'):
    losses.nt_xent(jnp.zeros((5, 3)), 0.5)


def test_nt_xent_negatives_are_the_global_batch_on_8_devices():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip('needs 8 (fake CPU) devices')
  mesh = parallel.make_mesh(8)  # the trainer's mesh: 'data', automatic sharding
  z = jnp.asarray(np.random.default_rng(1).standard_normal((32, 6)), jnp.float32)
  sharded = jax.device_put(z, parallel.data_sharded(mesh))
  f = jax.jit(jax.value_and_grad(functools.partial(losses.nt_xent, temperature=0.5)))
  value, grad = f(sharded)
  assert len(sharded.sharding.device_set) == 8
  chex.assert_trees_all_close((value, grad), f(z), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(value, nt_xent_algorithm_1(np.asarray(z, np.float64), 0.5),
                             rtol=1e-5)
