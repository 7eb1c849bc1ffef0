"""PyTorch eager twins of the benchmarked models and steps, for like-for-like timings.

Each twin has the layers, shapes, initial BatchNorm settings and optimizer of its Flax
model (`vision_jax/models/{cnn,cifar_resnet,resnet,unet,vit,captioner,clip}.py`), so a
training step does the same arithmetic. The step follows `config.method`:
'classification' (cross-entropy, with the config's label smoothing and gradient
clipping) or 'diffusion' (`vision_jax.methods.diffusion`'s L_simple on the U-Net, with
label dropout, gradient clipping and the parameter EMA when the config has them) by
`make_train_step`, 'captioning' (teacher-forced cross-entropy on the Transformer
captioner) by `make_captioning_step`, and 'clip' (the symmetric contrastive loss of
`losses.clip_loss` on the two towers) by `make_clip_step`. Only
`vision_jax.benchmark --torch` imports this module; PyTorch is not a dependency of the
project.
"""

import math
import os
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vision_jax import losses
from vision_jax.data import text
from vision_jax.methods import diffusion
from vision_jax.models import clip, transformer, unet, vit


def _bn(features: int) -> nn.BatchNorm2d:
  # PyTorch's momentum 0.1 is Flax's 0.9; both use epsilon 1e-5.
  return nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)


def _cnn_stages(in_channels: int, image_size: tuple[int, int], features, kernel_size: int,
                convs_per_stage: int, pooling: str, use_batchnorm: bool):
  """`models/cnn.py`'s conv stages: `(layers, channels, height, width)` of the last map."""
  layers, channels = [], in_channels
  height, width = image_size
  for width_out in features:
    for _ in range(convs_per_stage):
      layers.append(nn.Conv2d(channels, width_out, kernel_size, padding='same',
                              bias=not use_batchnorm))
      if use_batchnorm:
        layers.append(_bn(width_out))
      layers.append(nn.ReLU(inplace=True))
      channels = width_out
    if pooling == 'max':
      layers.append(nn.MaxPool2d(2))
    elif pooling == 'avg':
      layers.append(nn.AvgPool2d(2))
    if pooling != 'none':
      height, width = height // 2, width // 2
  return layers, channels, height, width


class CNN(nn.Module):
  """`models/cnn.py`: conv stages ('SAME', optional BatchNorm, ReLU, 2x2 pool), dense."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int, *,
               features=(32, 64), kernel_size=3, convs_per_stage=1, pooling='max',
               dense_features=(128,), dropout_rate=0.0, use_batchnorm=False, **unused):
    super().__init__()
    del unused
    layers, channels, height, width = _cnn_stages(
        in_channels, image_size, features, kernel_size, convs_per_stage, pooling,
        use_batchnorm)
    layers.append(nn.Flatten())
    size = channels * height * width
    for width_out in dense_features:
      layers += [nn.Linear(size, width_out), nn.ReLU(inplace=True), nn.Dropout(dropout_rate)]
      size = width_out
    layers.append(nn.Linear(size, num_classes))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


class CifarBlock(nn.Module):
  """`models/cifar_resnet.py: BasicBlock` with its option-A shortcut."""

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False)
    self.bn1 = _bn(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
    self.bn2 = _bn(filters)
    self.stride, self.pad = stride, filters - in_filters

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)), inplace=True)
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, ::self.stride, ::self.stride]
    if self.pad:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
    return F.relu(y + shortcut, inplace=True)


class CifarResNet(nn.Module):
  """`models/cifar_resnet.py: Model`, depth 6n + 2."""

  def __init__(self, in_channels: int, num_classes: int, *, depth=20, num_filters=16,
               **unused):
    super().__init__()
    del unused
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(in_channels, num_filters, 3, 1, 1, bias=False),
                              _bn(num_filters), nn.ReLU(inplace=True))
    blocks, channels = [], num_filters
    for stage in range(3):
      for i in range(n):
        filters = num_filters * 2**stage
        blocks.append(CifarBlock(channels, filters, 2 if stage > 0 and i == 0 else 1))
        channels = filters
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Bottleneck(nn.Module):
  """`models/resnet.py: BottleneckBlock` (v1.5: the stride is in the 3x3)."""
  expansion = 4

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    out = 4 * filters
    self.body = nn.Sequential(
        nn.Conv2d(in_filters, filters, 1, bias=False), _bn(filters), nn.ReLU(inplace=True),
        nn.Conv2d(filters, filters, 3, stride, 1, bias=False), _bn(filters),
        nn.ReLU(inplace=True), nn.Conv2d(filters, out, 1, bias=False), _bn(out))
    self.proj = (nn.Sequential(nn.Conv2d(in_filters, out, 1, stride, bias=False), _bn(out))
                 if stride != 1 or in_filters != out else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.proj(x), inplace=True)


class Basic(nn.Module):
  """`models/resnet.py: BasicBlock`."""
  expansion = 1

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    self.body = nn.Sequential(
        nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False), _bn(filters),
        nn.ReLU(inplace=True), nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
        _bn(filters))
    self.proj = (nn.Sequential(nn.Conv2d(in_filters, filters, 1, stride, bias=False),
                               _bn(filters))
                 if stride != 1 or in_filters != filters else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.proj(x), inplace=True)


_STAGES = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
  """`models/resnet.py: Model` (torchvision's layout)."""

  def __init__(self, in_channels: int, num_classes: int, *, depth=50, num_filters=64,
               **unused):
    super().__init__()
    del unused
    block, sizes = _STAGES[depth]
    self.stem = nn.Sequential(
        nn.Conv2d(in_channels, num_filters, 7, 2, 3, bias=False), _bn(num_filters),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    blocks, channels = [], num_filters
    for stage, count in enumerate(sizes):
      for i in range(count):
        filters = num_filters * 2**stage
        blocks.append(block(channels, filters, 2 if stage > 0 and i == 0 else 1))
        channels = filters * block.expansion
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


# The DDPM U-Net. Submodules carry the Flax modules' names (`down0_block0.conv1`), so
# parameters map one to one. The residual shortcut (a Flax Dense on the map) is a 1x1
# convolution; attention's Dense layers are Linear layers over the [N, H*W, C] positions.

def _group_norm(channels: int, norm_groups: int) -> nn.GroupNorm:
  # Flax's GroupNorm epsilon is 1e-6 (PyTorch's default 1e-5).
  return nn.GroupNorm(unet.num_groups(channels, norm_groups), channels, eps=1e-6)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
  conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
  nn.init.zeros_(conv.weight)
  nn.init.zeros_(conv.bias)
  return conv


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0):
  """`models/unet.py: timestep_embedding`: [N] -> [N, dim], sin then cos."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32)
                    / (half - 1))
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
  """`models/unet.py: ResBlock`."""

  def __init__(self, in_channels: int, features: int, temb_dim: int, dropout: float,
               norm_groups: int):
    super().__init__()
    self.norm1 = _group_norm(in_channels, norm_groups)
    self.conv1 = nn.Conv2d(in_channels, features, 3, padding=1)
    self.temb_proj = nn.Linear(temb_dim, features)
    self.norm2 = _group_norm(features, norm_groups)
    self.dropout = nn.Dropout(dropout)
    self.conv2 = _zero_conv(features, features)
    self.shortcut = (nn.Conv2d(in_channels, features, 1) if in_channels != features
                     else nn.Identity())

  def forward(self, x, temb):
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return self.shortcut(x) + h


class AttentionBlock(nn.Module):
  """`models/unet.py: AttentionBlock`: q, k, v from one projection laid out [3, heads, d]."""

  def __init__(self, channels: int, num_heads: int, norm_groups: int):
    super().__init__()
    if channels % num_heads:
      raise ValueError(f'{channels} channels do not split into {num_heads} heads')
    self.num_heads = num_heads
    self.norm = _group_norm(channels, norm_groups)
    self.qkv = nn.Linear(channels, 3 * channels)
    self.proj_out = nn.Linear(channels, channels)
    nn.init.zeros_(self.proj_out.weight)
    nn.init.zeros_(self.proj_out.bias)

  def forward(self, x):
    n, channels, height, width = x.shape
    # [N, H*W, C]: a view of a channels-last map, as Flax's NHWC.
    h = self.norm(x).permute(0, 2, 3, 1).reshape(n, height * width, channels)
    qkv = self.qkv(h).reshape(n, height * width, 3, self.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # Each [N, heads, positions, d].
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
    out = self.proj_out(out.transpose(1, 2).reshape(n, height * width, channels))
    return x + out.reshape(n, height, width, channels).permute(0, 3, 1, 2)


class Downsample(nn.Conv2d):
  """Flax's stride-2 'SAME' 3x3 convolution: on an even side it pads 0 before, 1 after
  (PyTorch's padding=1 would pad 1 on both sides and sample other positions)."""

  def __init__(self, channels: int):
    super().__init__(channels, channels, 3, stride=2)

  def forward(self, x):
    return super().forward(F.pad(x, (0, 1, 0, 1)))


class UNet(nn.Module):
  """`models/unet.py: Model` for `image_size` inputs: forward(x, t, labels=None)."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], *, channels=64,
               channel_multipliers=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7,),
               num_heads=1, dropout=0.0, norm_groups=32, num_classes=None,
               out_channels=None):
    super().__init__()
    levels = len(channel_multipliers)
    height, width = image_size
    if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
      raise ValueError(f'{levels} U-Net levels halve the {height}x{width} input '
                       f'{levels - 1} times, which needs sides divisible by 2^(levels - 1)')
    temb_dim = 4 * channels
    self.channels, self.num_classes = channels, num_classes
    self.temb_dense0 = nn.Linear(channels, temb_dim)
    self.temb_dense1 = nn.Linear(temb_dim, temb_dim)
    if num_classes is not None:
      self.label_embedding = nn.Embedding(num_classes + 1, temb_dim)
    block = lambda c_in, c_out: ResBlock(c_in, c_out, temb_dim, dropout, norm_groups)  # noqa: E731
    attention = lambda c: AttentionBlock(c, num_heads, norm_groups)  # noqa: E731

    # The Flax model's order of layers, by name, with where each output goes.
    self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
    self.down, skips, c, side = [], [channels], channels, height
    for level, mult in enumerate(channel_multipliers):
      for i in range(num_res_blocks):
        self._add(f'down{level}_block{i}', block(c, channels * mult), self.down)
        c = channels * mult
        if side in attention_resolutions:
          self._add(f'down{level}_attention{i}', attention(c), self.down)
        self.down.append('skip')
        skips.append(c)
      if level != levels - 1:
        self._add(f'down{level}_downsample', Downsample(c), self.down)
        self.down.append('skip')
        skips.append(c)
        side //= 2
    self.middle_block0 = block(c, c)
    self.middle_attention = attention(c)
    self.middle_block1 = block(c, c)
    self.up = []
    for level in reversed(range(levels)):
      for i in range(num_res_blocks + 1):
        self.up.append('concat')
        c_in, c = c + skips.pop(), channels * channel_multipliers[level]
        self._add(f'up{level}_block{i}', block(c_in, c), self.up)
        if side in attention_resolutions:
          self._add(f'up{level}_attention{i}', attention(c), self.up)
      if level != 0:
        self.up.append('upsample')
        self._add(f'up{level}_upsample', nn.Conv2d(c, c, 3, padding=1), self.up)
        side *= 2
    self.norm_out = _group_norm(c, norm_groups)
    self.conv_out = _zero_conv(c, out_channels or in_channels)

  def _add(self, name: str, module: nn.Module, path: list[str]) -> None:
    self.add_module(name, module)
    path.append(name)

  def _run(self, name: str, h, temb):
    module = getattr(self, name)
    return module(h, temb) if isinstance(module, ResBlock) else module(h)

  def forward(self, x, t, labels=None):
    temb = self.temb_dense0(timestep_embedding(t, self.channels))
    temb = self.temb_dense1(F.silu(temb))
    if self.num_classes is not None:
      if labels is None:
        raise ValueError('a model with num_classes needs labels (num_classes: the null class)')
      temb = temb + self.label_embedding(labels)
    elif labels is not None:
      raise ValueError('labels given to a model without num_classes')
    h = self.conv_in(x)
    skips = [h]
    for name in self.down:
      if name == 'skip':
        skips.append(h)
      else:
        h = self._run(name, h, temb)
    h = self.middle_block1(self.middle_attention(self.middle_block0(h, temb)), temb)
    for name in self.up:
      if name == 'concat':
        h = torch.cat([h, skips.pop()], dim=1)
      elif name == 'upsample':
        h = F.interpolate(h, scale_factor=2, mode='nearest')
      else:
        h = self._run(name, h, temb)
    return self.conv_out(F.silu(self.norm_out(h)))


# The Transformer captioner. Submodules carry the Flax modules' names (`block1.
# cross_attention.query`), so parameter counts compare layer by layer.

class CaptionerCNN(nn.Module):
  """The headless `models/cnn.py` as the captioner's encoder: forward gives the last
  stage's map, the grid the decoder attends over.

  Its dense layers are parameters that nothing reads: the Transformer decoder reads the
  grid, not the pooled features, so XLA drops their computation from the JAX step and
  their gradients are zeros (which `make_captioning_step` gives them too, so that
  AdamW updates them as optax does).
  """

  def __init__(self, in_channels: int, image_size: tuple[int, int], *, features=(32, 64),
               kernel_size=3, convs_per_stage=1, pooling='max', dense_features=(128,),
               use_batchnorm=False, dropout_rate=0.0):
    super().__init__()
    del dropout_rate  # Only after the dense layers, which do not run.
    layers, channels, height, width = _cnn_stages(
        in_channels, image_size, features, kernel_size, convs_per_stage, pooling,
        use_batchnorm)
    self.stages = nn.Sequential(*layers)
    self.channels, self.grid_size = channels, (height, width)
    dense, size = [], channels * height * width
    for width_out in dense_features:
      dense.append(nn.Linear(size, width_out))
      size = width_out
    self.dense = nn.ModuleList(dense)

  def forward(self, x):
    return self.stages(x)


class CaptionAttention(nn.Module):
  """`models/captioner.py: _Attention`: query, key, value and out projections, each with
  a bias; also the twin of Flax's `MultiHeadDotProductAttention` (the same four
  projections, whose [width, heads, d] kernels hold width * width weights)."""

  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

  def forward(self, x, keys_values, causal: bool = False):
    heads = lambda y: y.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(  # softmax(q k^T / sqrt(d)) v
        heads(self.query(x)), heads(self.key(keys_values)), heads(self.value(keys_values)),
        is_causal=causal)
    return self.out(out.transpose(1, 2).flatten(2))


def _layer_norm(width: int) -> nn.LayerNorm:
  # Flax's LayerNorm epsilon is 1e-6 (PyTorch's default 1e-5).
  return nn.LayerNorm(width, eps=1e-6)


class DecoderBlock(nn.Module):
  """`models/captioner.py: _DecoderBlock`: pre-LN causal self-attention, cross-attention
  over the grid and `models/transformer.py: MlpBlock` (exact GELU), each residual after
  dropout."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dropout_rate: float):
    super().__init__()
    self.norm_self = _layer_norm(width)
    self.self_attention = CaptionAttention(width, num_heads)
    self.norm_cross = _layer_norm(width)
    self.cross_attention = CaptionAttention(width, num_heads)
    self.norm_mlp = _layer_norm(width)
    self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(dropout_rate),
                             nn.Linear(mlp_dim, width), nn.Dropout(dropout_rate))
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x, memory):
    h = self.norm_self(x)
    x = x + self.dropout(self.self_attention(h, h, causal=True))
    x = x + self.dropout(self.cross_attention(self.norm_cross(x), memory))
    return x + self.mlp(self.norm_mlp(x))


class TransformerCaptioner(nn.Module):
  """`models/captioner.py: Model` with `decoder='transformer'` and a 'cnn' encoder:
  forward(images, tokens) -> logits [B, T, V] of the word after each token."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], vocab_size: int, *,
               encoder: dict[str, Any], decoder='transformer', max_len=20, width=256,
               num_layers=2, num_heads=4, mlp_dim=None, dropout_rate=0.1, grid_key=None,
               **unused):
    super().__init__()
    del unused  # The RNN decoders' cell.
    encoder = dict(encoder)
    if decoder != 'transformer' or encoder.get('name') != 'cnn' or grid_key is not None:
      raise ValueError(
          "the PyTorch captioner twin is the 'transformer' decoder on a 'cnn' encoder's "
          f"last stage; got decoder {decoder!r}, encoder {encoder.get('name')!r}, "
          f'grid_key {grid_key!r}')
    if width % num_heads:
      raise ValueError(f'width {width} is not a multiple of num_heads {num_heads}')
    encoder.pop('name')
    encoder.pop('cpu_kernels', None)
    self.image_encoder = CaptionerCNN(in_channels, image_size, **encoder)
    self.project = nn.Linear(self.image_encoder.channels, width)
    self.register_buffer('grid_position', torch.from_numpy(np.array(
        transformer.sincos_2d(*self.image_encoder.grid_size, width)[0], np.float32)),
                         persistent=False)
    self.embed = nn.Embedding(vocab_size, width)
    nn.init.normal_(self.embed.weight, std=width ** -0.5)  # Flax's default_embed_init.
    self.position_embedding = nn.Parameter(0.02 * torch.randn(max_len, width))
    self.blocks = [f'block{i + 1}' for i in range(num_layers)]
    for name in self.blocks:
      self.add_module(name, DecoderBlock(width, num_heads, mlp_dim or 4 * width,
                                         dropout_rate))
    self.final_norm = _layer_norm(width)
    self.logits = nn.Linear(width, vocab_size)

  def encode(self, images):
    """The projected grid [B, N, width] with its 2-D position embedding."""
    # [B, C, H, W] -> [B, H*W, C]: a view of a channels-last map, as Flax's NHWC.
    grid = self.image_encoder(images).permute(0, 2, 3, 1).flatten(1, 2)
    return self.project(grid) + self.grid_position

  def forward(self, images, tokens):
    memory = self.encode(images)
    x = self.embed(tokens) + self.position_embedding[:tokens.shape[1]]
    for name in self.blocks:
      x = getattr(self, name)(x, memory)
    return self.logits(self.final_norm(x))


# The Vision Transformer and CLIP. Submodules carry the Flax modules' names
# (`Transformer.encoderblock_0.MultiHeadDotProductAttention_0.query`), so parameter
# counts compare layer by layer.

class EncoderBlock(nn.Module):
  """`models/transformer.py: EncoderBlock`: x + MHA(LN(x)), then x + MLP(LN(x)), exact
  GELU, dropout on each residual branch."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dropout_rate: float,
               attention_dropout_rate: float):
    super().__init__()
    if attention_dropout_rate:
      # Dropout on the attention weights needs them materialised, which is another
      # computation than the fused attention timed here.
      raise ValueError('the PyTorch encoder twin has no attention dropout; got '
                       f'attention_dropout_rate {attention_dropout_rate}')
    self.LayerNorm_0 = _layer_norm(width)
    self.MultiHeadDotProductAttention_0 = CaptionAttention(width, num_heads)
    self.LayerNorm_1 = _layer_norm(width)
    self.MlpBlock_0 = nn.Sequential(
        nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(dropout_rate),
        nn.Linear(mlp_dim, width), nn.Dropout(dropout_rate))
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x, causal: bool = False):
    h = self.LayerNorm_0(x)
    x = x + self.dropout(self.MultiHeadDotProductAttention_0(h, h, causal=causal))
    return x + self.MlpBlock_0(self.LayerNorm_1(x))


class Encoder(nn.Module):
  """`models/transformer.py: Encoder`: blocks 'encoderblock_{i}', then 'encoder_norm'."""

  def __init__(self, width: int, num_layers: int, num_heads: int, mlp_dim: int,
               dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0):
    super().__init__()
    self.blocks = [f'encoderblock_{i}' for i in range(num_layers)]
    for name in self.blocks:
      self.add_module(name, EncoderBlock(width, num_heads, mlp_dim, dropout_rate,
                                         attention_dropout_rate))
    self.encoder_norm = _layer_norm(width)

  def forward(self, x, causal: bool = False):
    for name in self.blocks:
      x = getattr(self, name)(x, causal)
    return self.encoder_norm(x)


class ViT(nn.Module):
  """`models/vit.py: Model`: patch embedding, class token and position embeddings,
  optional pre-norm, encoder, 'cls' or 'gap' pooling, optional tanh pre-logits, head;
  forward(images) -> logits, or the pooled features of a headless (num_classes None)
  model."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int | None,
               **kwargs):
    super().__init__()
    kwargs.pop('sow_attention_weights', None)  # Figures only.
    flax_model = vit.Model(**kwargs, num_classes=num_classes)
    sizes = flax_model.sizes()  # The Flax model's own reading of variant and overrides.
    if flax_model.pool not in vit.POOLS or flax_model.posemb not in vit.POSEMBS:
      raise ValueError(f'ViT pool must be one of {vit.POOLS} and posemb one of '
                       f'{vit.POSEMBS}, got {flax_model.pool!r} and {flax_model.posemb!r}')
    patch, width = sizes['patch_size'], sizes['width']
    height, image_width = image_size
    if height % patch[0] or image_width % patch[1]:
      raise ValueError(f'ViT image size {height}x{image_width} is not a multiple of the '
                       f'patch size {patch[0]}x{patch[1]}')
    grid = (height // patch[0], image_width // patch[1])
    self.class_token = flax_model.pool == 'cls'
    self.learned_posemb = flax_model.posemb == 'learn'
    self.embedding = nn.Conv2d(in_channels, width, patch, stride=patch,
                               bias=flax_model.patch_bias)
    if self.class_token:
      self.cls = nn.Parameter(torch.zeros(1, 1, width))
    if self.learned_posemb:
      tokens = grid[0] * grid[1] + self.class_token
      self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, tokens, width))
    else:
      self.register_buffer('pos_embedding', torch.from_numpy(np.array(
          transformer.sincos_2d(*grid, width), np.float32)), persistent=False)
    self.pre_norm = _layer_norm(width) if flax_model.pre_norm else None
    self.dropout = nn.Dropout(flax_model.dropout_rate)
    self.Transformer = Encoder(width, sizes['depth'], sizes['num_heads'], sizes['mlp_dim'],
                               flax_model.dropout_rate, flax_model.attention_dropout_rate)
    features = flax_model.representation_size
    self.pre_logits = nn.Linear(width, features) if features is not None else None
    self.features = features if features is not None else width
    self.head = nn.Linear(self.features, num_classes) if num_classes is not None else None

  def forward(self, x):
    # [B, D, h, w] -> [B, h*w, D]: a view of a channels-last map, as Flax's NHWC.
    x = self.embedding(x).permute(0, 2, 3, 1).flatten(1, 2)
    with_class_token = lambda x: torch.cat(  # noqa: E731
        [self.cls.expand(x.shape[0], -1, -1), x], dim=1) if self.class_token else x
    if self.learned_posemb:
      x = with_class_token(x) + self.pos_embedding
    else:
      # The fixed embeddings cover the patches only; the class token gets none.
      x = with_class_token(x + self.pos_embedding)
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    x = self.Transformer(self.dropout(x))
    x = x[:, 0] if self.class_token else x.mean(dim=1)
    if self.pre_logits is not None:
      x = torch.tanh(self.pre_logits(x))
    return self.head(x) if self.head is not None else x


def end_of_text_positions(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
  """`models/clip.py: end_of_text_positions`: [B] positions of each row's first eos,
  or of its last non-padding token when it has none."""
  is_eos = tokens == eos_id
  last_real = ((tokens != pad_id).sum(-1) - 1).clamp(min=0)
  return torch.where(is_eos.any(-1), is_eos.int().argmax(-1), last_real)


class TextTransformer(nn.Module):
  """`models/clip.py: TextTransformer`: token embedding, learned positions, the causal
  encoder, read at the end-of-text token: forward(tokens [B, L]) -> [B, width]."""

  def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int,
               mlp_dim: int | None, max_len: int, eos_id: int, pad_id: int):
    super().__init__()
    if width % num_heads:
      raise ValueError(f'text width {width} is not a multiple of text_heads {num_heads}')
    self.max_len, self.eos_id, self.pad_id = max_len, eos_id, pad_id
    self.token_embedding = nn.Embedding(vocab_size, width)
    nn.init.normal_(self.token_embedding.weight, std=0.02)
    self.positions = nn.Parameter(0.01 * torch.randn(max_len, width))
    self.Transformer = Encoder(width, depth, num_heads, mlp_dim or 4 * width)

  def forward(self, tokens):
    if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
      raise ValueError(f'CLIP text tower: tokens must be [batch, length <= {self.max_len}], '
                       f'got shape {tuple(tokens.shape)}')
    x = self.token_embedding(tokens) + self.positions[:tokens.shape[1]]
    x = self.Transformer(x, causal=True)
    ends = end_of_text_positions(tokens, self.eos_id, self.pad_id)
    return x[torch.arange(x.shape[0]), ends]


class CLIP(nn.Module):
  """`models/clip.py: Model` with a ViT image tower: forward(images, tokens) ->
  (image_embeddings, text_embeddings, logit_scale), the embeddings L2-normalised."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], vocab_size: int, *,
               image: dict[str, Any], max_len=77, text_width=512, text_depth=12,
               text_heads=8, text_mlp_dim=None, embed_dim=512,
               logit_scale_init=clip.LOGIT_SCALE_INIT, eos_id=text.Vocabulary.eos_id,
               pad_id=text.Vocabulary.pad_id):
    super().__init__()
    image = dict(image)
    if image.get('name') != 'vit':
      raise ValueError("the PyTorch CLIP twin has a 'vit' image tower; got "
                       f"{image.get('name')!r}")
    image_kwargs = {k: v for k, v in image.items()
                    if k not in ('name', 'dtype', 'cpu_kernels', 'num_classes')}
    self.image_encoder = ViT(in_channels, image_size, None, **image_kwargs)
    self.image_projection = nn.Linear(self.image_encoder.features, embed_dim, bias=False)
    self.text_encoder = TextTransformer(vocab_size, text_width, text_depth, text_heads,
                                        text_mlp_dim, max_len, eos_id, pad_id)
    self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
    self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

  def forward(self, images, tokens):
    image_embeddings = F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)
    text_embeddings = F.normalize(self.text_projection(self.text_encoder(tokens)), dim=-1)
    return image_embeddings, text_embeddings, self.logit_scale


def build_clip(model_kwargs: dict[str, Any], input_shape, vocab_size: int) -> CLIP:
  """The twin of `vision_jax.models.clip.Model(**model_kwargs, vocab_size=...)`."""
  height, width, channels = input_shape
  kwargs = {k: v for k, v in model_kwargs.items() if k != 'vocab_size'}
  return CLIP(channels, (height, width), vocab_size, **kwargs)


def build_captioner(model_kwargs: dict[str, Any], input_shape,
                    vocab_size: int) -> TransformerCaptioner:
  """The twin of `vision_jax.models.captioner.Model(**model_kwargs, vocab_size=...)`."""
  height, width, channels = input_shape
  return TransformerCaptioner(channels, (height, width), vocab_size, **model_kwargs)


def build_model(name: str, kwargs: dict[str, Any], input_shape,
                num_classes: int | None) -> nn.Module:
  """The twin of `vision_jax.models.<name>.Model(**kwargs)` for NHWC `input_shape`.

  For 'unet', `num_classes` is the label count of a conditional model, None for none.
  """
  height, width, channels = input_shape
  if name == 'unet':
    return UNet(channels, (height, width), num_classes=num_classes, **kwargs)
  if name == 'cnn':
    return CNN(channels, (height, width), num_classes, **kwargs)
  if name == 'cifar_resnet':
    return CifarResNet(channels, num_classes, **kwargs)
  if name == 'resnet':
    return ResNet(channels, num_classes, **kwargs)
  if name == 'vit':
    return ViT(channels, (height, width), num_classes, **kwargs)
  raise ValueError(
      f'no PyTorch twin of model {name!r} (have cnn, cifar_resnet, resnet, unet, vit)')


def _param_groups(model: nn.Module, weight_decay: float, weights_only: bool):
  """Weight decay on kernels only (ndim > 1) when `weights_only`, as in `optim.py`."""
  if not weights_only:
    return [{'params': list(model.parameters()), 'weight_decay': weight_decay}]
  params = list(model.parameters())
  return [{'params': [p for p in params if p.ndim > 1], 'weight_decay': weight_decay},
          {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}]


def make_optimizer(model: nn.Module, opt_config, lr: float) -> torch.optim.Optimizer:
  """`optim.make_optimizer`'s sgd/momentum, adam and adamw, at a constant `lr`."""
  groups = _param_groups(model, opt_config.get('weight_decay', 0.0),
                         opt_config.get('decay_weights_only', True))
  name = opt_config.name
  if name in ('sgd', 'momentum'):
    return torch.optim.SGD(groups, lr=lr, momentum=opt_config.get('momentum') or 0.0,
                           nesterov=opt_config.get('nesterov', False))
  betas = (opt_config.get('b1', 0.9), opt_config.get('b2', 0.999))
  if name == 'adam':
    return torch.optim.Adam(groups, lr=lr, betas=betas)
  if name == 'adamw':
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
  raise ValueError(f'no PyTorch optimizer for {name!r}')


def _model_kwargs(model_config) -> dict[str, Any]:
  return {k: v for k, v in model_config.items() if k not in ('name', 'dtype', 'cpu_kernels')}


def _gradient_clipper(model: nn.Module, opt_config) -> Callable[[], None]:
  """Clips the gradients to `grad_clip_norm` in global norm, as `optim.py`; a no-op
  when the config sets none."""
  clip_norm = opt_config.get('grad_clip_norm')
  params = list(model.parameters())

  def clip_gradients():
    if clip_norm:
      torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)

  return clip_gradients


def _classification_step(config, input_shape, num_classes: int, batch_size: int,
                         memory_format) -> Callable[[], torch.Tensor]:
  """Cross-entropy on the classifier twin (`methods/classification.py`), with the
  config's `classification.label_smoothing` and gradient clipping; returns the loss."""
  model = build_model(config.model.name, _model_kwargs(config.model), input_shape,
                      num_classes)
  model = model.to(memory_format=memory_format).train()
  optimizer = make_optimizer(model, config.optimizer, config.lr)
  clip_gradients = _gradient_clipper(model, config.optimizer)
  height, width, channels = input_shape
  images = torch.randn(batch_size, channels, height, width).to(memory_format=memory_format)
  labels = torch.randint(0, num_classes, (batch_size,))
  options = dict(config.get('classification') or {})
  smoothing = options.get('label_smoothing', 0.0)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels, label_smoothing=smoothing)
    loss.backward()
    clip_gradients()
    optimizer.step()
    return loss.detach()

  return step


def _diffusion_step(config, input_shape, num_classes: int, batch_size: int,
                    memory_format) -> Callable[[], None]:
  """`methods/diffusion.py: Method.loss` (L_simple) and its optimizer with the EMA stage.

  Each step draws t ~ U{0..T-1}, eps ~ N(0, I) and, conditional, the label dropout to
  the null class; the gradients are clipped to `grad_clip_norm` if set and the EMA of
  the parameters is updated with `optim.params_ema`'s decay, min(decay, (1+n)/(10+n)).
  The step returns its loss.
  """
  options = {**diffusion.Method.OPTIONS, **dict(config.get('diffusion') or {})}
  conditional = bool(options['conditional'])
  model = build_model(config.model.name, _model_kwargs(config.model), input_shape,
                      num_classes if conditional else None)
  model = model.to(memory_format=memory_format).train()
  optimizer = make_optimizer(model, config.optimizer, config.lr)
  params = list(model.parameters())
  clip_norm = config.optimizer.get('grad_clip_norm')
  ema_decay = options['ema_decay'] or 0.0
  ema = [p.detach().clone() for p in params] if ema_decay else None
  count = [0]
  schedule = diffusion.Schedule.make(options['beta_schedule'], int(options['num_timesteps']))
  # Float32 tables, as the jitted loss reads them (`diffusion._const`).
  alphas_cumprod = torch.tensor(schedule.alphas_cumprod, dtype=torch.float64).float()
  label_dropout = options['label_dropout'] if conditional else 0.0

  height, width, channels = input_shape
  images = torch.randn(batch_size, channels, height, width).to(memory_format=memory_format)
  labels = torch.randint(0, num_classes, (batch_size,))

  def step():
    optimizer.zero_grad(set_to_none=True)
    x0 = 2 * images - 1
    t = torch.randint(0, schedule.num_timesteps, (batch_size,))
    eps = torch.randn_like(x0)
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    y = None
    if conditional:
      y = labels
      if label_dropout:
        y = torch.where(torch.rand(batch_size) < label_dropout, num_classes, labels)
    loss = F.mse_loss(model(x_t, t, y), eps)
    loss.backward()
    if clip_norm:
      torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
    optimizer.step()
    if ema is not None:
      count[0] += 1
      rate = min(ema_decay, (1 + count[0]) / (10 + count[0]))
      with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1 - rate)  # ema = rate ema + (1 - rate) params
    return loss.detach()

  return step


_STEPS = {'classification': _classification_step, 'diffusion': _diffusion_step}


def _setup(config, channels_last: bool):
  """One thread per core and the config's seed; the images' memory format."""
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(config.seed)
  return torch.channels_last if channels_last else torch.contiguous_format


def make_train_step(config, input_shape, num_classes: int, batch_size: int,
                    channels_last: bool = True) -> Callable[[], torch.Tensor]:
  """A closure running one eager training step of `config.method`, a method trained on
  images and labels, on a fixed random batch; the step returns its loss."""
  method = config.get('method', 'classification')
  if method not in _STEPS:
    hint = {'captioning': '; its twin is make_captioning_step',
            'clip': '; its twin is make_clip_step'}.get(method, '')
    raise ValueError(f'no PyTorch twin of the training step of method {method!r} '
                     f'(have {", ".join(_STEPS)}){hint}')
  memory_format = _setup(config, channels_last)
  return _STEPS[method](config, input_shape, num_classes, batch_size, memory_format)


def random_tokens(batch_size: int, max_len: int, vocab_size: int) -> torch.Tensor:
  """Token rows as `methods/captioning.py: Method.synthetic_batch` makes them: bos, 1 to
  max_len - 2 random words, eos, padding."""
  vocab = text.Vocabulary
  words = torch.randint(len(text.SPECIAL_TOKENS), vocab_size, (batch_size, max_len))
  eos_at = torch.randint(2, max_len, (batch_size, 1))
  position = torch.arange(max_len)[None]
  tokens = torch.where(position < eos_at, words, vocab.pad_id)
  tokens = torch.where(position == eos_at, vocab.eos_id, tokens)
  tokens[:, 0] = vocab.bos_id
  return tokens


def make_captioning_step(config, input_shape, vocab_size: int, batch_size: int,
                         channels_last: bool = True) -> Callable[[], torch.Tensor]:
  """`methods/captioning.py: Method.loss` on the Transformer captioner twin, one eager
  step of `config.optimizer` per call on a fixed random batch; the step returns its loss.

  The loss is the cross-entropy of each next word given the words before it, averaged
  over the non-padding targets (teacher forcing: inputs tokens[:, :-1], targets
  tokens[:, 1:]).
  """
  if config.get('method') != 'captioning':
    raise ValueError(f"make_captioning_step is for method 'captioning', not "
                     f'{config.get("method")!r}')
  memory_format = _setup(config, channels_last)
  model = build_captioner(_model_kwargs(config.model), input_shape, vocab_size)
  model = model.to(memory_format=memory_format).train()
  optimizer = make_optimizer(model, config.optimizer, config.lr)
  unread = list(model.image_encoder.dense.parameters())
  zeros = [torch.zeros_like(p) for p in unread]
  height, width, channels = input_shape
  images = torch.randn(batch_size, channels, height, width).to(memory_format=memory_format)
  tokens = random_tokens(batch_size, config.model.max_len, vocab_size)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(images, inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                           ignore_index=text.Vocabulary.pad_id)
    loss.backward()
    for p, zero in zip(unread, zeros):
      p.grad = zero
    optimizer.step()
    return loss.detach()

  return step


def clip_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
  """`losses.clip_loss`: the symmetric cross-entropy of min(exp(t), 100) I_e T_e^T over
  the L2-normalised embeddings, the diagonal being the target."""
  images = F.normalize(image_embeddings, dim=-1)
  texts = F.normalize(text_embeddings, dim=-1)
  # Clipping the scale, not the parameter: above ln(100) its gradient is zero.
  scale = torch.clamp(logit_scale.exp(), max=losses.MAX_LOGIT_SCALE)
  logits = scale * images @ texts.T
  targets = torch.arange(logits.shape[0])
  return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def make_clip_step(config, input_shape, vocab_size: int, batch_size: int,
                   channels_last: bool = True) -> Callable[[], torch.Tensor]:
  """`methods/clip.py: Method.loss` on the CLIP twin, one eager step of
  `config.optimizer` per call on a fixed random batch of images and token rows (as
  `Method.synthetic_batch` makes them); the step returns its loss."""
  if config.get('method') != 'clip':
    raise ValueError(f"make_clip_step is for method 'clip', not {config.get('method')!r}")
  memory_format = _setup(config, channels_last)
  model = build_clip(_model_kwargs(config.model), input_shape, vocab_size)
  model = model.to(memory_format=memory_format).train()
  optimizer = make_optimizer(model, config.optimizer, config.lr)
  clip_gradients = _gradient_clipper(model, config.optimizer)
  height, width, channels = input_shape
  images = torch.randn(batch_size, channels, height, width).to(memory_format=memory_format)
  tokens = random_tokens(batch_size, config.model.max_len, vocab_size)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = clip_loss(*model(images, tokens))
    loss.backward()
    clip_gradients()
    optimizer.step()
    return loss.detach()

  return step
