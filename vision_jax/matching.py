"""Hungarian matching of predictions to padded targets (DETR's set prediction loss).

DETR matches its N predictions one-to-one to an image's targets at minimum total cost
and trains the matched predictions on their targets, the others on "no object".
Batches hold the targets padded to a fixed M with a validity mask, so the matching
runs on a fixed [N, M] cost matrix under jit and vmap with
`optax.assignment.hungarian_algorithm` (Scenic's JAX solver). For an [n, m] matrix it
returns `(rows, cols)`, min(n, m) pairs of a minimum-cost assignment: every column is
assigned when n >= m.

Two guards keep the solver's answer meaningful:
  * Non-finite costs (a diverging model's NaN or inf) become a finite `worst` cost,
    larger than any assignment avoiding them could make up for: with finite costs in
    [lo, hi] and k = min(N, M) pairs, worst = hi + k (hi - lo) + 1. The solver never
    sees NaN, and uses such an entry only where every assignment must.
  * Padded targets get one cost for every prediction, an upper bound: with N >= M
    every column is assigned whatever its cost, so a constant column changes no real
    target's match and `worst` is enough; with N < M (fewer predictions than target
    slots) it is worst + k (worst - lo) + 1, so that real targets are matched first.
    The bounds depend on the data, not a fixed 1e6, so float32 keeps the costs' own
    precision (a huge constant would swamp the differences the solver compares).
The matching is not differentiated: the cost passes through `stop_gradient` (the
solver's while loops have no reverse-mode derivative), and the loss is then computed
on the matched pairs from the un-stopped predictions, as in DETR.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Matching(NamedTuple):
  """Each prediction's target: what DETR's loss gathers.

  Attributes:
    target_index: [N] int32, the matched target of each prediction, -1 if none (a
      "no object" prediction, or one matched to a padded target slot).
    matched: [N] bool, target_index >= 0. The box losses sum over these and the
      class loss uses class `labels[target_index]` here, "no object" elsewhere.
  """
  target_index: jax.Array
  matched: jax.Array


def guard_costs(cost: jax.Array, target_valid: jax.Array | None = None) -> jax.Array:
  """`cost` [N, M] with non-finite entries and padded targets' columns replaced by the
  finite bounds of the module docstring."""
  n, m = cost.shape
  valid = jnp.ones(m, bool) if target_valid is None else jnp.asarray(target_valid, bool)
  finite = jnp.isfinite(cost)
  real = finite & valid[None, :]
  any_real = jnp.any(real)
  lo = jnp.where(any_real, jnp.min(jnp.where(real, cost, jnp.inf)), 0)
  hi = jnp.where(any_real, jnp.max(jnp.where(real, cost, -jnp.inf)), 0)
  k = min(n, m)
  worst = hi + k * (hi - lo) + 1
  padding = worst if n >= m else worst + k * (worst - lo) + 1
  cost = jnp.where(finite, cost, worst)
  return jnp.where(valid[None, :], cost, padding)


def hungarian_match(cost: jax.Array, target_valid: jax.Array | None = None) -> Matching:
  """The minimum-cost one-to-one matching of N predictions (rows) to M target slots
  (columns), of which `target_valid` [M] are real; vmap for a batch.

  Args:
    cost: [N, M] matching cost (e.g. DETR's class, L1 and GIoU terms).
    target_valid: [M] bool, False for padding; None: all real.

  Returns:
    `Matching` of each prediction: min(N, number of real targets) real targets are
    matched, each to one prediction; padded slots never are.
  """
  cost = jax.lax.stop_gradient(jnp.asarray(cost))
  cost = cost.astype(jnp.promote_types(cost.dtype, jnp.float32))
  n, m = cost.shape
  valid = jnp.ones(m, bool) if target_valid is None else jnp.asarray(target_valid, bool)
  guarded = guard_costs(cost, valid)
  rows, cols = optax.assignment.hungarian_algorithm(guarded)
  target_index = jnp.full(n, -1, jnp.int32).at[rows].set(cols.astype(jnp.int32))
  target_index = jnp.where(valid[jnp.maximum(target_index, 0)], target_index, -1)
  return Matching(target_index=target_index, matched=target_index >= 0)
