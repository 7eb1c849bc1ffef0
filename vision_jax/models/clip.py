"""CLIP (Radford et al. 2021): an image tower and a text tower in one embedding space.

  I_e = normalise(W_i f_image(I)),  T_e = normalise(W_t f_text(T)),
  logits = exp(t) I_e T_e^T

The image tower is any headless backbone of `vision_jax.models` (a `config.model`-style
dict: a ViT, whose pooled class token is f_image(I), or a ResNet, whose pooled features
are). The text tower is a causal Transformer (GPT-style: pre-LayerNorm blocks of
`models.transformer`, learned positions, a final LayerNorm), read at the end-of-text
token: its output there, which has seen the whole text through the causal mask, is
f_text(T). W_i and W_t are linear projections without bias, and t is the learnable
log inverse temperature, initialised to ln(1 / 0.07) (`losses.clip_loss` clips exp(t)
at 100).

At OpenAI's ViT-B/32 sizes (`CLIP_VIT_B32`: image ViT-B/32 at 224 with `patch_bias=False`
and `pre_norm=True`, text width 512, 12 layers, 8 heads, vocabulary 49,408, context 77,
embedding 512) the model has exactly 151,277,313 parameters, OpenAI's count. The MLPs
use the exact GELU and the LayerNorms epsilon 1e-6 unless told otherwise; OpenAI's
checkpoints need `mlp_activation='quick_gelu'` and `layer_norm_epsilon=1e-5` on both
towers (`vision_jax.convert` writes them). The end-of-text position is the first
`eos_id` token, which is OpenAI's `argmax` of the ids when the end-of-text token has the
largest id, as in its byte-pair vocabulary.
"""

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.losses import l2_normalize
from vision_jax.data import text
from vision_jax.models import transformer

LOGIT_SCALE_INIT = math.log(1 / 0.07)

# OpenAI's image tower of ViT-B/32: no patch bias, a LayerNorm before the encoder.
VIT_B32_IMAGE = {'name': 'vit', 'variant': 'B/32', 'patch_bias': False, 'pre_norm': True}
CLIP_VIT_B32 = dict(image=VIT_B32_IMAGE, vocab_size=49_408, max_len=77, text_width=512,
                    text_depth=12, text_heads=8, embed_dim=512)


def _at_least_float32(x: jax.Array) -> jax.Array:
  # Embeddings in float32 under bfloat16, without rounding float64 (finite differences).
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def end_of_text_positions(tokens: jax.Array, eos_id: int, pad_id: int) -> jax.Array:
  """[B] positions of each row's first `eos_id`, or of its last non-padding token when
  it has none (a text truncated without its end token)."""
  is_eos = tokens == eos_id
  last_real = jnp.maximum(jnp.sum(tokens != pad_id, axis=-1) - 1, 0)
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1), last_real)


class TextTransformer(nn.Module):
  """A causal Transformer over token ids [B, L] -> its features at the end-of-text
  token [B, width] (after the final LayerNorm).

  Attributes:
    vocab_size: the number of token ids.
    width: the model width.
    depth: the number of pre-LayerNorm blocks.
    num_heads: attention heads.
    mlp_dim: the MLPs' hidden width; None: 4 * width.
    max_len: the context length, the number of learned positions; texts may be shorter.
    eos_id: the end-of-text token id.
    pad_id: the padding token id.
    dtype: compute dtype; parameters stay float32.
    layer_norm_epsilon: every LayerNorm's epsilon.
    mlp_activation: the MLPs' activation, 'gelu' or 'quick_gelu'.
  """
  vocab_size: int
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int | None = None
  max_len: int = 77
  eos_id: int = text.Vocabulary.eos_id
  pad_id: int = text.Vocabulary.pad_id
  dtype: Any = jnp.float32
  layer_norm_epsilon: float = 1e-6
  mlp_activation: str = 'gelu'

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
      raise ValueError(f'CLIP text tower: tokens must be [batch, length <= {self.max_len}], '
                       f'got shape {tokens.shape}')
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 dtype=self.dtype, name='token_embedding')(tokens)
    positions = self.param('positions', nn.initializers.normal(0.01),
                           (self.max_len, self.width))
    x = x + positions[:tokens.shape[1]].astype(x.dtype)
    # Causal: position i attends to positions <= i, so padding after the end token
    # never reaches it.
    x = transformer.Encoder(num_layers=self.depth, num_heads=self.num_heads,
                            mlp_dim=self.mlp_dim or 4 * self.width, dtype=self.dtype,
                            layer_norm_epsilon=self.layer_norm_epsilon,
                            mlp_activation=self.mlp_activation,
                            name='Transformer')(x, nn.make_causal_mask(tokens), train=train)
    ends = end_of_text_positions(tokens, self.eos_id, self.pad_id)
    return jnp.take_along_axis(x, ends[:, None, None], axis=1)[:, 0]


class Model(nn.Module):
  """The two towers and the logit scale; see the module docstring.

  `__call__(images, tokens, *, train=False)` returns `(image_embeddings,
  text_embeddings, logit_scale)`: L2-normalised float32 [B, embed_dim] each, and the
  log inverse temperature t (a scalar). `encode_image` and `encode_text` give one side.

  Attributes:
    vocab_size: the text vocabulary's size.
    image: a `config.model`-style dict of the image tower's family and sizes, built
      headless (`num_classes=None`).
    max_len: the text context length.
    text_width: the text Transformer's width.
    text_depth: its number of blocks.
    text_heads: its attention heads.
    text_mlp_dim: its MLPs' hidden width; None: 4 * text_width.
    embed_dim: the width of the shared embedding space.
    logit_scale_init: the initial t (ln(1 / 0.07)).
    eos_id: the end-of-text token id (the word vocabulary's eos; 49,407 for OpenAI's
      byte-pair vocabulary).
    pad_id: the padding token id.
    dtype: compute dtype; parameters stay float32 and the embeddings are float32.
    text_layer_norm_epsilon: the text tower's LayerNorm epsilon (the image tower's is in
      `image`).
    text_mlp_activation: the text tower's MLP activation, 'gelu' or 'quick_gelu'.
  """
  vocab_size: int
  image: Mapping[str, Any] | None = None
  max_len: int = 77
  text_width: int = 512
  text_depth: int = 12
  text_heads: int = 8
  text_mlp_dim: int | None = None
  embed_dim: int = 512
  logit_scale_init: float = LOGIT_SCALE_INIT
  eos_id: int = text.Vocabulary.eos_id
  pad_id: int = text.Vocabulary.pad_id
  dtype: Any = jnp.float32
  text_layer_norm_epsilon: float = 1e-6
  text_mlp_activation: str = 'gelu'

  def setup(self):
    if not self.image or 'name' not in self.image:
      raise ValueError("CLIP: `image` must name the image tower's family, e.g. "
                       "{'name': 'vit', 'variant': 'B/32'}")
    self.image_encoder = models.get_model(self.image, num_classes=None, dtype=self.dtype)
    self.image_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.text_encoder = TextTransformer(
        self.vocab_size, self.text_width, self.text_depth, self.text_heads,
        self.text_mlp_dim, self.max_len, self.eos_id, self.pad_id, self.dtype,
        self.text_layer_norm_epsilon, self.text_mlp_activation)
    self.text_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.logit_scale = self.param('logit_scale',
                                  nn.initializers.constant(self.logit_scale_init), ())

  def encode_image(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    features = self.image_encoder(images, train=train)
    return l2_normalize(_at_least_float32(self.image_projection(features)))

  def encode_text(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    features = self.text_encoder(tokens, train=train)
    return l2_normalize(_at_least_float32(self.text_projection(features)))

  def __call__(self, images: jax.Array, tokens: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (self.encode_image(images, train=train), self.encode_text(tokens, train=train),
            self.logit_scale)
