"""CIFAR ResNets of He et al. (2015), section 4.2: ResNet-20/32/44/56/110.

A 3x3 stem, then three stages of n basic blocks with 16, 32 and 64 filters on
32x32, 16x16 and 8x8 maps (depth = 6n + 2), global average pool and a dense
head. Shortcuts are the paper's option A, so they add no parameters.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models

ModuleDef = Any

# He initialisation, with torchvision's fan_out convention.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def cpu_kernel_layers() -> dict[str, ModuleDef]:
  """The layers `models.get_model` injects for `config.model.cpu_kernels`."""
  from vision_jax.kernels import cpu_batch_norm, cpu_conv  # pylint: disable=g-import-not-at-top
  return {'conv': cpu_conv.Conv, 'norm': cpu_batch_norm.BatchNorm}


def conv3x3(layer: ModuleDef, features: int, strides: int = 1, *, dtype: Any,
            name: str) -> nn.Module:
  """A bias-free 3x3 convolution: the BatchNorm after it has its own bias."""
  return layer(features, (3, 3), strides=strides, padding=((1, 1), (1, 1)),
               use_bias=False, kernel_init=conv_kernel_init, dtype=dtype, name=name)


def batch_norm(layer: ModuleDef, train: bool, *, dtype: Any, name: str) -> nn.Module:
  # PyTorch's defaults (its momentum 0.1 weighs the new batch, Flax's weighs
  # the running average).
  return layer(use_running_average=not train, momentum=0.9, epsilon=1e-5,
               dtype=dtype, name=name)


def option_a_shortcut(x: jax.Array, features: int,
                      strides: int) -> jax.Array:
  """Identity, subsampled by striding and zero-padded to `features` channels."""
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions plus a parameter-free option-A shortcut.

  Attributes:
    filters: output channels of the block.
    strides: stride of the first convolution; 2 where a stage halves the
      resolution.
    dtype: compute dtype; parameters stay float32.
    conv: the convolution layer, `nn.Conv` or a drop-in.
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = conv3x3(self.conv, self.filters, self.strides, dtype=self.dtype,
                name='conv1')(x)
    y = nn.relu(batch_norm(self.norm, train, dtype=self.dtype, name='bn1')(y))
    y = conv3x3(self.conv, self.filters, dtype=self.dtype, name='conv2')(y)
    y = batch_norm(self.norm, train, dtype=self.dtype, name='bn2')(y)
    return nn.relu(y + option_a_shortcut(x, self.filters, self.strides))


class Model(nn.Module):
  """CIFAR ResNet of depth 6n + 2 with three stages of n basic blocks.

  Blocks are named `stage{k}_block{j}` so their outputs can be read with
  `capture_intermediates`.

  `feature_maps(x, train=...)` (`model.apply(variables, x, method='feature_maps')`)
  returns the named outputs: 'stem' (after the stem's ReLU, at the input
  resolution), 'stage1'..'stage3' (each stage's last block, at 1, 1/2 and 1/4 of
  it), 'pre_logits' ([N, D], the global average pool) and, unless `num_classes` is
  None, 'logits'. `__call__` returns 'logits', or 'pre_logits' for a headless model.
  Maps are in the compute dtype, logits in float32.

  Attributes:
    depth: 6n + 2 for n >= 1; the paper uses 20, 32, 44, 56 and 110.
    num_classes: size of the logits; None for a headless backbone that returns
      its pooled features and has no head parameters.
    num_filters: filters of the stem and the first stage (16 in the paper),
      doubled in each later stage; small values give tiny test variants.
    dtype: compute dtype, e.g. jnp.bfloat16; parameters and BatchNorm
      statistics stay float32 and the logits are returned in float32.
    conv: the convolution layer, `nn.Conv` or a drop-in with its interface and
      parameters (`cpu_kernel_layers()`).
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  depth: int = 20
  num_classes: int | None = 10
  num_filters: int = 16
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
          f'CIFAR ResNet depth must be 6n + 2 with n >= 1, got {self.depth}.')
    blocks_per_stage = (self.depth - 2) // 6

    maps = {}
    x = conv3x3(self.conv, self.num_filters, dtype=self.dtype, name='conv_init')(x)
    x = maps['stem'] = nn.relu(
        batch_norm(self.norm, train, dtype=self.dtype, name='bn_init')(x))
    for stage in range(3):
      for i in range(blocks_per_stage):
        x = BasicBlock(
            filters=self.num_filters * 2**stage,
            strides=2 if stage > 0 and i == 0 else 1,
            dtype=self.dtype, conv=self.conv, norm=self.norm,
            name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
      maps[f'stage{stage + 1}'] = x
    return models.classifier_outputs(maps, jnp.mean(x, axis=(1, 2)), self.num_classes,
                                     self.dtype)
