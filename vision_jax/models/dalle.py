"""The DALL-E prior (Ramesh et al., 2021): a decoder-only Transformer over a caption's word
tokens followed by an image's VQ tokens, trained by teacher forcing and sampled token by
token.

The sequence is [start; text tokens (text_len, padded); image tokens (image_tokens =
h * w, row by row)], with separate token embeddings for words and image codes, a learned
start vector and learned positions. Every position attends causally to the ones before
it, and the output at each position is the prediction of the next token of [text; image]:

  text_logits[:, j]   [B, text_len, text_vocab_size]  text token j from text tokens < j
  image_logits[:, i]  [B, image_tokens, num_image_codes]  image token i from the whole
                      text and the image tokens < i

DALL-E trains on both (its loss weighs the image part 7:1; the image part is what
matters for generation); the losses, and which text positions (padding) they count, are
the method's. Padding tokens are embedded like any word.

Entry points:
  __call__(text_tokens, image_tokens, *, train=False)  teacher forcing, the dict above
  sample(text_tokens, rng, *, temperature=1.0, top_k=None)  image tokens [B, image_tokens]
  embed(text_tokens, image_tokens) and logits_from_embeddings(x) are the two halves of
  __call__ (the second is differentiable in its float input).

`sample` is jit-able with fixed shapes: the text fills the key-value cache in one pass,
then a scan draws one image token per step, each step attending over the cache, so a
step costs one position's work. The blocks are the captioner's decoder without
cross-attention: its attention with an explicit key-value cache, and the shared
`transformer.MlpBlock`. `TINY` is the variant for tests.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import captioner, transformer

# The `config.model` fields of a tiny variant (milliseconds per step), for tests.
TINY = dict(name='dalle', text_vocab_size=11, text_len=3, num_image_codes=7,
            image_tokens=4, width=16, depth=2, heads=2, mlp_dim=32, dropout=0.0)


def _at_least_float32(x: jax.Array) -> jax.Array:
  """Logits and sampling in float32 under bfloat16, without rounding float64 down."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def filter_logits(logits: jax.Array, *, temperature: float = 1.0,
                  top_k: int | None = None) -> jax.Array:
  """The logits a token is drawn from: logits / temperature, with all but the `top_k`
  largest of each row set to -inf (ties with the k-th largest are kept)."""
  if not temperature > 0:
    raise ValueError(f'dalle: filter_logits needs a temperature > 0, got {temperature}')
  logits = _at_least_float32(logits) / temperature
  if top_k is not None:
    if not 1 <= top_k <= logits.shape[-1]:
      raise ValueError(f'dalle: top_k must be in [1, {logits.shape[-1]}], got {top_k}')
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return logits


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                  top_k: int | None = None) -> jax.Array:
  """One token per row of `logits` [..., V], int32: drawn from softmax(filter_logits),
  or the argmax when `temperature` is 0 (a Python number, not traced)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature=temperature, top_k=top_k)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


class DecoderBlock(nn.Module):
  """Pre-LayerNorm decoder-only block: x + SelfAttention(LN(x)), then x + MLP(LN(x)).

  `__call__(x, *, mask, train, cache=None, position=None) -> (x, cache)`: with `cache`
  (a dict of 'key' and 'value' [B, max_len, heads, head_dim]) the keys and values of
  `x` [B, q, D] are written at `position` first, and the updated cache is returned.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    dropout_rate: dropout on the residual branches (and inside the MLP).
    dtype: compute dtype; parameters stay float32.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, train: bool, cache=None, position=None):
    h = nn.LayerNorm(dtype=self.dtype, name='norm_self')(x)
    y, _, cache = captioner.CachedAttention(
        self.num_heads, self.dtype, name='self_attention')(h, h, mask, cache, position)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = transformer.MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='mlp')(
        nn.LayerNorm(dtype=self.dtype, name='norm_mlp')(x), train=train)
    return x + y, cache


class Model(nn.Module):
  """The DALL-E text-then-image-token prior (see the module docstring).

  Attributes:
    text_vocab_size: the number of word ids (padding included).
    text_len: the length every caption is padded or cut to.
    num_image_codes: the VQ-VAE's codebook size K.
    image_tokens: tokens per image, h * w of the VQ-VAE's grid.
    width: the model width (embeddings, residual stream).
    depth: the number of decoder blocks.
    heads: attention heads; they split the width.
    mlp_dim: hidden width of the MLPs (4 * width when None).
    dropout: dropout on the embeddings and the residual branches (training only).
    dtype: compute dtype; parameters stay float32 and the logits float32 (or wider).
  """
  text_vocab_size: int
  text_len: int
  num_image_codes: int
  image_tokens: int
  width: int = 256
  depth: int = 4
  heads: int = 4
  mlp_dim: int | None = None
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @property
  def seq_len(self) -> int:
    """Input positions: the start vector, the text, and all image tokens but the last."""
    return self.text_len + self.image_tokens

  def setup(self):
    if self.width % self.heads:
      raise ValueError(f'dalle: width {self.width} is not a multiple of heads {self.heads}')
    if self.text_len < 0 or self.image_tokens < 1:
      raise ValueError(f'dalle: needs text_len >= 0 and image_tokens >= 1, got '
                       f'{self.text_len} and {self.image_tokens}')
    embed_init = nn.initializers.normal(0.02)
    self.text_embed = nn.Embed(self.text_vocab_size, self.width, dtype=self.dtype,
                               embedding_init=embed_init)
    self.image_embed = nn.Embed(self.num_image_codes, self.width, dtype=self.dtype,
                                embedding_init=embed_init)
    self.start = self.param('start', embed_init, (self.width,))
    self.position_embedding = self.param('position_embedding', embed_init,
                                         (self.seq_len, self.width))
    self.embed_dropout = nn.Dropout(self.dropout)
    self.blocks = [DecoderBlock(self.heads, self.mlp_dim or 4 * self.width, self.dropout,
                                self.dtype, name=f'block{i + 1}')
                   for i in range(self.depth)]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    self.text_head = nn.Dense(self.text_vocab_size, dtype=self.dtype)
    self.image_head = nn.Dense(self.num_image_codes, dtype=self.dtype)

  def _check_tokens(self, name: str, tokens: jax.Array, length: int):
    if tokens.ndim != 2 or tokens.shape[1] != length:
      raise ValueError(f'dalle: {name} must be [B, {length}], got shape {tuple(tokens.shape)}')

  def _prefix(self, text_tokens: jax.Array) -> jax.Array:
    """[start; embedded text] [B, 1 + text_len, width], without positions."""
    start = jnp.broadcast_to(self.start.astype(self.dtype),
                             (text_tokens.shape[0], 1, self.width))
    return jnp.concatenate([start, self.text_embed(text_tokens)], axis=1)

  def embed(self, text_tokens: jax.Array, image_tokens: jax.Array) -> jax.Array:
    """The input sequence [B, seq_len, width]: start, text, image tokens but the last
    (it is predicted, never read), plus positions."""
    self._check_tokens('text_tokens', text_tokens, self.text_len)
    self._check_tokens('image_tokens', image_tokens, self.image_tokens)
    x = jnp.concatenate([self._prefix(text_tokens),
                         self.image_embed(image_tokens[:, :-1])], axis=1)
    return x + self.position_embedding.astype(self.dtype)[None]

  def logits_from_embeddings(self, x: jax.Array, *, train: bool = False
                             ) -> dict[str, jax.Array]:
    """Causal decoding of an embedded sequence [B, seq_len, width] (`embed`'s) to
    {'text_logits', 'image_logits'}."""
    if x.ndim != 3 or x.shape[1:] != (self.seq_len, self.width):
      raise ValueError(f'dalle: embeddings must be [B, {self.seq_len}, {self.width}], '
                       f'got shape {tuple(x.shape)}')
    x = self.embed_dropout(x, deterministic=not train)
    causal = jnp.tril(jnp.ones((self.seq_len, self.seq_len), bool))[None, None]
    for block in self.blocks:
      x, _ = block(x, mask=causal, train=train)
    x = self.final_norm(x)
    return {'text_logits': _at_least_float32(self.text_head(x[:, :self.text_len])),
            'image_logits': _at_least_float32(self.image_head(x[:, self.text_len:]))}

  def __call__(self, text_tokens: jax.Array, image_tokens: jax.Array, *,
               train: bool = False) -> dict[str, jax.Array]:
    """Teacher forcing: text_logits [B, text_len, V_text] and image_logits
    [B, image_tokens, K], each position predicting its token from the ones before."""
    return self.logits_from_embeddings(self.embed(text_tokens, image_tokens), train=train)

  def initial_cache(self, batch_size: int) -> list[dict[str, jax.Array]]:
    """The empty key-value cache of every block, [B, seq_len, heads, head_dim] each."""
    zeros = jnp.zeros((batch_size, self.seq_len, self.heads, self.width // self.heads),
                      self.dtype)
    return [{'key': zeros, 'value': zeros} for _ in range(self.depth)]

  def _cached_forward(self, x: jax.Array, cache, position):
    """The final hidden states of inputs x [B, q, width] (positions added) at positions
    position .. position + q - 1, attending over the cache; and the updated cache."""
    queries = position + jnp.arange(x.shape[1])
    visible = (jnp.arange(self.seq_len)[None, :] <= queries[:, None])[None, None]
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, mask=visible, train=False, cache=dict(layer_cache),
                             position=position)
      new_cache.append(layer_cache)
    return self.final_norm(x), new_cache

  def _image_step(self, carry, rng, temperature: float, top_k: int | None):
    """Draws the image token at `index` from its logits, then feeds it: the logits of
    the next image token."""
    index, logits, cache = carry
    token = sample_logits(logits, rng, temperature=temperature, top_k=top_k)
    position = self.text_len + 1 + index
    x = self.image_embed(token[:, None]) + jax.lax.dynamic_slice_in_dim(
        self.position_embedding, position, 1).astype(self.dtype)[None]
    hidden, cache = self._cached_forward(x, cache, position)
    next_logits = _at_least_float32(self.image_head(hidden[:, 0]))
    return (index + 1, next_logits, cache), (token, logits)

  def sample(self, text_tokens: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
             top_k: int | None = None, return_logits: bool = False):
    """Image tokens [B, image_tokens] (int32) for captions [B, text_len], drawn one at a
    time from softmax(logits / temperature) restricted to the `top_k` most likely codes
    (greedy when temperature is 0). With `return_logits`, also the unfiltered logits
    [B, image_tokens, K] each token was drawn from."""
    self._check_tokens('text_tokens', text_tokens, self.text_len)
    if temperature < 0:
      raise ValueError(f'dalle: temperature must be >= 0, got {temperature}')
    if top_k is not None and not 1 <= top_k <= self.num_image_codes:
      raise ValueError(f'dalle: top_k must be in [1, {self.num_image_codes}], got {top_k}')
    batch = text_tokens.shape[0]
    prefix = self._prefix(text_tokens) + self.position_embedding[:self.text_len + 1].astype(
        self.dtype)[None]
    hidden, cache = self._cached_forward(prefix, self.initial_cache(batch), 0)
    logits = _at_least_float32(self.image_head(hidden[:, -1]))
    keys = jax.random.split(rng, self.image_tokens)

    def body(module, carry, key):
      return module._image_step(carry, key, temperature, top_k)

    tokens, step_logits = [], []
    if self.image_tokens > 1:
      scan = nn.scan(body, variable_broadcast='params', split_rngs={'params': False},
                     in_axes=0, out_axes=1)
      (_, logits, _), (tokens, step_logits) = scan(
          self, (jnp.zeros([], jnp.int32), logits, cache), keys[:-1])
      tokens, step_logits = [tokens], [step_logits]
    last = sample_logits(logits, keys[-1], temperature=temperature, top_k=top_k)
    tokens = jnp.concatenate(tokens + [last[:, None]], axis=1)
    if return_logits:
      return tokens, jnp.concatenate(step_logits + [logits[:, None]], axis=1)
    return tokens
