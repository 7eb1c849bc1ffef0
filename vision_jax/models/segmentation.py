r"""Semantic segmentation networks: per-pixel class logits [B, H, W, num_classes].

Two families, chosen by `config.model.arch`:

- `'fcn'`, `FCN`: the fully convolutional network of Long et al. (2015) on a ResNet
  backbone (`vision_jax.models.resnet`, headless, read through its `feature_maps`). A 1x1
  "score" convolution on each of several stages gives class scores at that stage's
  resolution; starting from the deepest, the running scores are upsampled 2x and summed
  with the next stage's, and the sum is upsampled to the input size. With the ImageNet
  stem and skips ('stage4', 'stage3', 'stage2') (strides 32, 16, 8) this is FCN-8s;
  ('stage4',) alone is FCN-32s. With the CIFAR stem (`stem='cifar'`, for 32x32 images)
  the same skips sit at strides 8, 4 and 2. As in the paper, the scores of the added
  skips start at zero, so training starts from the coarse net's output. Upsampling is
  bilinear and fixed (the paper fixes its last upsampling to bilinear and learns the
  in-between ones from a bilinear start; fixed ones keep the net a plain composition of
  Flax layers and cost nothing).
- `'unet'`, `UNet`: the U-Net of Ronneberger et al. (2015). A contracting path of double
  3x3 convolution blocks (convolution, [BatchNorm], ReLU, twice), each followed by 2x2 max
  pooling; a bottom block; an expanding path whose every level upsamples with a 2x2
  stride-2 transposed convolution ("up-convolution") that halves the channels,
  concatenates the contracting path's map of the same size, and applies a double block;
  a 1x1 convolution to the classes. Unlike the paper, the 3x3 convolutions are padded
  ('SAME'), so the output has the input's size and nothing is cropped, and BatchNorm
  (Ioffe and Szegedy 2015) follows each convolution by default; `use_batchnorm=False`
  gives the paper's plain convolutions with biases. Each side must be divisible by
  2**(len(features) - 1).

`Model(arch=..., **attributes)` builds either (the registry's entry point; an attribute
the chosen family lacks is an error naming it). Both return float32 logits whatever the
compute dtype, take `__call__(x, *, train=False)` (BatchNorm statistics in
`batch_stats`), and are plain Flax layers, so `jax.grad`, `jax.jvp` and `jax.vmap` go
through them. `TINY_FCN` and `TINY_UNET` are test variants.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import config_lib, layers
from vision_jax.models import resnet

ModuleDef = Any
ARCHS = ('fcn', 'unet')

# Variants that compile in a few seconds, for tests (any side divisible by 4).
TINY_FCN = dict(arch='fcn', depth=18, num_filters=4, stem='cifar',
                skips=('stage4', 'stage3', 'stage2'))
TINY_UNET = dict(arch='unet', features=(4, 8, 16))


def _upsample(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of [B, h, w, C] to [B, height, width, C] (half-pixel centres)."""
  # Upsampling only, where antialiasing changes nothing; without it jax2onnx converts it.
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), 'bilinear',
                          antialias=False)


def _float_logits(x: jax.Array) -> jax.Array:
  # Float32 logits keep the softmax and the loss at full precision (float64 stays float64).
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class FCN(nn.Module):
  """FCN (Long et al. 2015) on a ResNet backbone: 1x1 scores on several stages, summed
  coarse to fine, bilinearly upsampled to the input size.

  Attributes:
    num_classes: classes of the logits (the background included).
    depth: the ResNet's depth (18, 34, 50, 101, 152).
    num_filters: filters of the ResNet's stem and first stage (64 in He et al.).
    stem: 'cifar' (3x3, stride 1, no pool: stage k at 1/2**(k-1), for small images) or
      'imagenet' (7x7 stride 2 and max pool: stage k at 1/2**(k+1)).
    skips: the backbone maps that get a score layer, deepest first, each usually at twice
      the resolution of the one before ('stem' and 'stage1'..'stage4' of
      `resnet.Model.feature_maps`).
    dtype: compute dtype; parameters stay float32, logits are float32.
    conv: the backbone's convolution layer, `nn.Conv` or a drop-in.
    norm: the backbone's batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  num_classes: int
  depth: int = 18
  num_filters: int = 64
  stem: str = 'cifar'
  skips: Sequence[str] = ('stage4', 'stage3', 'stage2')
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if not self.skips:
      raise ValueError('FCN needs at least one skip (a backbone map to score)')
    backbone = resnet.Model(depth=self.depth, num_classes=None, num_filters=self.num_filters,
                            stem=self.stem, dtype=self.dtype, conv=self.conv,
                            norm=self.norm, name='backbone')
    maps = backbone.feature_maps(x, train=train)
    unknown = [k for k in self.skips if k not in maps or k == 'pre_logits']
    if unknown:
      raise ValueError(f'FCN skips {unknown} are not backbone maps; use some of '
                       "'stem', 'stage1', 'stage2', 'stage3', 'stage4'")
    scores = None
    for i, key in enumerate(self.skips):
      # The added skips start at zero: training begins from the coarser net (Long et al. 4.2).
      init = nn.initializers.zeros if i else nn.initializers.lecun_normal()
      score = nn.Conv(self.num_classes, (1, 1), kernel_init=init, dtype=self.dtype,
                      name=f'score_{key}')(maps[key])
      if scores is not None:  # Upsampled to this skip's size (2x, or near it for odd sides).
        score = score + _upsample(scores, *score.shape[1:3])
      scores = score
    return _float_logits(_upsample(scores, *x.shape[1:3]))


class DoubleConv(nn.Module):
  """Two 3x3 'SAME' convolutions, each followed by BatchNorm (optional) and ReLU.

  Attributes:
    features: output channels of both convolutions.
    use_batchnorm: BatchNorm after each convolution (bias-free convolutions then).
    dtype: compute dtype.
    conv: the convolution layer.
    norm: the batch-norm layer.
  """
  features: int
  use_batchnorm: bool = True
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for i in range(2):
      x = self.conv(self.features, (3, 3), padding='SAME', use_bias=not self.use_batchnorm,
                    kernel_init=resnet.conv_kernel_init, dtype=self.dtype,
                    name=f'conv{i + 1}')(x)
      if self.use_batchnorm:
        x = resnet.batch_norm(self.norm, train, dtype=self.dtype, name=f'bn{i + 1}')(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net (Ronneberger et al. 2015) with padded convolutions.

  Attributes:
    num_classes: classes of the logits (the background included).
    features: channels of each level's double block, top to bottom; the last is the
      bottom block's. The paper's is (64, 128, 256, 512, 1024).
    use_batchnorm: BatchNorm after every 3x3 convolution (the paper has none).
    dtype: compute dtype; parameters stay float32, logits are float32.
    conv: the 3x3 convolution layer, `nn.Conv` or a drop-in.
    conv_transpose: the up-convolution layer (Flax's `ConvTranspose`, by phases on a CPU).
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  num_classes: int
  features: Sequence[int] = (64, 128, 256, 512, 1024)
  use_batchnorm: bool = True
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = layers.ConvTranspose
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    levels = len(self.features)
    if levels < 2:
      raise ValueError(f'UNet needs at least two levels of features, got {self.features}')
    factor = 2 ** (levels - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'UNet with {levels} levels needs sides divisible by {factor}, got '
                       f'{x.shape[1]}x{x.shape[2]}')
    block = lambda features, name: DoubleConv(
        features, self.use_batchnorm, dtype=self.dtype, conv=self.conv, norm=self.norm,
        name=name)
    skips = []
    for i, features in enumerate(self.features[:-1]):
      x = block(features, f'down{i}')(x, train=train)
      skips.append(x)
      x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = block(self.features[-1], 'bottom')(x, train=train)
    for i in reversed(range(levels - 1)):
      features = self.features[i]
      x = self.conv_transpose(features, (2, 2), strides=(2, 2), padding='SAME',
                              dtype=self.dtype, name=f'upconv{i}')(x)
      x = jnp.concatenate([skips[i], x], axis=-1)
      x = block(features, f'up{i}')(x, train=train)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return _float_logits(logits)


_FAMILIES = {'fcn': FCN, 'unet': UNet}


def Model(arch: str = 'fcn', **attributes) -> nn.Module:  # pylint: disable=invalid-name
  """The segmentation network `arch` ('fcn' or 'unet') with its `attributes`."""
  if arch not in _FAMILIES:
    raise config_lib.ConfigError(f'model.arch must be one of {ARCHS}, got {arch!r}')
  family = _FAMILIES[arch]
  fields = {f.name for f in dataclasses.fields(family)} - {'parent', 'name'}
  unknown = sorted(set(attributes) - fields)
  if unknown:
    raise config_lib.ConfigError(
        f'model.{unknown[0]} is not an attribute of the {arch!r} segmentation model; it '
        f'has {", ".join(sorted(fields))}')
  return family(**attributes)
