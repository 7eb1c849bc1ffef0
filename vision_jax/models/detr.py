"""DETR (Carion et al., 2020): a set of box predictions from a Transformer over CNN features.

  features = backbone(images)['stage<k>']            # [B, h, w, C], a headless CNN
  memory   = encoder(project_1x1(features), pos)     # [B, h * w, D], sine positions
  outputs  = decoder(queries, memory, pos)           # [L, B, N, D], every layer's
  logits   = class_head(norm(outputs))               # [L, B, N, K + 1], the last 'no object'
  boxes    = sigmoid(box_mlp(norm(outputs)))         # [L, B, N, 4], normalised cx, cy, w, h

The N object queries are learned position embeddings of a decoder that starts from
zeros; the heads (and the LayerNorm before them) are shared by the decoder layers, so
every layer's output is a full prediction, which the auxiliary losses train
(`vision_jax.methods.detr`). As in DETR the position embeddings enter every attention
layer: added to the queries and keys, not the values (the encoder's sine embeddings
over the grid; in the decoder's cross-attention the object queries' embeddings on the
query side and the grid's on the key side).

Departures from the paper's model, for small images trained from scratch: the blocks
are pre-LayerNorm (`models.transformer`'s layout: LN in front of each residual branch,
a final LN after the encoder; stabler without a pre-trained backbone) with its GELU
MLP, the backbone's BatchNorm is trained rather than frozen, and the sine embeddings
are `transformer.sincos_2d`'s (grid positions, frequencies 1 to 1/10000) rather than
DETR's normalised ones. `TINY` is the variant for tests.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vision_jax import models
from vision_jax.models import transformer

# The `config.model` fields of a tiny variant (milliseconds per step), for tests.
TINY = dict(name='detr', backbone=dict(name='cnn', features=(8, 16), dense_features=()),
            num_queries=6, hidden_dim=16, num_heads=2, num_encoder_layers=1,
            num_decoder_layers=2, mlp_dim=32, dropout_rate=0.0)


def _at_least_float32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class _Attention(nn.Module):
  """Multi-head attention with separate queries, keys and values (positions are added
  to the first two only)."""
  num_heads: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, queries, keys, values, *, train: bool):
    return nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=transformer.kernel_init,
        dropout_rate=self.dropout_rate,
        force_fp32_for_softmax=jnp.finfo(self.dtype).bits < 32,
    )(queries, keys, values, deterministic=not train)


class EncoderLayer(nn.Module):
  """x + Attn(LN(x) + pos, LN(x) + pos, LN(x)), then x + MLP(LN(x)).

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    dropout_rate: dropout on the residual branches and the attention weights.
    dtype: compute dtype; parameters stay float32.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, *, train: bool = False):
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    h = nn.LayerNorm(dtype=self.dtype, name='norm_attention')(x)
    x = x + drop(_Attention(self.num_heads, self.dropout_rate, self.dtype,
                            name='attention')(h + pos, h + pos, h, train=train))
    h = nn.LayerNorm(dtype=self.dtype, name='norm_mlp')(x)
    return x + transformer.MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype,
                                    name='mlp')(h, train=train)


class DecoderLayer(nn.Module):
  """Self-attention among the queries, cross-attention over the memory, MLP; pre-LN.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    dropout_rate: dropout on the residual branches and the attention weights.
    dtype: compute dtype; parameters stay float32.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, memory, memory_pos, *, train: bool = False):
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    attention = lambda name: _Attention(self.num_heads, self.dropout_rate, self.dtype,
                                        name=name)
    h = nn.LayerNorm(dtype=self.dtype, name='norm_self')(x)
    x = x + drop(attention('self_attention')(h + query_pos, h + query_pos, h, train=train))
    h = nn.LayerNorm(dtype=self.dtype, name='norm_cross')(x)
    x = x + drop(attention('cross_attention')(h + query_pos, memory + memory_pos, memory,
                                              train=train))
    h = nn.LayerNorm(dtype=self.dtype, name='norm_mlp')(x)
    return x + transformer.MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype,
                                    name='mlp')(h, train=train)


class Model(nn.Module):
  """DETR (see the module docstring).

  `__call__(images, *, train=False)` returns `{'logits': [L, B, N, K + 1], 'boxes':
  [L, B, N, 4]}`, float32, one row per decoder layer (the last is the prediction): class
  logits with 'no object' at index K, and boxes as normalised [cx, cy, w, h] in (0, 1).

  Attributes:
    backbone: the image backbone, as `config.model` fields (name + kwargs) of a model
      family with `feature_maps`; it is built headless (num_classes=None).
    num_classes: K, the object classes (without 'no object').
    num_queries: N, the predictions per image (more than the most objects of an image).
    hidden_dim: D, the Transformer's width.
    num_heads: attention heads.
    num_encoder_layers: encoder layers (0: the projected features are the memory).
    num_decoder_layers: L, decoder layers.
    mlp_dim: hidden width of the Transformer's MLPs (4 * hidden_dim when None).
    dropout_rate: dropout in the Transformer (training only; DETR's is 0.1).
    feature_key: the backbone feature map read (`models.spatial_grid`'s default, the
      last 'stage<k>', when None).
    dtype: the computation dtype; the outputs are float32.
  """
  backbone: Any
  num_classes: int
  num_queries: int = 20
  hidden_dim: int = 128
  num_heads: int = 4
  num_encoder_layers: int = 2
  num_decoder_layers: int = 3
  mlp_dim: int | None = None
  dropout_rate: float = 0.1
  feature_key: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if self.hidden_dim % self.num_heads or self.hidden_dim % 4:
      raise ValueError(f'detr: hidden_dim {self.hidden_dim} must be a multiple of 4 (the '
                       f'sine embeddings) and of num_heads {self.num_heads}')
    mlp_dim = self.mlp_dim or 4 * self.hidden_dim
    backbone = models.get_model(ml_collections.ConfigDict(dict(self.backbone)),
                                num_classes=None, dtype=self.dtype).clone(parent=self, name='backbone')
    grid = models.spatial_grid(backbone.feature_maps(images, train=train), self.feature_key)
    batch, height, width, _ = grid.shape
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name='input_projection')(
        grid.reshape(batch, height * width, grid.shape[-1]))
    pos = transformer.sincos_2d(height, width, self.hidden_dim, dtype=x.dtype)
    for i in range(self.num_encoder_layers):
      x = EncoderLayer(self.num_heads, mlp_dim, self.dropout_rate, self.dtype,
                       name=f'encoder_layer{i + 1}')(x, pos, train=train)
    if self.num_encoder_layers:
      x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
    memory = x

    query_pos = self.param('query_embedding', nn.initializers.normal(1.0),
                           (self.num_queries, self.hidden_dim))
    query_pos = jnp.broadcast_to(query_pos.astype(self.dtype)[None],
                                 (batch, self.num_queries, self.hidden_dim))
    y = jnp.zeros_like(query_pos)
    outputs = []
    for i in range(self.num_decoder_layers):
      y = DecoderLayer(self.num_heads, mlp_dim, self.dropout_rate, self.dtype,
                       name=f'decoder_layer{i + 1}')(y, query_pos, memory, pos, train=train)
      outputs.append(y)
    # One norm and one pair of heads for every layer, so each layer predicts in the same
    # space and the auxiliary losses train the heads the final output uses.
    h = nn.LayerNorm(dtype=self.dtype, name='decoder_norm')(jnp.stack(outputs))
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name='class_head')(h)
    b = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name='box_head1')(h))
    b = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name='box_head2')(b))
    b = nn.Dense(4, dtype=self.dtype, name='box_head3')(b)
    return {'logits': _at_least_float32(logits), 'boxes': nn.sigmoid(_at_least_float32(b))}
