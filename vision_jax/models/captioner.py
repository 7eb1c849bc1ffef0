"""Image captioners: a CNN or ViT image encoder and one of the lecture's four decoders.

`decoder` picks the design, in the lecture's order:
  'rnn'          CNN + RNN: y_t = g(y_{t-1}, h_{t-1}) with the context c = h_0, the
                 image's pooled feature projected to the RNN's initial hidden state;
                 the image reaches the RNN through nothing else.
  'attention'    RNN + soft attention (Show, Attend and Tell, Xu et al. 2015): at each
                 step an attention distribution over the encoder's spatial grid, from
                 h_{t-1}, gives the context vector z_t fed to the RNN with y_{t-1}.
  'transformer'  y_t = T_D(y_{0:t-1}, c): causal self-attention over the words so far
                 and cross-attention over the encoder's grid, layer after layer. With a
                 ViT encoder (`encoder.name='vit'`) this is the fourth design, the
                 image as patches through a ViT cross-attended by the decoder.

Every decoder has the same three entry points, so one decoding library serves all:
  memory = encode(images)                        # [B, D] (rnn) or the grid [B, N, D]
  logits, attention = decode(memory, tokens)      # teacher forcing, [B, T, V], [B, T, N]
  carry = initial_carry(memory, batch_size)       # RNN state or the self-attention cache
  logits, carry = step(memory, carry, token, t)   # one word, [B, V]
`__call__(images, tokens)` is encode then decode. `attention` is the attention map of
each word over the grid (the last layer's cross-attention, averaged over heads, for the
Transformer), or None for 'rnn'. The Transformer's `step` keeps a key-value cache of its
self-attention, so decoding costs one token's work per step.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vision_jax import models
from vision_jax.models import transformer

DECODERS = ('rnn', 'attention', 'transformer')
CELLS = {'lstm': nn.OptimizedLSTMCell, 'gru': nn.GRUCell}


def _at_least_float32(x):
  """Softmaxes and logits in float32 under bfloat16, without rounding float64 down."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class _RNNStep(nn.Module):
  """One step of the recurrent decoders: (carry, y_{t-1}) -> (carry, logits_t, alpha_t)."""
  vocab_size: int
  width: int
  cell: str
  attention: bool
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, memory, carry, token, *, train: bool):
    embedded = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name='embed')(token)
    inputs, alpha = embedded, None
    if self.attention:
      # Soft attention from h_{t-1}: e_ti = w^T tanh(W_a a_i + W_h h_{t-1}), alpha = softmax_i,
      # z_t = beta_t sum_i alpha_ti a_i, with the paper's gate beta_t = sigmoid(f(h_{t-1})).
      h = carry[1] if self.cell == 'lstm' else carry
      scores = nn.Dense(1, dtype=self.dtype, name='attention_score')(jnp.tanh(
          nn.Dense(self.width, dtype=self.dtype, name='attention_grid')(memory)
          + nn.Dense(self.width, dtype=self.dtype, name='attention_hidden')(h)[:, None]))
      alpha = jax.nn.softmax(_at_least_float32(scores[..., 0]), axis=-1)
      z = jnp.einsum('bn,bnd->bd', alpha.astype(memory.dtype), memory)
      z = z * nn.sigmoid(nn.Dense(1, dtype=self.dtype, name='attention_gate')(h))
      inputs = jnp.concatenate([embedded, z], -1)
    carry, hidden = CELLS[self.cell](self.width, dtype=self.dtype, name='cell')(carry, inputs)
    out = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    if self.attention:  # The paper's deep output sees the context too.
      out = out + nn.Dense(self.width, dtype=self.dtype, name='context_out')(z)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='logits')(out)
    return carry, logits, alpha


class CachedAttention(nn.Module):
  """Multi-head dot-product attention returning its weights; with `cache` (self-attention
  while decoding) the new keys and values are written at `position` first.

  Not Flax's attention with `decode=True`: its cache lives in a mutable collection, while
  here it is an explicit pytree that a pure step function returns and that beam search
  gathers by beam (and the figures need the weights)."""
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, queries, keys_values, mask=None, cache=None, position=None):
    width = queries.shape[-1]
    head = width // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head), dtype=self.dtype, name=name)
    q, k, v = dense('query')(queries), dense('key')(keys_values), dense('value')(keys_values)
    if cache is not None:
      k = cache['key'] = jax.lax.dynamic_update_slice_in_dim(cache['key'], k, position, 1)
      v = cache['value'] = jax.lax.dynamic_update_slice_in_dim(cache['value'], v, position, 1)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head).astype(q.dtype)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(_at_least_float32(logits), axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name='out')(out)
    return out, weights, cache


class _DecoderBlock(nn.Module):
  """Pre-LayerNorm Transformer decoder block: causal self-attention, cross-attention
  over the image grid, MLP."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, memory, *, self_mask, train: bool, cache=None, position=None):
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    h = norm('norm_self')(x)
    y, _, cache = CachedAttention(self.num_heads, self.dtype, name='self_attention')(
        h, h, self_mask, cache, position)
    x = x + drop(y)
    y, cross, _ = CachedAttention(self.num_heads, self.dtype, name='cross_attention')(
        norm('norm_cross')(x), memory)
    x = x + drop(y)
    y = transformer.MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='mlp')(
        norm('norm_mlp')(x), train=train)
    return x + y, cross, cache


class Model(nn.Module):
  """An image captioner (see the module docstring).

  Attributes:
    encoder: the image backbone, as `config.model` fields (name + kwargs) of a model
      family with `feature_maps`; it is built headless (num_classes=None).
    vocab_size: the number of word ids (the dataset vocabulary's size).
    decoder: 'rnn', 'attention' or 'transformer' (DECODERS).
    max_len: the longest token sequence (bos ... eos) the decoder is given or decodes,
      the size of the Transformer's position embedding and key-value cache.
    width: the decoder's width (word embeddings, hidden state, attention).
    cell: the recurrent cell of the RNN decoders, 'lstm' or 'gru'.
    num_layers: Transformer decoder blocks.
    num_heads: attention heads of the Transformer decoder.
    mlp_dim: the hidden width of its MLPs (4 * width when None).
    dropout_rate: dropout on the decoder's hidden states (training only).
    grid_key: the encoder feature map attended over (`models.spatial_grid`'s default when None).
    dtype: the computation dtype.
  """
  encoder: Any
  vocab_size: int
  decoder: str = 'transformer'
  max_len: int = 20
  width: int = 256
  cell: str = 'lstm'
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None
  dropout_rate: float = 0.1
  grid_key: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.decoder not in DECODERS:
      raise ValueError(f'captioner: decoder must be one of {DECODERS}, got {self.decoder!r}')
    if self.cell not in CELLS:
      raise ValueError(f'captioner: cell must be one of {tuple(CELLS)}, got {self.cell!r}')
    encoder = ml_collections.ConfigDict(dict(self.encoder))
    self.image_encoder = models.get_model(encoder, num_classes=None, dtype=self.dtype)
    self.project = nn.Dense(self.width, dtype=self.dtype, name='project')
    if self.decoder == 'transformer':
      if self.width % self.num_heads:
        raise ValueError(f'captioner: width {self.width} is not a multiple of num_heads '
                         f'{self.num_heads}')
      self.embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype)
      self.position_embedding = self.param(
          'position_embedding', nn.initializers.normal(0.02), (self.max_len, self.width))
      self.blocks = [_DecoderBlock(self.num_heads, self.mlp_dim or 4 * self.width,
                                   self.dropout_rate, self.dtype, name=f'block{i + 1}')
                     for i in range(self.num_layers)]
      self.final_norm = nn.LayerNorm(dtype=self.dtype)
      self.logits = nn.Dense(self.vocab_size, dtype=self.dtype)
    else:
      self.rnn_step = _RNNStep(self.vocab_size, self.width, self.cell,
                               self.decoder == 'attention', self.dropout_rate, self.dtype)
      if self.decoder == 'attention':  # Show, Attend and Tell's f_init of the mean feature.
        self.init_hidden = nn.Dense(self.width, dtype=self.dtype)
        self.init_cell = nn.Dense(self.width, dtype=self.dtype)

  def __call__(self, images, tokens, *, train: bool = False):
    return self.decode(self.encode(images, train=train), tokens, train=train)[0]

  def encode(self, images, *, train: bool = False):
    """The decoder's view of the image: c = h_0 [B, width] for 'rnn', else the
    projected grid [B, N, width]."""
    maps = self.image_encoder.feature_maps(images, train=train)
    if self.decoder == 'rnn':
      return self.project(maps['pre_logits'])
    grid = models.spatial_grid(maps, self.grid_key)
    batch, height, width, features = grid.shape
    memory = self.project(grid.reshape(batch, height * width, features))
    if self.decoder == 'transformer':
      memory = memory + transformer.sincos_2d(height, width, self.width, dtype=memory.dtype)
    return memory

  def initial_carry(self, memory, batch_size: int | None = None):
    """The decoder state before the first word: the RNN's (c_0, h_0) or h_0, or the
    Transformer's empty self-attention cache."""
    batch_size = memory.shape[0] if batch_size is None else batch_size
    if self.decoder == 'transformer':
      head = self.width // self.num_heads
      zeros = jnp.zeros((batch_size, self.max_len, self.num_heads, head), self.dtype)
      return [{'key': zeros, 'value': zeros} for _ in range(self.num_layers)]
    if self.decoder == 'rnn':
      hidden, cell = memory, jnp.zeros_like(memory)
    else:
      mean = memory.mean(axis=1)
      hidden, cell = jnp.tanh(self.init_hidden(mean)), jnp.tanh(self.init_cell(mean))
    return (cell, hidden) if self.cell == 'lstm' else hidden

  def decode(self, memory, tokens, *, train: bool = False):
    """Teacher forcing: logits [B, T, V] of the word after each of `tokens` [B, T], and
    the attention of each position over the grid [B, T, N] (None for 'rnn')."""
    if self.decoder == 'transformer':
      length = tokens.shape[1]
      x = self.embed(tokens) + self.position_embedding[:length].astype(self.dtype)
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
      cross = None
      for block in self.blocks:
        x, cross, _ = block(x, memory, self_mask=causal, train=train)
      return self._logits(x), cross.mean(axis=1)

    def body(step, carry, memory, token):
      carry, logits, alpha = step(memory, carry, token, train=train)
      return carry, (logits, alpha)

    scan = nn.scan(body, variable_broadcast='params',
                   split_rngs={'params': False, 'dropout': True},
                   in_axes=(nn.broadcast, 1), out_axes=1)
    _, (logits, alpha) = scan(self.rnn_step, self.initial_carry(memory), memory, tokens)
    return _at_least_float32(logits), alpha

  def step(self, memory, carry, token, position):
    """One decoding step (eval mode): the logits [B, V] of the word after `token` [B]
    at `position`, and the new carry."""
    if self.decoder != 'transformer':
      carry, logits, _ = self.rnn_step(memory, carry, token, train=False)
      return _at_least_float32(logits), carry
    x = self.embed(token[:, None]) + jax.lax.dynamic_slice_in_dim(
        self.position_embedding, position, 1).astype(self.dtype)[None]
    visible = (jnp.arange(self.max_len) <= position)[None, None, None]
    new_carry = []
    for block, cache in zip(self.blocks, carry):
      x, _, cache = block(x, memory, self_mask=visible, train=False, cache=dict(cache),
                          position=position)
      new_carry.append(cache)
    return self._logits(x)[:, 0], new_carry

  def _logits(self, x):
    return _at_least_float32(self.logits(self.final_norm(x)))
