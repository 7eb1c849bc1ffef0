"""Batch norm with one-pass reductions against flax.linen.BatchNorm and numpy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import parallel
from vision_jax.kernels import cpu_batch_norm, library


def random(shape, seed, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape, np.float32) * scale + offset)


@pytest.mark.parametrize('shape', [(4, 6, 6, 16), (3, 5, 48), (1000, 32), (7, 10)])
def test_channel_sums_match_numpy(shape):
  a, b = random(shape, 0), random(shape, 1, scale=2.0, offset=3.0)
  shift = random(shape[-1:], 2)
  uses_kernel = shape[-1] % 16 == 0 and library.enabled()
  lowered = jax.jit(cpu_batch_norm.channel_sums).lower(a, b, shift).as_text()
  assert ('vision_jax_channel_sums' in lowered) == uses_kernel
  sums, products = jax.jit(cpu_batch_norm.channel_sums)(a, b, shift)
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  axes = tuple(range(len(shape) - 1))
  np.testing.assert_allclose(sums, a64.sum(axes), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(products, (a64 * (b64 - np.asarray(shift))).sum(axes),
                             rtol=1e-5, atol=1e-3)


def train_step(module, variables, x):
  """Loss, gradients (parameters and input) and new batch statistics of one step."""
  def loss(params, x):
    y, updates = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y.astype(jnp.float32)) * jnp.arange(y.shape[-1])), updates
  (value, updates), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables['params'], x)
  return value, grads, updates


@pytest.mark.parametrize('options', [
    {}, {'dtype': jnp.bfloat16}, {'scale_init': nn.initializers.zeros},
    {'use_bias': False, 'use_scale': False}])
@pytest.mark.parametrize('shape', [(8, 6, 6, 32), (16, 10)])
def test_batch_norm_equals_flax_batch_norm(options, shape):
  x = random(shape, 0, scale=3.0, offset=1.0)
  ours = cpu_batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5, **options)
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, **options)
  variables = flax_bn.init(jax.random.key(0), x, use_running_average=False)
  chex.assert_trees_all_equal(ours.init(jax.random.key(0), x, use_running_average=False),
                              variables)
  # Parameters and statistics away from their initial values.
  variables = jax.tree.map(lambda v: v + jnp.linspace(0.5, 1.5, v.size).reshape(v.shape),
                           variables)
  if 'params' not in variables:
    variables = {**variables, 'params': {}}
  for use_running_average in (False, True):
    y = ours.apply(variables, x, use_running_average=use_running_average,
                   mutable=['batch_stats'])[0]
    y_flax = flax_bn.apply(variables, x, use_running_average=use_running_average,
                           mutable=['batch_stats'])[0]
    assert y.dtype == y_flax.dtype
    chex.assert_trees_all_close(y.astype(jnp.float32), y_flax.astype(jnp.float32),
                                atol=1e-5 if y.dtype == jnp.float32 else 1e-2)
  ours_train = ours.clone(use_running_average=False)
  flax_train = flax_bn.clone(use_running_average=False)
  value, grads, updates = train_step(ours_train, variables, x)
  value_flax, grads_flax, updates_flax = train_step(flax_train, variables, x)
  np.testing.assert_allclose(value, value_flax, rtol=1e-4)
  chex.assert_trees_all_close(updates, updates_flax, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(grads, grads_flax, rtol=1e-3, atol=2e-4)


def test_sharded_batch_statistics_run_per_device():
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  x = jax.device_put(random((16, 4, 4, 16), 0, scale=2.0, offset=1.0),
                     parallel.data_sharded(mesh))
  # Random weights: a normalised output's sum over the batch is zero, so a loss like
  # sum(y * per-channel weights) cancels to float rounding, which no tolerance fits.
  weights = random(x.shape, 1)
  def loss_of(module):
    def loss(variables, x):
      y, updates = module.apply(variables, x, mutable=['batch_stats'])
      return jnp.sum(y * weights), updates
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  module = cpu_batch_norm.BatchNorm(use_running_average=False)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  step = jax.jit(parallel.under_mesh(mesh, loss_of(module)))
  hlo = step.lower(variables, x).compile().as_text()
  calls = [l for l in hlo.splitlines() if 'custom_call_target="vision_jax_channel_sums' in l]
  if library.enabled():
    assert calls and all('f32[2,4,4,16]' in l for l in calls)
  assert 'all-gather' not in hlo
  (value, updates), grads = step(variables, x)
  (value_flax, updates_flax), grads_flax = jax.jit(
      loss_of(nn.BatchNorm(use_running_average=False)))(variables, x)
  # The loss (about -48) does not cancel: float32 rounding in its 4096 terms, ~1e-4
  # in all on an AVX2 host, stays far below the tolerance of 1e-4 of it.
  assert abs(value_flax) > 10.0
  np.testing.assert_allclose(value, value_flax, rtol=1e-4)
  chex.assert_trees_all_close(updates, updates_flax, rtol=1e-5, atol=1e-6)
  for g, g_flax in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_flax)):
    scale = float(jnp.max(jnp.abs(g_flax)))
    np.testing.assert_allclose(g, g_flax, rtol=0, atol=1e-4 * scale)


def test_other_platforms_reduce_with_xla():
  a = random((4, 4, 4, 16), 0)
  fn = jax.jit(cpu_batch_norm.channel_sums)
  for platform in ('cuda', 'tpu'):
    text = fn.trace(a, a, a[0, 0, 0]).lower(lowering_platforms=(platform,)).as_text()
    assert 'vision_jax_channel_sums' not in text, platform
