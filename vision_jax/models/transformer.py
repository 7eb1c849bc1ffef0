"""Transformer blocks shared by the Vision Transformer and the sequence models built on it.

Pre-LayerNorm encoder blocks (Vaswani et al., 2017, with the normalisation moved in front
of each residual branch as in ViT, Dosovitskiy et al., 2021), with big_vision's
`models/vit.py` parameter names (`encoderblock_{i}/MultiHeadDotProductAttention_0/query`,
...), and fixed sine-cosine position embeddings.

Attention weights can be read for figures: build a block (or `Encoder`) with
`sow_attention_weights=True` and apply it with `mutable=['intermediates']`; each
attention layer then leaves its weights [B, heads, queries, keys] under
`intermediates/.../MultiHeadDotProductAttention_0/attention_weights`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The initialisers of the ViT reference code: Xavier-uniform kernels and near-zero biases.
kernel_init = nn.initializers.xavier_uniform()
bias_init = nn.initializers.normal(stddev=1e-6)


def _needs_fp32_softmax(dtype: Any) -> bool:
  # Half-precision softmax over long rows loses the small weights; float64 (the
  # finite-difference tests) must not be rounded down to float32 either.
  return jnp.finfo(dtype).bits < 32


ACTIVATIONS = ('gelu', 'quick_gelu')


def quick_gelu(x: jax.Array) -> jax.Array:
  """x * sigmoid(1.702 x): the GELU approximation of OpenAI's CLIP checkpoints."""
  return x * nn.sigmoid(1.702 * x)


class MlpBlock(nn.Module):
  """Dense, GELU, dropout, Dense back to the input width, dropout.

  Attributes:
    mlp_dim: width of the hidden layer (4x the model width in ViT).
    dropout_rate: dropout after the hidden layer and after the output.
    dtype: compute dtype; parameters stay float32.
    activation: 'gelu' (the exact GELU) or 'quick_gelu' (OpenAI CLIP's weights).
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  activation: str = 'gelu'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=kernel_init,
                 bias_init=bias_init)(x)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'MLP activation must be one of {ACTIVATIONS}, got {self.activation!r}.')
    # The exact GELU, as in the paper and in torchvision's and timm's ViTs, so that
    # their weights give their outputs.
    x = nn.gelu(x, approximate=False) if self.activation == 'gelu' else quick_gelu(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(width, dtype=self.dtype, kernel_init=kernel_init, bias_init=bias_init)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """x + MHA(LN(x)), then x + MLP(LN(x)): one pre-LayerNorm Transformer encoder block.

  `__call__(x, mask=None, *, train=False)` takes tokens [B, L, D] and an optional
  attention mask broadcastable to [B, heads, L, L] (True where a query may attend to a
  key, e.g. `nn.make_causal_mask` for a decoder), and returns [B, L, D].

  Attributes:
    num_heads: attention heads; they split the width D between them.
    mlp_dim: hidden width of the MLP.
    dropout_rate: dropout on the output of each residual branch (and inside the MLP).
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype; parameters stay float32.
    sow_attention_weights: store the attention weights in the 'intermediates'
      collection (when it is mutable), for figures.
    layer_norm_epsilon: the LayerNorms' epsilon (1e-6 as in ViT; 1e-5 in CLIP).
    mlp_activation: the MLP's activation, 'gelu' or 'quick_gelu'.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  sow_attention_weights: bool = False
  layer_norm_epsilon: float = 1e-6
  mlp_activation: str = 'gelu'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    y = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=kernel_init,
        dropout_rate=self.attention_dropout_rate,
        force_fp32_for_softmax=_needs_fp32_softmax(self.dtype),
    )(y, y, mask=mask, deterministic=not train, sow_weights=self.sow_attention_weights)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype)(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.mlp_activation)(
        y, train=train)
    return x + y


class Encoder(nn.Module):
  """A stack of `EncoderBlock`s, named 'encoderblock_{i}', then a LayerNorm 'encoder_norm'.

  The final LayerNorm is needed because pre-LN blocks leave their residual stream
  unnormalised. `__call__(x, mask=None, *, train=False)` as for `EncoderBlock`.

  Attributes:
    num_layers: number of blocks.
    num_heads: attention heads of every block.
    mlp_dim: hidden width of every block's MLP.
    dropout_rate: dropout on the residual branches.
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype; parameters stay float32.
    sow_attention_weights: store every block's attention weights in 'intermediates'.
    layer_norm_epsilon: every LayerNorm's epsilon.
    mlp_activation: every MLP's activation, 'gelu' or 'quick_gelu'.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  sow_attention_weights: bool = False
  layer_norm_epsilon: float = 1e-6
  mlp_activation: str = 'gelu'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    for i in range(self.num_layers):
      x = EncoderBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
          sow_attention_weights=self.sow_attention_weights,
          layer_norm_epsilon=self.layer_norm_epsilon, mlp_activation=self.mlp_activation,
          name=f'encoderblock_{i}')(x, mask, train=train)
    return nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                        name='encoder_norm')(x)


def _frequencies(count: int, temperature: float) -> jax.Array:
  """count frequencies from 1 down to 1/temperature, geometrically spaced."""
  return 1.0 / temperature ** (jnp.arange(count) / max(count - 1, 1))


def sincos_1d(length: int, width: int, temperature: float = 10_000.,
              dtype: Any = jnp.float32) -> jax.Array:
  """Sine-cosine embeddings of positions 0..length-1, [1, length, width].

  Channels [0, width/2) are sin(p w_k) and [width/2, width) cos(p w_k), with the
  frequencies w_k of `sincos_2d`.
  """
  if width % 2:
    raise ValueError(f'sincos_1d: the width must be even, got {width}.')
  angles = jnp.arange(length)[:, None] * _frequencies(width // 2, temperature)[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)[None].astype(dtype)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.,
              dtype: Any = jnp.float32) -> jax.Array:
  """big_vision's `posemb_sincos_2d`: embeddings of an h x w grid, [1, h * w, width].

  Positions run row by row (row i, column j is token i * w + j). A quarter of the
  channels each holds sin and cos of the column, then sin and cos of the row, at
  width/4 frequencies from 1 down to 1/temperature.
  """
  if width % 4:
    raise ValueError(f'sincos_2d: the width must be a multiple of 4, got {width}.')
  rows, cols = jnp.mgrid[:h, :w]
  omega = _frequencies(width // 4, temperature)
  y = rows.reshape(-1)[:, None] * omega[None]
  x = cols.reshape(-1)[:, None] * omega[None]
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return pe[None].astype(dtype)
