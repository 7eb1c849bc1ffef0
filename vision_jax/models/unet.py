r"""The epsilon-prediction U-Net of DDPM (Ho et al. 2020, Appendix B), with conditioning.

The network eps_theta(x_t, t, c) of `vision_jax.methods.diffusion`, as in Ho et al.'s
`diffusion_tf/models/unet.py` (itself PixelCNN++'s U-Net with Wide-ResNet blocks):

- time: the sinusoidal embedding of the integer timestep t (Transformer positional
  encoding, `channels` wide), then Dense(4 channels), SiLU, Dense(4 channels): `temb`;
- conditioning: a class label's learnt embedding (a table of `num_classes + 1` rows; the
  last row, id `num_classes`, is the null class of classifier-free guidance) and/or an
  external embedding vector `cond` [N, D] (through a Dense to the width of `temb`), added
  to `temb`. `cond` is how another conditioner (a text encoder) plugs in;
- text: with `context` [N, L, Dc] (a text encoder's token features) and `context_mask`
  [N, L] (True at real tokens), every self-attention is followed by a cross-attention
  from the map's positions to the tokens (as in Rombach et al. 2022's and Saharia et
  al. 2022's U-Nets), in the same zero-initialised residual form;
- a 3x3 input convolution, then `len(channel_multipliers)` levels. Level i has
  `num_res_blocks` residual blocks of `channels * channel_multipliers[i]` channels, each
  followed by self-attention where the map's side is in `attention_resolutions`, and
  every level but the last ends in a stride-2 3x3 convolution (downsampling);
- a middle of residual block, self-attention, residual block;
- the up path mirrors it: per level `num_res_blocks + 1` residual blocks, each taking
  the concatenation with the matching skip (every output of the down path, the input
  convolution's included), attention as on the way down, and nearest-neighbour 2x
  upsampling with a 3x3 convolution between levels;
- GroupNorm, SiLU, a 3x3 convolution to the image's channels, zero-initialised (as are
  the last convolution of each residual block and each attention's output projection, so
  every block starts as the identity).

A residual block is GroupNorm, SiLU, 3x3 conv; plus Dense(SiLU(temb)) added per channel;
GroupNorm, SiLU, dropout, 3x3 conv; and the input (through a 1x1 projection when the
width changes) added back. Self-attention is single-head by default over the H x W
positions, softmax(q k^T / sqrt(d)) v, in the residual form x + proj(attention).

Sizes: downsampling halves an even side and an odd side is an error, so 28x28 MNIST
takes 3 levels (28 -> 14 -> 7) and 32x32 takes up to 4 (32 -> 16 -> 8 -> 4); nothing is
padded. Ho et al.'s CIFAR-10 model is channels 128, multipliers (1, 2, 2, 2), 2 residual
blocks, attention at 16, dropout 0.1: 35.7M parameters, and this module builds it with
35,746,307. `TINY` is a test variant.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# A variant that compiles in seconds, for tests: 8 -> 4, attention at 4.
TINY = dict(channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """[N] timesteps -> [N, dim] sinusoids: sin(t w_k) then cos(t w_k), w_k geometric.

  Ho et al.'s `get_timestep_embedding`: w_k = max_period^(-k / (dim/2 - 1)) for k <
  dim/2 (so the first frequency is 1 and the last 1/max_period).
  """
  half = dim // 2
  if half < 2 or dim % 2:
    raise ValueError(f'the timestep embedding needs an even width >= 4, got {dim}')
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def num_groups(channels: int, norm_groups: int) -> int:
  """GroupNorm's group count for `channels`: the largest divisor of `channels` that is
  at most `norm_groups` and leaves at least 4 channels per group (32 groups of 4 at Ho
  et al.'s 128 channels).

  A group of one channel would be instance normalisation, which removes any constant
  added per channel, and so the time and label embeddings that the residual blocks add
  just before their second GroupNorm.
  """
  limit = max(1, min(norm_groups, channels // 4))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


class ResBlock(nn.Module):
  """Wide-ResNet block with the time (and conditioning) embedding added in the middle.

  Attributes:
    features: output channels.
    dropout: dropout rate before the second convolution, only when training.
    norm_groups: at most this many GroupNorm groups.
    dtype: compute dtype.
  """
  features: int
  dropout: float = 0.0
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, *, train: bool = False) -> jax.Array:
    h = nn.GroupNorm(num_groups(x.shape[-1], self.norm_groups), dtype=self.dtype,
                     name='norm1')(x)
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, name='conv1')(nn.silu(h))
    h = h + nn.Dense(self.features, dtype=self.dtype, name='temb_proj')(
        nn.silu(temb))[:, None, None, :]
    h = nn.GroupNorm(num_groups(self.features, self.norm_groups), dtype=self.dtype,
                     name='norm2')(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    # Zero-initialised: the block starts as the identity (Ho et al.'s init_scale=0).
    h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                name='conv2')(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype, name='shortcut')(x)  # a 1x1 convolution
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over the positions of a feature map, in residual form.

  Attributes:
    num_heads: attention heads (the channels split evenly among them).
    norm_groups: at most this many GroupNorm groups.
    dtype: compute dtype.
  """
  num_heads: int = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f'{channels} channels do not split into {self.num_heads} heads')
    head_dim = channels // self.num_heads
    h = nn.GroupNorm(num_groups(channels, self.norm_groups), dtype=self.dtype, name='norm')(x)
    qkv = nn.Dense(3 * channels, dtype=self.dtype, name='qkv')(h)
    q, k, v = jnp.split(qkv.reshape(n, height * width, 3, self.num_heads, head_dim), 3, 2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [N, positions, heads, head_dim]
    logits = jnp.einsum('nqhd,nkhd->nhqk', q, k) / math.sqrt(head_dim)
    # The softmax in float32 at least, whatever the compute dtype.
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    out = jnp.einsum('nhqk,nkhd->nqhd', weights.astype(v.dtype), v)
    out = nn.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='proj_out')(out.reshape(n, height, width, channels))
    return x + out


class CrossAttentionBlock(nn.Module):
  """Attention from a feature map's positions (queries) to a sequence of context tokens
  (keys and values), in residual form: x + proj(softmax(q k^T / sqrt(d)) v).

  Attributes:
    num_heads: attention heads (the channels split evenly among them).
    norm_groups: at most this many GroupNorm groups for the map.
    dtype: compute dtype.
  """
  num_heads: int = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f'{channels} channels do not split into {self.num_heads} heads')
    head_dim = channels // self.num_heads
    h = nn.GroupNorm(num_groups(channels, self.norm_groups), dtype=self.dtype, name='norm')(x)
    q = nn.Dense(channels, dtype=self.dtype, name='q')(h).reshape(
        n, height * width, self.num_heads, head_dim)
    context = nn.LayerNorm(dtype=self.dtype, name='context_norm')(context.astype(self.dtype))
    kv = nn.Dense(2 * channels, dtype=self.dtype, name='kv')(context)
    k, v = jnp.split(kv.reshape(n, context.shape[1], 2, self.num_heads, head_dim), 2, 2)
    k, v = k[:, :, 0], v[:, :, 0]  # [N, tokens, heads, head_dim]
    logits = jnp.einsum('nqhd,nkhd->nhqk', q, k) / math.sqrt(head_dim)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logits = jnp.where(context_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits)
    out = jnp.einsum('nhqk,nkhd->nqhd', weights.astype(v.dtype), v)
    out = nn.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='proj_out')(out.reshape(n, height, width, channels))
    return x + out


class Model(nn.Module):
  """eps_theta(x_t, t, labels, cond, context): the DDPM U-Net (see the module docstring).

  `model.apply(variables, x, t, labels, cond=None, context=None, context_mask=None,
  train=False)` with x [N, H, W, C] in about [-1, 1], t int [N] (0-based timesteps),
  labels int [N] in 0..num_classes (the id `num_classes` is the null class) or None,
  cond [N, D] or None, and context [N, L, Dc] with context_mask bool [N, L] (all True
  when omitted) or None. Returns the predicted noise [N, H, W, C], float32.

  Attributes:
    channels: width of the first level (Ho et al.: 128); `temb` is 4 times as wide.
    channel_multipliers: each level's width as a multiple of `channels`.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: the map sides (e.g. 16, or 7 at 28x28) with self-attention.
    num_heads: heads of each self-attention.
    dropout: dropout rate in the residual blocks, only when training (needs
      `rngs={'dropout': key}`).
    norm_groups: at most this many GroupNorm groups (32 in Ho et al.); narrow layers
      get fewer, at least 4 channels per group (`num_groups`).
    num_classes: None for no label input; else the label table has `num_classes + 1`
      rows, the last one the null class of classifier-free guidance.
    out_channels: channels of the output; None: those of the input.
    dtype: compute dtype; parameters stay float32 and the output is float32 (or the
      input's float64).
  """
  channels: int = 64
  channel_multipliers: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (7,)
  num_heads: int = 1
  dropout: float = 0.0
  norm_groups: int = 32
  num_classes: int | None = None
  out_channels: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, *,
               cond: jax.Array | None = None, context: jax.Array | None = None,
               context_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    levels = len(self.channel_multipliers)
    if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
      raise ValueError(
          f'{levels} U-Net levels halve the {x.shape[1]}x{x.shape[2]} input {levels - 1} '
          'times, which needs sides divisible by 2^(levels - 1); use fewer '
          'channel_multipliers')
    block = lambda features, name: ResBlock(  # noqa: E731
        features, self.dropout, self.norm_groups, self.dtype, name=name)
    if context is not None and context_mask is None:
      context_mask = jnp.ones(context.shape[:2], bool)

    def attention(name):
      self_attention = AttentionBlock(self.num_heads, self.norm_groups, self.dtype, name=name)
      if context is None:
        return self_attention
      cross_attention = CrossAttentionBlock(self.num_heads, self.norm_groups, self.dtype,
                                            name=name + '_cross')
      return lambda h: cross_attention(self_attention(h), context, context_mask)

    temb_dim = 4 * self.channels
    temb = timestep_embedding(t, self.channels).astype(self.dtype)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name='temb_dense0')(temb)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name='temb_dense1')(nn.silu(temb))
    if self.num_classes is not None:
      if labels is None:
        raise ValueError('a model with num_classes needs labels (num_classes: the null class)')
      temb = temb + nn.Embed(self.num_classes + 1, temb_dim, dtype=self.dtype,
                             name='label_embedding')(labels)
    elif labels is not None:
      raise ValueError('labels given to a model without num_classes')
    if cond is not None:
      temb = temb + nn.Dense(temb_dim, dtype=self.dtype, name='cond_proj')(cond)

    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name='conv_in')(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        h = block(self.channels * mult, f'down{level}_block{i}')(h, temb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(f'down{level}_attention{i}')(h)
        skips.append(h)
      if level != levels - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                    name=f'down{level}_downsample')(h)
        skips.append(h)

    h = block(h.shape[-1], 'middle_block0')(h, temb, train=train)
    h = attention('middle_attention')(h)
    h = block(h.shape[-1], 'middle_block1')(h, temb, train=train)

    for level in reversed(range(levels)):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(self.channels * self.channel_multipliers[level],
                  f'up{level}_block{i}')(h, temb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(f'up{level}_attention{i}')(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest neighbour
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, name=f'up{level}_upsample')(h)

    h = nn.silu(nn.GroupNorm(num_groups(h.shape[-1], self.norm_groups), dtype=self.dtype,
                             name='norm_out')(h))
    out = nn.Conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
                  dtype=self.dtype, name='conv_out')(h)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))
