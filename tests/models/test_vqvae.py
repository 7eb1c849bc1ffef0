"""Tests for the VQ-VAE (vqvae.py): nearest-code assignment, the straight-through
gradient, the EMA codebook update against its formula in NumPy, dead-code revival,
codebook metrics, and tokens that decode back to the reconstruction."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models
from vision_jax.models import vqvae

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})

K, D = 8, 4  # codebook of the quantiser tests


def quantizer_and_stats(seed=0, **kwargs):
  """A quantiser and 'vq_stats' drawn by NumPy: codes, counts and sums that are not
  the initial ones (counts of 2..5, sums unrelated to the codes)."""
  rng = np.random.default_rng(seed)
  vq = vqvae.VectorQuantizer(K, D, **kwargs)
  stats = {'codebook': jnp.asarray(rng.standard_normal((K, D)), jnp.float32),
           'cluster_size': jnp.asarray(rng.uniform(2, 5, K), jnp.float32),
           'codebook_sum': jnp.asarray(rng.standard_normal((K, D)), jnp.float32)}
  return vq, {'vq_stats': stats}


def latents(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_nearest_code_is_the_numpy_argmin_and_the_output_is_that_code():
  vq, variables = quantizer_and_stats()
  z = latents((3, 5, D))
  out = vq.apply(variables, z)
  codebook = np.asarray(variables['vq_stats']['codebook'])
  distances = ((np.asarray(z)[..., None, :] - codebook) ** 2).sum(-1)
  expected = distances.argmin(-1)
  assert out['indices'].dtype == jnp.int32
  np.testing.assert_array_equal(out['indices'], expected)
  assert len(np.unique(expected)) > 1  # not vacuous
  np.testing.assert_allclose(out['quantized'], codebook[expected], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      out['commitment_loss'], 0.25 * np.mean((np.asarray(z) - codebook[expected]) ** 2),
      rtol=1e-5)


def test_straight_through_gradient_is_the_identity():
  vq, variables = quantizer_and_stats()
  z = latents((6, D))
  jacobian = jax.jacobian(lambda z: vq.apply(variables, z)['quantized'])(z)
  np.testing.assert_array_equal(jacobian.reshape(z.size, z.size), np.eye(z.size))
  # The commitment loss pulls z to its (fixed) code: d/dz beta mean|z - zq|^2.
  grad = jax.grad(lambda z: vq.apply(variables, z)['commitment_loss'])(z)
  z_q = np.asarray(vq.apply(variables, z)['quantized'])
  np.testing.assert_allclose(grad, 2 * 0.25 * (np.asarray(z) - z_q) / z.size, rtol=1e-5)


def test_one_ema_step_is_the_formula():
  decay, eps = 0.9, 1e-3
  vq, variables = quantizer_and_stats(decay=decay, epsilon=eps, dead_code_threshold=0.0)
  z = latents((4, 5, D))
  out, state = vq.apply(variables, z, train=True, mutable=['vq_stats'])
  old = jax.tree.map(np.asarray, variables['vq_stats'])
  flat = np.asarray(z).reshape(-1, D)
  assigned = np.asarray(out['indices']).reshape(-1)
  counts = np.bincount(assigned, minlength=K).astype(np.float64)
  sums = np.zeros((K, D))
  for vector, k in zip(flat, assigned):
    sums[k] += vector
  cluster_size = decay * old['cluster_size'] + (1 - decay) * counts
  codebook_sum = decay * old['codebook_sum'] + (1 - decay) * sums
  n = cluster_size.sum()
  smoothed = (cluster_size + eps) / (n + K * eps) * n
  new = state['vq_stats']
  np.testing.assert_allclose(new['cluster_size'], cluster_size, rtol=1e-6)
  np.testing.assert_allclose(new['codebook_sum'], codebook_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['codebook'], codebook_sum / smoothed[:, None], rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(new['codebook'], old['codebook'])


def test_statistics_change_only_in_training_with_the_collection_mutable():
  vq, variables = quantizer_and_stats()
  z = latents((10, D))
  _, state = vq.apply(variables, z, train=False, mutable=['vq_stats'])
  chex.assert_trees_all_equal(state, variables)
  # train=True without a mutable collection: no update is attempted (and no error).
  vq.apply(variables, z, train=True)


def test_dead_codes_are_revived_from_the_batch():
  decay = 0.99
  vq, variables = quantizer_and_stats(decay=decay, dead_code_threshold=1.0)
  stats = dict(variables['vq_stats'])
  stats['cluster_size'] = jnp.ones(K)  # every code at the threshold before the step
  codebook = np.asarray(stats['codebook'])
  # Every vector near code 0: the other codes are not used and fall below 1.
  z = jnp.asarray(codebook[0] + 0.01 * np.random.default_rng(2).standard_normal((20, D)),
                  jnp.float32)
  out, state = vq.apply({'vq_stats': stats}, z, train=True, mutable=['vq_stats'],
                        rngs={'dropout': jax.random.key(0)})
  np.testing.assert_array_equal(out['indices'], 0)
  new = jax.tree.map(np.asarray, state['vq_stats'])
  flat = np.asarray(z)
  for k in range(1, K):
    # Each dead code is one of the batch's vectors, with a count of one (m = e).
    matches = np.all(np.isclose(flat, new['codebook'][k], atol=1e-7), axis=1)
    assert matches.any(), f'code {k} was not revived from the batch'
    np.testing.assert_allclose(new['codebook_sum'][k], new['codebook'][k])
  np.testing.assert_array_equal(new['cluster_size'][1:], 1.0)
  assert len({tuple(row) for row in new['codebook'][1:]}) == K - 1  # distinct vectors
  # The used code follows the EMA formula.
  expected_size = decay + (1 - decay) * 20
  np.testing.assert_allclose(new['cluster_size'][0], expected_size, rtol=1e-6)


@pytest.mark.parametrize('spread', ['uniform', 'one'])
def test_perplexity_and_usage(spread):
  vq, variables = quantizer_and_stats()
  codebook = variables['vq_stats']['codebook']
  if spread == 'uniform':  # each code exactly twice
    z = jnp.concatenate([codebook, codebook])
    expected_perplexity, expected_usage = K, 1.0
  else:
    z = jnp.tile(codebook[3:4], (5, 1))
    expected_perplexity, expected_usage = 1.0, 1 / K
  out = vq.apply(variables, z)
  np.testing.assert_allclose(out['perplexity'], expected_perplexity, rtol=1e-5)
  np.testing.assert_allclose(out['codebook_usage'], expected_usage, rtol=1e-6)


def build(downsample_steps=2, shape=(2, 16, 16, 3)):
  model = models.get_model({**vqvae.TINY, 'downsample_steps': downsample_steps})
  x = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
  variables = jit(model.init)(jax.random.key(1), x)
  return model, variables, x


@pytest.mark.parametrize('downsample_steps', [1, 2])
def test_shapes_and_variables(downsample_steps):
  model, variables, x = build(downsample_steps)
  grid = 16 // 2 ** downsample_steps
  out = jit(model.apply)(variables, x)
  chex.assert_shape(out['reconstruction'], x.shape)
  chex.assert_shape(out['indices'], (2, grid, grid))
  assert out['indices'].dtype == jnp.int32
  for name in ('commitment_loss', 'perplexity', 'codebook_usage'):
    chex.assert_shape(out[name], ())
  # The codebook is not a trained parameter: it lives in 'vq_stats'.
  assert set(variables) == {'params', 'vq_stats'}
  chex.assert_shape(variables['vq_stats']['quantizer']['codebook'],
                    (vqvae.TINY['num_codes'], vqvae.TINY['code_dim']))


def test_tokens_decode_back_to_the_reconstruction():
  model, variables, x = build()
  out = jit(model.apply)(variables, x)
  indices = jit(functools.partial(model.apply, method='encode'))(variables, x)
  np.testing.assert_array_equal(indices, out['indices'])
  decoded = jit(functools.partial(model.apply, method='decode_indices'))(variables, indices)
  np.testing.assert_allclose(decoded, out['reconstruction'], rtol=1e-5, atol=1e-6)


def test_a_training_step_updates_the_codebook_and_trains_the_encoder():
  model, variables, x = build()
  def loss(params):
    out, state = model.apply({**variables, 'params': params}, x, train=True,
                             mutable=['vq_stats'], rngs={'dropout': jax.random.key(2)})
    return jnp.mean((out['reconstruction'] - x) ** 2) + out['commitment_loss'], state
  grads, state = jit(jax.grad(loss, has_aux=True))(variables['params'])
  # The reconstruction loss reaches the encoder through the straight-through path.
  assert float(jnp.abs(grads['encoder']['down1']['kernel']).max()) > 0
  assert not np.allclose(state['vq_stats']['quantizer']['cluster_size'],
                         variables['vq_stats']['quantizer']['cluster_size'])


def test_bad_image_shape_is_one_clear_error():
  model, variables, _ = build()
  with pytest.raises(ValueError, match='must divide by'):
    model.apply(variables, jnp.zeros((1, 10, 16, 3)))
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    model.apply(variables, jnp.zeros((1, 16, 16, 1)))
