"""Tests for the LeNet-style CNN family (cnn.py)."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.models import cnn

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})


def random_images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def expected_param_count(model: cnn.Model, image_size: int,
                         channels: int) -> int:
  """Conv kernels and biases (or BN scale and bias), then the dense layers."""
  count, c_in, side = 0, channels, image_size
  for width in model.features:
    for _ in range(model.convs_per_stage):
      count += model.kernel_size**2 * c_in * width + (
          2 * width if model.use_batchnorm else width)
      c_in = width
    if model.pooling != 'none':
      side //= 2
  n_in = side * side * c_in
  for width in (*model.dense_features, model.num_classes):
    count += n_in * width + width
    n_in = width
  return count


def count_params(model: nn.Module, image_shape) -> int:
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  return sum(x.size for x in jax.tree.leaves(params))


def test_default_mnist_param_count():
  model = cnn.Model()
  # 3*3*1*32+32 + 3*3*32*64+64 + 7*7*64*128+128 + 128*10+10
  assert count_params(model, (28, 28, 1)) == 421_642
  assert expected_param_count(model, 28, 1) == 421_642


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=5, convs_per_stage=2),
    dict(features=(8,), pooling='none'),
    dict(features=(8, 16, 32), pooling='avg', use_batchnorm=True),
    dict(dense_features=()),
    dict(dense_features=(64, 32), num_classes=100),
])
def test_param_count_on_odd_images(kwargs):
  model = cnn.Model(**kwargs)
  assert count_params(model, (15, 15, 3)) == expected_param_count(model, 15, 3)


def test_batchnorm_replaces_conv_bias():
  images = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(cnn.Model(use_batchnorm=True).init,
                             jax.random.key(0), images)
  assert set(variables['params']['stage1_conv1']) == {'kernel'}
  assert set(variables['params']['stage1_bn1']) == {'scale', 'bias'}
  assert set(variables['batch_stats']['stage1_bn1']) == {'mean', 'var'}


@pytest.mark.parametrize('pooling', cnn.POOLINGS)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_forward_shape_and_dtype(pooling, dtype):
  model = cnn.Model(features=(4, 8), dense_features=(16,), pooling=pooling,
                    dtype=dtype)
  images = random_images((3, 15, 15, 3))
  variables = jit(model.init)(jax.random.key(0), images)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  logits = jit(model.apply)(variables, images)
  chex.assert_shape(logits, (3, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize('pooling, flax_pool', [
    ('max', nn.max_pool), ('avg', nn.avg_pool)])
@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 7, 9, 3)])
@pytest.mark.parametrize('ties', [False, True])
def test_pool_2x2_matches_flax_pooling_and_its_gradient(pooling, flax_pool,
                                                        shape, ties):
  x = random_images(shape)
  if ties:  # maxima shared within windows: the gradient goes to the first one
    x = jnp.round(x)
  reference = lambda x: flax_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  ours = lambda x: cnn.pool_2x2(x, pooling)
  y, ours_vjp = jax.vjp(ours, x)
  y_ref, ref_vjp = jax.vjp(reference, x)
  chex.assert_trees_all_close(y, y_ref)
  cotangent = random_images(y.shape, seed=1)
  chex.assert_trees_all_close(ours_vjp(cotangent), ref_vjp(cotangent))


def test_dropout_only_when_training():
  model = cnn.Model(features=(4,), dense_features=(32,), dropout_rate=0.5)
  images = random_images((2, 8, 8, 1))
  variables = jit(model.init)(jax.random.key(0), images)
  apply = jit(model.apply, static_argnames='train')

  eval_logits = apply(variables, images)
  without_dropout = jit(model.clone(dropout_rate=0.0).apply,
                        static_argnames='train')(variables, images, train=True)
  chex.assert_trees_all_close(eval_logits, without_dropout)

  train_logits = [apply(variables, images, train=True,
                        rngs={'dropout': jax.random.key(seed)})
                  for seed in (1, 2)]
  assert not np.allclose(train_logits[0], eval_logits, atol=1e-4)
  assert not np.allclose(train_logits[0], train_logits[1], atol=1e-4)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, images, train=True)


def test_batchnorm_train_updates_stats_and_eval_uses_them():
  model = cnn.Model(features=(4, 8), dense_features=(16,), use_batchnorm=True)
  images = random_images((4, 8, 8, 3)) * 2 + 1
  variables = jit(model.init)(jax.random.key(0), images)

  logits, updates = jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))(variables, images)
  chex.assert_shape(logits, (4, 10))
  chex.assert_trees_all_equal_shapes(variables['batch_stats'],
                                     updates['batch_stats'])
  # The shifted images give the first BN's input a clearly non-zero mean.
  assert not np.allclose(variables['batch_stats']['stage1_bn1']['mean'],
                         updates['batch_stats']['stage1_bn1']['mean'])

  # Eval mode normalises with the running statistics, so an example's logits
  # do not depend on the rest of its batch.
  eval_apply = jit(model.apply)
  eval_logits = eval_apply(variables, images)
  assert not np.allclose(logits, eval_logits, atol=1e-3)
  other_batch = images.at[1:].set(random_images((3, 8, 8, 3), seed=1))
  chex.assert_trees_all_close(eval_apply(variables, other_batch)[0],
                              eval_logits[0], atol=1e-5, rtol=1e-5)


def test_unknown_pooling_is_an_error():
  with pytest.raises(ValueError, match='pooling'):
    cnn.Model(pooling='median').init(jax.random.key(0),
                                     jnp.zeros((1, 8, 8, 1)))
