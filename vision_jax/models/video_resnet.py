"""Video ResNets (Tran et al., 2018, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition"): R3D, R(2+1)D and the single-frame baseline, on clips [B, T, H, W, C].

One residual network with three kinds of convolution (`block`):
  * '3d': every convolution is t x d x d (3x3x3), as in C3D and R3D-18;
  * '2plus1d': every t x d x d convolution is factorised into a 1 x d x d spatial one
    with M_i filters, BatchNorm, ReLU, and a t x 1 x 1 temporal one, with the paper's
    M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)) (section 3.5), so that the
    factorised convolution has the parameters of the one it replaces (to within one
    intermediate filter); R(2+1)D-18;
  * 'frame': every convolution is 1 x d x d and no stride crosses time, so each frame is
    seen alone by the same 2D ResNet. Features are then averaged over frames and space
    before the linear head, which is the average of the per-frame logits: late fusion.
    It cannot see motion, and it is invariant to the order of the frames.

With the defaults (stages 2, 2, 2, 2 of 64..512 filters, the 3 x 7 x 7 stem of stride
1 x 2 x 2, stride 2 in time and space from the second stage) '3d' is torchvision's
`r3d_18` (33,371,472 parameters with 400 classes). Its `r2plus1d_18` shares one
intermediate width between the two convolutions of a block and hard-codes a stem of 45
filters; here every convolution takes the paper's formula, so the counts differ.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models

BLOCKS = ('frame', '3d', '2plus1d')
ModuleDef = Any


def midplanes(in_features: int, out_features: int, kernel: Sequence[int]) -> int:
  """The paper's intermediate width M_i of a factorised t x d x d convolution."""
  t, d, _ = kernel
  return (t * d * d * in_features * out_features) // (d * d * in_features + t * out_features)


class SpaceTimeConv(nn.Module):
  """A t x d x d convolution: full ('3d'), factorised ('2plus1d') or per frame ('frame').

  Without bias: BatchNorm follows. 'frame' drops the temporal extent of the kernel and
  of the stride; '2plus1d' puts BatchNorm and a ReLU between its two convolutions.

  Attributes:
    features: output channels.
    kernel: (t, d, d).
    strides: (temporal, spatial, spatial).
    block: 'frame', '3d' or '2plus1d'.
    dtype: compute dtype.
    conv: the convolution layer (`nn.Conv` or a drop-in).
    norm: the batch-norm layer of the factorised convolution.
  """
  features: int
  kernel: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  block: str = '3d'
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    t, d, _ = self.kernel
    st, s, _ = self.strides
    if self.block == 'frame':
      return self.conv(self.features, (1, d, d), (1, s, s), use_bias=False,
                       dtype=self.dtype, name='conv')(x)
    if self.block == '3d':
      return self.conv(self.features, (t, d, d), (st, s, s), use_bias=False,
                       dtype=self.dtype, name='conv')(x)
    mid = midplanes(x.shape[-1], self.features, self.kernel)
    x = self.conv(mid, (1, d, d), (1, s, s), use_bias=False, dtype=self.dtype,
                  name='spatial')(x)
    x = self.norm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                  dtype=self.dtype, name='spatial_bn')(x)
    x = nn.relu(x)
    return self.conv(self.features, (t, 1, 1), (st, 1, 1), use_bias=False,
                     dtype=self.dtype, name='temporal')(x)


class BasicBlock(nn.Module):
  """Two space-time convolutions with BatchNorm, and a projection shortcut on a change
  of shape (He et al., 2016; torchvision's video `BasicBlock`).

  Attributes:
    features: output channels.
    strides: (temporal, spatial, spatial) of the first convolution and the shortcut.
    block, dtype, conv, norm: as for `SpaceTimeConv`.
  """
  features: int
  strides: Sequence[int] = (1, 1, 1)
  block: str = '3d'
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    norm = lambda name: self.norm(use_running_average=not train, momentum=0.9,
                                  epsilon=1e-5, dtype=self.dtype, name=name)
    conv = lambda strides, name: SpaceTimeConv(
        self.features, (3, 3, 3), strides, self.block, self.dtype, self.conv, self.norm,
        name=name)
    y = nn.relu(norm('bn1')(conv(self.strides, 'conv1')(x, train=train)))
    y = norm('bn2')(conv((1, 1, 1), 'conv2')(y, train=train))
    if x.shape[-1] != self.features or any(s != 1 for s in self.strides):
      st, s, _ = self.strides
      x = self.conv(self.features, (1, 1, 1), (1 if self.block == 'frame' else st, s, s),
                    use_bias=False,
                    dtype=self.dtype, name='shortcut')(x)
      x = norm('shortcut_bn')(x)
    return nn.relu(x + y)


class Model(nn.Module):
  """A video ResNet: stem, residual stages, global average pooling, linear head.

  `feature_maps(x, train=...)` on clips [B, T, H, W, C] returns the named outputs:
  'stem', 'stage1'..'stageK' ([B, T', H', W', D]), 'pre_logits' ([B, D], averaged over
  time and space) and, unless `num_classes` is None, 'logits'. `__call__` returns
  'logits', or 'pre_logits' for a headless model. Maps are in the compute dtype,
  logits in float32. BatchNorm statistics live in `batch_stats`.

  Attributes:
    block: 'frame' (the single-frame baseline), '3d' or '2plus1d'.
    stage_sizes: residual blocks per stage.
    features: channels of each stage.
    stem_features: channels of the stem.
    stem_kernel: (t, d, d) of the stem convolution.
    stem_strides: its (temporal, spatial, spatial) strides.
    strides: per stage, the (temporal, spatial, spatial) strides of its first block
      ('frame' ignores the temporal ones).
    num_classes: size of the logits; None for a headless backbone.
    dtype: compute dtype; parameters stay float32.
    conv: the convolution layer, `nn.Conv` or a drop-in with its interface.
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  block: str = '3d'
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  features: Sequence[int] = (64, 128, 256, 512)
  stem_features: int = 64
  stem_kernel: Sequence[int] = (3, 7, 7)
  stem_strides: Sequence[int] = (1, 2, 2)
  strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
  num_classes: int | None = 400
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if self.block not in BLOCKS:
      raise ValueError(f'block must be one of {BLOCKS}, got {self.block!r}')
    if x.ndim != 5:
      raise ValueError(f'video_resnet takes clips [B, T, H, W, C], got shape {x.shape}')
    if not len(self.stage_sizes) == len(self.features) == len(self.strides):
      raise ValueError('stage_sizes, features and strides need one entry per stage, got '
                       f'{len(self.stage_sizes)}, {len(self.features)} and {len(self.strides)}')
    x = x.astype(self.dtype)
    x = SpaceTimeConv(self.stem_features, self.stem_kernel, self.stem_strides, self.block,
                      self.dtype, self.conv, self.norm, name='stem')(x, train=train)
    x = self.norm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                  dtype=self.dtype, name='stem_bn')(x)
    maps = {'stem': nn.relu(x)}
    x = maps['stem']
    for stage, (size, width, strides) in enumerate(
        zip(self.stage_sizes, self.features, self.strides)):
      for i in range(size):
        x = BasicBlock(width, tuple(strides) if i == 0 else (1, 1, 1), self.block,
                       self.dtype, self.conv, self.norm,
                       name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
      maps[f'stage{stage + 1}'] = x
    return models.classifier_outputs(maps, x.mean(axis=(1, 2, 3)), self.num_classes,
                                     self.dtype)
