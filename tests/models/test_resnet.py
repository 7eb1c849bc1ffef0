"""Tests for the ImageNet ResNets (resnet.py) and CIFAR ResNets (cifar_resnet.py).

Full-size networks are only traced with `jax.eval_shape`; real forward passes
use tiny widths and small images so the file runs in seconds on a CPU.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.models import cifar_resnet
from vision_jax.models import resnet

BN_EPSILON = 1e-5

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})


def abstract_variables(model: nn.Module, image_size: int):
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def count_params(variables) -> int:
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def block_outputs(model: nn.Module, variables, images):
  """Eval-mode outputs of the blocks, keyed by their names stage{k}_block{j}."""
  is_block = lambda module, method: (method == '__call__' and
                                     (module.name or '').startswith('stage'))
  _, state = model.apply(variables, images, capture_intermediates=is_block,
                         mutable=['intermediates'])
  return {name: value['__call__'][0]
          for name, value in state['intermediates'].items()}


def random_images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


# ---------------------------------------------------------------- ImageNet


@pytest.mark.parametrize('depth, torchvision_count', [
    (18, 11_689_512),
    (34, 21_797_672),
    (50, 25_557_032),
    (101, 44_549_160),
    (152, 60_192_808),
])
def test_imagenet_param_count_matches_torchvision(depth, torchvision_count):
  model = resnet.Model(depth=depth, num_classes=1000)
  # Parameter shapes do not depend on the image size; 32x32 traces faster.
  assert count_params(abstract_variables(model, 32)) == torchvision_count


def test_cifar_stem_resnet18_is_simclrs():
  """The 3x3 stem with stride 1 and no max pool (SimCLR's CIFAR-10 ResNet-18): the
  torchvision count with conv1 3x3 instead of 7x7, and stages at 32, 16, 8, 4."""
  model = resnet.Model(depth=18, num_classes=10, stem='cifar')
  variables = abstract_variables(model, 32)
  assert count_params(variables) == 11_181_642 - 64 * 3 * (7 * 7 - 3 * 3)  # = 11,173,962
  maps = jax.eval_shape(functools.partial(model.apply, method='feature_maps'), variables,
                        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  for stage, side in enumerate((32, 16, 8, 4)):
    assert maps[f'stage{stage + 1}'].shape[1:3] == (side, side)
  with pytest.raises(ValueError, match='stem must be one of'):
    resnet.Model(depth=18, stem='tiny').init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize('depth, widths', [
    (18, (64, 128, 256, 512)),
    (50, (256, 512, 1024, 2048)),
])
def test_imagenet_stages_downsample_224_to_7(depth, widths):
  model = resnet.Model(depth=depth, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = abstract_variables(model, 224)
  outputs = jax.eval_shape(
      functools.partial(block_outputs, model), variables, images)
  stage_sizes = resnet.STAGES[depth][1]
  for stage, (num_blocks, width) in enumerate(zip(stage_sizes, widths)):
    side = 56 // 2**stage
    chex.assert_shape(outputs[f'stage{stage + 1}_block{num_blocks}'],
                      (2, side, side, width))
  chex.assert_shape(jax.eval_shape(model.apply, variables, images), (2, 1000))


def test_unknown_imagenet_depth_is_an_error():
  with pytest.raises(ValueError, match='depth'):
    abstract_variables(resnet.Model(depth=20), 32)


@pytest.mark.parametrize('model', [
    resnet.Model(depth=18, num_classes=10, num_filters=4),
    resnet.Model(depth=50, num_classes=10, num_filters=4),
    cifar_resnet.Model(depth=8, num_classes=10, num_filters=4),
], ids=['resnet18', 'resnet50', 'cifar_resnet8'])
def test_tiny_forward_in_train_and_eval_mode(model):
  images = random_images((4, 32, 32, 3)) * 3 + 1
  variables = jit(model.init)(jax.random.key(0), images)

  train_apply = jit(functools.partial(model.apply, train=True,
                                      mutable=['batch_stats']))
  train_logits, updates = train_apply(variables, images)
  chex.assert_shape(train_logits, (4, 10))
  chex.assert_type(train_logits, jnp.float32)
  chex.assert_tree_all_finite(train_logits)
  # Train mode updates the running statistics.
  old_stats, new_stats = variables['batch_stats'], updates['batch_stats']
  chex.assert_trees_all_equal_shapes(old_stats, new_stats)
  # The shifted images give the stem BN's input a clearly non-zero mean.
  assert not np.allclose(old_stats['bn_init']['mean'],
                         new_stats['bn_init']['mean'])

  # Eval mode normalises with the running statistics, not the batch's.
  eval_logits = jit(model.apply)(variables, images)
  chex.assert_tree_all_finite(eval_logits)
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)
  # In eval mode an example's logits do not depend on the rest of its batch;
  # in train mode they do, through the batch statistics.
  other_batch = images.at[1:].set(random_images((3, 32, 32, 3), seed=1))
  chex.assert_trees_all_close(jit(model.apply)(variables, other_batch)[0],
                              eval_logits[0], atol=1e-5, rtol=1e-5)
  assert not np.allclose(train_apply(variables, other_batch)[0][0],
                         train_logits[0], atol=1e-3)


@pytest.mark.parametrize('block, channels', [
    (resnet.BasicBlock(filters=8), 8),
    (resnet.BottleneckBlock(filters=2), 8),
], ids=['basic', 'bottleneck'])
def test_zero_init_residual_identity_block_is_relu(block, channels):
  x = random_images((2, 8, 8, channels))
  for zero_init in (True, False):
    b = block.clone(zero_init_residual=zero_init)
    y = jit(b.apply)(jit(b.init)(jax.random.key(1), x), x)
    if zero_init:
      chex.assert_trees_all_close(y, jax.nn.relu(x))
    else:
      assert not np.allclose(y, jax.nn.relu(x), atol=1e-3)


@pytest.mark.parametrize('block', [
    resnet.BasicBlock(filters=8, strides=2, zero_init_residual=True),
    resnet.BottleneckBlock(filters=2, strides=2, zero_init_residual=True),
], ids=['basic', 'bottleneck'])
def test_zero_init_residual_projection_block_is_relu_of_shortcut(block):
  x = random_images((2, 8, 8, 4))
  variables = jit(block.init)(jax.random.key(1), x)
  y = jit(block.apply)(variables, x)
  # A fresh BN in eval mode divides by sqrt(1 + eps) (mean 0, variance 1).
  kernel = variables['params']['conv_proj']['kernel'][0, 0]
  shortcut = x[:, ::2, ::2] @ kernel / np.sqrt(1 + BN_EPSILON)
  chex.assert_trees_all_close(y, jax.nn.relu(shortcut), atol=1e-5, rtol=1e-5)


def test_zero_init_residual_makes_every_block_start_as_identity():
  depth = 50
  model = resnet.Model(depth=depth, num_classes=10, num_filters=4,
                       zero_init_residual=True)
  images = random_images((2, 32, 32, 3))
  variables = jit(model.init)(jax.random.key(0), images)
  outputs = jit(functools.partial(block_outputs, model))(variables, images)
  for stage, num_blocks in enumerate(resnet.STAGES[depth][1]):
    for i in range(2, num_blocks + 1):
      # Identity shortcut + zero residual: relu(previous) == previous.
      chex.assert_trees_all_close(outputs[f'stage{stage + 1}_block{i}'],
                                  outputs[f'stage{stage + 1}_block{i - 1}'])
  # Not vacuous: the projection blocks pass a non-zero signal along.
  assert np.abs(outputs['stage4_block1']).max() > 0


def test_bfloat16_resnet_computes_in_bfloat16_with_float32_params():
  model = resnet.Model(depth=18, num_classes=10, num_filters=8)
  model_bf16 = model.clone(dtype=jnp.bfloat16)
  images = random_images((2, 32, 32, 3))
  variables = jit(model_bf16.init)(jax.random.key(0), images)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}

  outputs = jit(functools.partial(block_outputs, model_bf16))(
      variables, images)
  assert {x.dtype for x in outputs.values()} == {jnp.dtype('bfloat16')}
  logits = jit(model_bf16.apply)(variables, images)
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)
  # Same parameters, so bfloat16 logits stay near the float32 ones.
  reference = jit(model.apply)(variables, images)
  chex.assert_trees_all_close(logits, reference, atol=0.05, rtol=0.05)


# ------------------------------------------------------------------- CIFAR


def cifar_param_count(depth: int, num_classes: int = 10) -> int:
  """Convolutions, BatchNorms and head only: option-A shortcuts are free."""
  n = (depth - 2) // 6
  conv_bn = lambda c_in, c_out: 9 * c_in * c_out + 2 * c_out
  count = conv_bn(3, 16) + 64 * num_classes + num_classes
  for c_in, c_out in ((16, 16), (16, 32), (32, 64)):
    count += conv_bn(c_in, c_out) + (2 * n - 1) * conv_bn(c_out, c_out)
  return count


@pytest.mark.parametrize('depth', [20, 32, 44, 56, 110])
def test_cifar_shortcuts_add_no_params(depth):
  model = cifar_resnet.Model(depth=depth)
  assert count_params(abstract_variables(model, 32)) == cifar_param_count(depth)


@pytest.mark.parametrize('depth, reference_count', [
    (20, 269_722),
    (56, 853_018),
    (110, 1_727_962),
])
def test_cifar_param_count(depth, reference_count):
  model = cifar_resnet.Model(depth=depth)
  assert count_params(abstract_variables(model, 32)) == reference_count


def test_option_a_shortcut_subsamples_and_zero_pads_without_params():
  block = cifar_resnet.BasicBlock(filters=8, strides=2)
  x = random_images((2, 8, 8, 4))
  variables = jit(block.init)(jax.random.key(0), x)
  assert set(variables['params']) == {'conv1', 'bn1', 'conv2', 'bn2'}
  # With the residual branch switched off, the block is relu(shortcut(x)).
  params = variables['params']
  params = {**params, 'bn2': {**params['bn2'], 'scale': jnp.zeros(8)}}
  y = jit(block.apply)({**variables, 'params': params}, x)
  expected = jnp.concatenate(
      [jax.nn.relu(x[:, ::2, ::2]), jnp.zeros((2, 4, 4, 4))], axis=-1)
  chex.assert_trees_all_close(y, expected, atol=1e-6)


def test_cifar_stages_downsample_32_to_8():
  model = cifar_resnet.Model(depth=20, num_filters=16)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  outputs = jax.eval_shape(functools.partial(block_outputs, model),
                           abstract_variables(model, 32), images)
  for stage, (side, width) in enumerate(((32, 16), (16, 32), (8, 64))):
    chex.assert_shape(outputs[f'stage{stage + 1}_block3'],
                      (2, side, side, width))


def test_bfloat16_cifar_resnet():
  model = cifar_resnet.Model(depth=8, num_filters=4, dtype=jnp.bfloat16)
  images = random_images((2, 32, 32, 3))
  variables = jit(model.init)(jax.random.key(0), images)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  outputs = jit(functools.partial(block_outputs, model))(variables, images)
  assert {x.dtype for x in outputs.values()} == {jnp.dtype('bfloat16')}
  logits = jit(model.apply)(variables, images)
  chex.assert_shape(logits, (2, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize('depth', [7, 2, 21])
def test_cifar_depth_must_be_6n_plus_2(depth):
  with pytest.raises(ValueError, match='6n \\+ 2'):
    abstract_variables(cifar_resnet.Model(depth=depth), 32)
