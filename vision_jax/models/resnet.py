"""ResNets for ImageNet (He et al., 2016), laid out like torchvision's.

This is version 1.5: the bottleneck block strides in its 3x3 convolution rather
than in the first 1x1, as torchvision and most published ImageNet results do.
Parameter counts equal torchvision's, and padding is explicit and symmetric as
in PyTorch, so every layer has torchvision's shapes and its weights map one to
one onto these layers.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models

ModuleDef = Any

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def cpu_kernel_layers() -> dict[str, ModuleDef]:
  """The layers `models.get_model` injects for `config.model.cpu_kernels`."""
  from vision_jax.kernels import cpu_batch_norm, cpu_conv  # pylint: disable=g-import-not-at-top
  return {'conv': cpu_conv.Conv, 'norm': cpu_batch_norm.BatchNorm}


def conv(layer: ModuleDef, features: int, kernel_size: int, strides: int = 1, *,
         dtype: Any, name: str) -> nn.Module:
  """A bias-free convolution: the BatchNorm after it has its own bias."""
  pad = kernel_size // 2
  return layer(features, (kernel_size, kernel_size), strides=strides,
               padding=((pad, pad), (pad, pad)), use_bias=False,
               kernel_init=conv_kernel_init, dtype=dtype, name=name)


def batch_norm(layer: ModuleDef, train: bool, *, dtype: Any, name: str,
               zero_init: bool = False) -> nn.Module:
  # momentum 0.9 and epsilon 1e-5 are PyTorch's defaults (its momentum 0.1
  # weighs the new batch, Flax's weighs the running average).
  return layer(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      name=name)


def shortcut(block: nn.Module, x: jax.Array, features: int, train: bool) -> jax.Array:
  """Identity, or a strided 1x1 projection where the block changes the shape."""
  if block.strides == 1 and x.shape[-1] == features:
    return x
  x = conv(block.conv, features, 1, block.strides, dtype=block.dtype,
           name='conv_proj')(x)
  return batch_norm(block.norm, train, dtype=block.dtype, name='bn_proj')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions plus a shortcut (ResNet-18 and -34).

  Attributes:
    filters: output channels of the block.
    strides: stride of the first convolution; 2 where a stage halves the
      resolution.
    zero_init_residual: start the last BatchNorm scale at zero, so that the
      residual branch outputs zero and the block starts as identity + ReLU
      (Goyal et al., 2017).
    dtype: compute dtype; parameters stay float32.
    conv: the convolution layer, `nn.Conv` or a drop-in.
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  filters: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = conv(self.conv, self.filters, 3, self.strides, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(batch_norm(self.norm, train, dtype=self.dtype, name='bn1')(y))
    y = conv(self.conv, self.filters, 3, dtype=self.dtype, name='conv2')(y)
    y = batch_norm(self.norm, train, dtype=self.dtype, name='bn2',
                   zero_init=self.zero_init_residual)(y)
    return nn.relu(y + shortcut(self, x, self.filters, train))


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand by 4, plus a shortcut (ResNet-50 and deeper).

  Attributes:
    filters: channels of the 3x3 convolution; the block outputs 4 * filters.
    strides: stride of the 3x3 convolution (version 1.5); 2 where a stage
      halves the resolution.
    zero_init_residual: start the last BatchNorm scale at zero, so that the
      residual branch outputs zero and the block starts as identity + ReLU
      (Goyal et al., 2017).
    dtype: compute dtype; parameters stay float32.
    conv: the convolution layer, `nn.Conv` or a drop-in.
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  filters: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = conv(self.conv, self.filters, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(batch_norm(self.norm, train, dtype=self.dtype, name='bn1')(y))
    y = conv(self.conv, self.filters, 3, self.strides, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(batch_norm(self.norm, train, dtype=self.dtype, name='bn2')(y))
    y = conv(self.conv, 4 * self.filters, 1, dtype=self.dtype, name='conv3')(y)
    y = batch_norm(self.norm, train, dtype=self.dtype, name='bn3',
                   zero_init=self.zero_init_residual)(y)
    return nn.relu(y + shortcut(self, x, 4 * self.filters, train))


# depth -> (block, number of blocks in each of the four stages)
STAGES: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (BottleneckBlock, (3, 4, 6, 3)),
    101: (BottleneckBlock, (3, 4, 23, 3)),
    152: (BottleneckBlock, (3, 8, 36, 3)),
}
STEMS = ('imagenet', 'cifar')


class Model(nn.Module):
  """ImageNet ResNet: 7x7/2 stem and 3x3/2 max pool, four stages, pool, dense.

  Stage k (k = 1..4) works at 1/2**(k+1) of the input resolution with
  num_filters * 2**(k-1) filters per block, so a 224x224 input reaches the
  global pool as 7x7 maps. With `stem='cifar'` (SimCLR's CIFAR-10 ResNet, Chen et
  al. 2020, appendix B.9) the stem is one 3x3 convolution with stride 1 and no max
  pool, so stage k works at 1/2**(k-1) of a 32x32 input. Blocks are named `stage{k}_block{j}` so their
  outputs can be read with `capture_intermediates`.

  `feature_maps(x, train=...)` (`model.apply(variables, x, method='feature_maps')`)
  returns the named outputs: 'stem' (after the stem's ReLU, before its max pool: 1/2
  of the input resolution, or all of it with the CIFAR stem), 'stage1'..'stage4' (each stage's last block), 'pre_logits'
  ([N, D], the global average pool) and, unless `num_classes` is None, 'logits'.
  `__call__` returns 'logits', or 'pre_logits' for a headless model. Maps are in the
  compute dtype, logits in float32.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    num_classes: size of the logits; None for a headless backbone that returns
      its pooled features and has no head parameters.
    num_filters: filters of the stem and the first stage (64 in the paper);
      small values give the tiny variants used in tests.
    stem: 'imagenet' (7x7 convolution with stride 2, then 3x3 max pool with stride 2)
      or 'cifar' (3x3 convolution with stride 1, no pool), for small images.
    zero_init_residual: start the last BatchNorm scale of every block at zero,
      so each block starts as identity + ReLU (Goyal et al., 2017).
    dtype: compute dtype, e.g. jnp.bfloat16; parameters and BatchNorm
      statistics stay float32 and the logits are returned in float32.
    conv: the convolution layer, `nn.Conv` or a drop-in with its interface and
      parameters (`cpu_kernel_layers()`).
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  depth: int = 50
  num_classes: int | None = 1000
  num_filters: int = 64
  stem: str = 'imagenet'
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if self.depth not in STAGES:
      raise ValueError(
          f'ResNet depth must be one of {sorted(STAGES)}, got {self.depth}.')
    if self.stem not in STEMS:
      raise ValueError(f'ResNet stem must be one of {STEMS}, got {self.stem!r}.')
    block, stage_sizes = STAGES[self.depth]

    maps = {}
    imagenet_stem = self.stem == 'imagenet'
    x = conv(self.conv, self.num_filters, 7 if imagenet_stem else 3, 2 if imagenet_stem else 1,
             dtype=self.dtype, name='conv_init')(x)
    x = maps['stem'] = nn.relu(
        batch_norm(self.norm, train, dtype=self.dtype, name='bn_init')(x))
    if imagenet_stem:
      # Padded by hand: jax2onnx's max_pool drops an explicit `padding` (it exports VALID).
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
      x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))
    for stage, num_blocks in enumerate(stage_sizes):
      for i in range(num_blocks):
        x = block(
            filters=self.num_filters * 2**stage,
            strides=2 if stage > 0 and i == 0 else 1,
            zero_init_residual=self.zero_init_residual,
            dtype=self.dtype, conv=self.conv, norm=self.norm,
            name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
      maps[f'stage{stage + 1}'] = x
    return models.classifier_outputs(maps, jnp.mean(x, axis=(1, 2)), self.num_classes,
                                     self.dtype)
