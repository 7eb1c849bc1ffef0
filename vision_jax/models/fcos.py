r"""FCOS, the fully convolutional one-stage detector (Tian et al. 2019), as a Linen module.

A headless ResNet (`vision_jax.models.resnet`, read through its `feature_maps`), a feature
pyramid and one set of heads shared by every pyramid level:

  backbone   ResNet stages `levels` (finest first; 'stage2'..'stage4' for the paper's
             C3-C5). With the CIFAR stem stage k is at stride 2**(k-1) (for 32x32
             images 'stage2', 'stage3', 'stage4' give strides 2, 4 and 8), with the
             ImageNet stem at 2**(k+1) (8, 16 and 32, the paper's).
  pyramid    a 1x1 lateral convolution on each stage, a top-down pathway (the coarser
             output upsampled 2x by nearest neighbours and added), a 3x3 output
             convolution per level (Lin et al. 2017); `extra_levels` more levels from
             stride-2 3x3 convolutions on the coarsest output (the paper's P6 and P7,
             with a ReLU between them, as in its later version).
  heads      a classification tower and a regression tower, each `head_convs` 3x3
             convolutions with GroupNorm and ReLU, shared across levels. The
             classification tower ends in K sigmoid logits per location whose bias
             starts at -log((1 - prior) / prior) (focal-loss prior, prior = 0.01); the
             regression tower ends in the 4 distances (l, t, r, b) and in the
             centerness logit (on the regression branch, as in the paper's later
             version). The distances are `relu(scale_i * x) * stride_i` (the later
             version's normalised targets) or `exp(scale_i * x) * stride_i` (the
             original's exp, measured here in strides too), with one learnable scale per
             level starting at 1: the raw outputs are in units of the level's stride,
             the returned distances in pixels of the input image.

Locations. The cell (i, j) of a level with stride s stands for the point
((i + 0.5) s, (j + 0.5) s) in continuous pixel coordinates (pixel p covers [p, p + 1)),
the centre of the input patch it summarises; a level of an H x W input has
ceil(H / s) x ceil(W / s) cells (each stride-2 layer pads, so sizes round up). The
outputs concatenate the levels, finest first, each in row-major order:

  class_logits       [B, L, K] float32
  ltrb               [B, L, 4] float32, distances from the location to the box's left,
                     top, right and bottom sides, in input pixels (>= 0)
  centerness_logits  [B, L] float32
  locations          [L, 2] float32, (y, x) of each location in input pixels
  strides            [L] float32, the stride of each location's level

so a predicted box, in pixels [ymin, xmin, ymax, xmax], is
[y - t, x - l, y + b, x + r]. `geometry(...)` gives the locations, strides and level
indices as numpy arrays from the attributes and the image size alone (the method's
target assignment uses it, so targets and outputs cannot disagree; the module checks
the feature maps' sizes against it).

CondInst (Tian et al. 2020), instance segmentation without RoIs, adds two outputs when
`mask_features` > 0:
  mask branch  on the finest pyramid level, `mask_branch_convs` 3x3 convolutions with
               GroupNorm and ReLU, then a 1x1 convolution to `mask_features` channels
               (the paper's 4 convolutions and 8 channels, on P3);
  controller   a 3x3 convolution on the regression tower giving, at every location, the
               parameters of that location's own mask head (`dynamic_mask_logits`): a
               stack of `mask_head_layers` 1x1 convolutions of `mask_head_channels`
               (the paper's 3 and 8: 169 parameters) over the mask features and the
               coordinates of each cell relative to the location.

  mask_features  [B, h, w, C] float32, h x w the finest level's grid
  controllers    [B, L, P] float32, P = `dynamic_param_count(C, channels, layers)`

Plain Flax layers throughout (the backbone's convolution and batch-norm layers can be
injected, as `resnet.Model`'s), so `jax.grad`, `jax.jvp` and `jax.vmap` go through the
model. `TINY` is a variant for tests.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib
from vision_jax.models import resnet

ModuleDef = Any
REGRESSIONS = ('relu', 'exp')
STAGES = ('stage1', 'stage2', 'stage3', 'stage4')

# Compiles in seconds, for tests: ResNet-18 with 4 filters, one tower convolution.
TINY = dict(depth=18, num_filters=4, stem='cifar', levels=('stage2', 'stage3', 'stage4'),
            fpn_features=8, head_convs=1, num_groups=2)

# The heads of the paper: weights from N(0, 0.01), zero biases.
head_init = nn.initializers.normal(0.01)


def cpu_kernel_layers() -> dict[str, ModuleDef]:
  """The backbone's C++ CPU layers, for `config.model.cpu_kernels` (see `resnet`)."""
  return resnet.cpu_kernel_layers()


def level_strides(stem: str, levels: Sequence[str], extra_levels: int = 0) -> tuple[int, ...]:
  """The stride of each pyramid level, finest first."""
  if stem not in resnet.STEMS:
    raise config_lib.ConfigError(f'model.stem must be one of {resnet.STEMS}, got {stem!r}')
  bad = [level for level in levels if level not in STAGES]
  if bad or not levels:
    raise config_lib.ConfigError(
        f'model.levels must be backbone stages among {STAGES}, finest first; got {levels}')
  numbers = [int(level[5:]) for level in levels]
  if numbers != sorted(set(numbers)):
    raise config_lib.ConfigError(f'model.levels must be distinct and finest first, got {levels}')
  offset = -1 if stem == 'cifar' else 1  # stage k at 2**(k-1) or 2**(k+1)
  strides = [2 ** (k + offset) for k in numbers]
  for _ in range(extra_levels):
    strides.append(strides[-1] * 2)
  return tuple(strides)


def geometry(height: int, width: int, strides: Sequence[int]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(locations [L, 2] (y, x) in pixels, strides [L], level index [L])` of the levels
  with `strides` on a `height` x `width` input, in the model's output order."""
  locations, location_strides, indices = [], [], []
  for index, stride in enumerate(strides):
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    y, x = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride,
                       indexing='ij')
    locations.append(np.stack([y.ravel(), x.ravel()], -1))
    location_strides.append(np.full(rows * cols, stride))
    indices.append(np.full(rows * cols, index))
  return (np.concatenate(locations).astype(np.float32),
          np.concatenate(location_strides).astype(np.float32),
          np.concatenate(indices).astype(np.int32))


def dynamic_layer_shapes(mask_features: int, channels: int, layers: int
                         ) -> list[tuple[int, int]]:
  """(inputs, outputs) of each 1x1 convolution of CondInst's dynamic mask head: the
  mask features and 2 relative coordinates in, one mask logit out."""
  if layers < 1:
    raise config_lib.ConfigError(f'model.mask_head_layers must be >= 1, got {layers}')
  sizes = [mask_features + 2] + [channels] * (layers - 1) + [1]
  return list(zip(sizes[:-1], sizes[1:]))


def dynamic_param_count(mask_features: int, channels: int, layers: int) -> int:
  """The parameters (weights and biases) of one dynamic mask head (169 in the paper)."""
  return sum(i * o + o for i, o in dynamic_layer_shapes(mask_features, channels, layers))


def dynamic_mask_logits(controller: jax.Array, mask_features: jax.Array, location: jax.Array,
                        *, stride: float, scale: jax.Array, channels: int,
                        layers: int) -> jax.Array:
  """One instance's mask logits [h, w] on the mask features' grid (CondInst).

  Args:
    controller: [P] the instance's location's controller output: each layer's weights
      (inputs x outputs, row-major) then its biases, layer after layer.
    mask_features: [h, w, C] the image's mask branch output, on a grid of `stride`.
    location: [2] (y, x) in pixels of the location that predicted the instance.
    stride: the mask features' stride in pixels.
    scale: the instance level's size of interest in pixels (8 strides of that level, the
      paper's 64 for P3), dividing the relative coordinates.
    channels: the hidden layers' channels.
    layers: the 1x1 convolutions (ReLU between them, none after the last).
  """
  h, w, c = mask_features.shape
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  relative = jnp.stack(jnp.broadcast_arrays((location[0] - ys)[:, None],
                                            (location[1] - xs)[None, :]), -1) / scale
  x = jnp.concatenate([relative.astype(mask_features.dtype), mask_features], -1)
  offset = 0
  shapes = dynamic_layer_shapes(c, channels, layers)
  for k, (inputs, outputs) in enumerate(shapes):
    weights = controller[offset:offset + inputs * outputs].reshape(inputs, outputs)
    offset += inputs * outputs
    bias = controller[offset:offset + outputs]
    offset += outputs
    x = x @ weights.astype(x.dtype) + bias.astype(x.dtype)
    if k < len(shapes) - 1:
      x = nn.relu(x)
  return x[..., 0]


def _upsample_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """2x nearest-neighbour upsampling, cut to (height, width) (odd sides round up)."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :height, :width]


class Model(nn.Module):
  """FCOS on a ResNet with a feature pyramid (see the module docstring).

  Attributes:
    num_classes: K, the object classes (no background class: each has a sigmoid).
    depth: the ResNet's depth (18, 34, 50, 101, 152).
    num_filters: filters of the ResNet's stem and first stage (64 in He et al.).
    stem: 'cifar' (3x3, stride 1, no pool; for small images) or 'imagenet'.
    levels: the backbone stages that feed the pyramid, finest first.
    extra_levels: coarser levels added by stride-2 convolutions on the coarsest output
      (2 for the paper's P6 and P7).
    fpn_features: channels of the pyramid and of the heads (256 in the paper).
    head_convs: 3x3 convolutions in each tower (4 in the paper).
    num_groups: GroupNorm groups in the towers (32 in the paper); divides fpn_features.
    regression: 'relu' (the later version) or 'exp' (the original) for the distances.
    prior_prob: the probability every class logit starts at (0.01).
    mask_features: CondInst's mask branch channels (8 in the paper); 0 for FCOS alone.
    mask_branch_convs: the mask branch's 3x3 convolutions before its 1x1 output.
    mask_head_channels: the dynamic mask heads' hidden channels.
    mask_head_layers: the dynamic mask heads' 1x1 convolutions.
    dtype: compute dtype; parameters stay float32, the outputs are float32.
    conv: the backbone's convolution layer, `nn.Conv` or a drop-in.
    norm: the backbone's batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  num_classes: int
  depth: int = 50
  num_filters: int = 64
  stem: str = 'imagenet'
  levels: Sequence[str] = ('stage2', 'stage3', 'stage4')
  extra_levels: int = 0
  fpn_features: int = 256
  head_convs: int = 4
  num_groups: int = 32
  regression: str = 'relu'
  prior_prob: float = 0.01
  mask_features: int = 0
  mask_branch_convs: int = 2
  mask_head_channels: int = 8
  mask_head_layers: int = 3
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  def strides(self) -> tuple[int, ...]:
    """The pyramid levels' strides, finest first (works on an unbound module)."""
    return level_strides(self.stem, tuple(self.levels), self.extra_levels)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if self.regression not in REGRESSIONS:
      raise config_lib.ConfigError(
          f'model.regression must be one of {REGRESSIONS}, got {self.regression!r}')
    if self.fpn_features % self.num_groups:
      raise config_lib.ConfigError(f'model.num_groups {self.num_groups} must divide '
                                   f'model.fpn_features {self.fpn_features}')
    strides = self.strides()
    height, width = x.shape[-3:-1]
    backbone = resnet.Model(depth=self.depth, num_classes=None, num_filters=self.num_filters,
                            stem=self.stem, dtype=self.dtype, conv=self.conv,
                            norm=self.norm, name='backbone')
    maps = backbone.feature_maps(x, train=train)

    # Feature pyramid: laterals, top-down sum, 3x3 outputs.
    conv = lambda features, kernel, name, strides=1: nn.Conv(
        features, (kernel, kernel), strides=strides, padding='SAME', dtype=self.dtype,
        name=name)
    laterals = [conv(self.fpn_features, 1, f'lateral_{level}')(maps[level])
                for level in self.levels]
    for i in range(len(laterals) - 2, -1, -1):
      laterals[i] = laterals[i] + _upsample_to(laterals[i + 1], *laterals[i].shape[1:3])
    pyramid = [conv(self.fpn_features, 3, f'output_{level}')(lateral)
               for level, lateral in zip(self.levels, laterals)]
    for i in range(self.extra_levels):
      source = pyramid[-1] if i == 0 else nn.relu(pyramid[-1])
      pyramid.append(conv(self.fpn_features, 3, f'extra_{i}', strides=2)(source))
    for feature, stride in zip(pyramid, strides):
      expected = (math.ceil(height / stride), math.ceil(width / stride))
      if feature.shape[1:3] != expected:  # The geometry the targets use must hold.
        raise ValueError(f'pyramid level of stride {stride} is {feature.shape[1:3]}, '
                         f'expected {expected} for a {height}x{width} input')

    # Heads, shared by every level: modules made once, called per level.
    def tower(prefix):
      layers = []
      for j in range(self.head_convs):
        layers.append((nn.Conv(self.fpn_features, (3, 3), padding='SAME', dtype=self.dtype,
                               kernel_init=head_init, name=f'{prefix}_conv{j}'),
                       nn.GroupNorm(self.num_groups, dtype=self.dtype,
                                    name=f'{prefix}_norm{j}')))

      def apply(y):
        for conv_layer, norm_layer in layers:
          y = nn.relu(norm_layer(conv_layer(y)))
        return y
      return apply

    cls_tower, reg_tower = tower('cls'), tower('reg')
    prior_bias = -math.log((1 - self.prior_prob) / self.prior_prob)
    cls_logits = nn.Conv(self.num_classes, (3, 3), padding='SAME', dtype=self.dtype,
                         kernel_init=head_init,
                         bias_init=nn.initializers.constant(prior_bias), name='cls_logits')
    box_out = nn.Conv(4, (3, 3), padding='SAME', dtype=self.dtype, kernel_init=head_init,
                      name='box_distances')
    centerness_out = nn.Conv(1, (3, 3), padding='SAME', dtype=self.dtype,
                             kernel_init=head_init, name='centerness')

    with_masks = self.mask_features > 0
    outputs = {'class_logits': [], 'ltrb': [], 'centerness_logits': []}
    if with_masks:
      outputs['controllers'] = []
      controller = nn.Conv(
          dynamic_param_count(self.mask_features, self.mask_head_channels,
                              self.mask_head_layers), (3, 3), padding='SAME',
          dtype=self.dtype, kernel_init=head_init, name='controller')
    for i, (feature, stride) in enumerate(zip(pyramid, strides)):
      batch = feature.shape[:-3]
      flat = lambda y: y.reshape(*batch, -1, y.shape[-1]).astype(
          jnp.promote_types(y.dtype, jnp.float32))
      scale = self.param(f'scale_{i}', nn.initializers.ones, ())
      reg = reg_tower(feature)
      raw = flat(box_out(reg)) * scale
      # exp's argument is capped so that a wild early step cannot overflow to inf.
      distances = (nn.relu(raw) if self.regression == 'relu'
                   else jnp.exp(jnp.minimum(raw, 20.0)))
      outputs['ltrb'].append(distances * stride)
      outputs['class_logits'].append(flat(cls_logits(cls_tower(feature))))
      outputs['centerness_logits'].append(flat(centerness_out(reg))[..., 0])
      if with_masks:
        outputs['controllers'].append(flat(controller(reg)))
    outputs = {k: jnp.concatenate(v, axis=-2 if k != 'centerness_logits' else -1)
               for k, v in outputs.items()}
    if with_masks:
      y = pyramid[0]
      for j in range(self.mask_branch_convs):
        y = nn.Conv(self.fpn_features, (3, 3), padding='SAME', dtype=self.dtype,
                    name=f'mask_conv{j}')(y)
        y = nn.relu(nn.GroupNorm(self.num_groups, dtype=self.dtype, name=f'mask_norm{j}')(y))
      y = nn.Conv(self.mask_features, (1, 1), dtype=self.dtype, name='mask_output')(y)
      outputs['mask_features'] = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    locations, location_strides, _ = geometry(height, width, strides)
    outputs['locations'] = jnp.asarray(locations)
    outputs['strides'] = jnp.asarray(location_strides)
    return outputs
