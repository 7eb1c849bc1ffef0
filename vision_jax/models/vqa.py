"""Visual question answering: an image encoder, a question encoder, a fusion, a classifier.

  logits = classifier(fuse(image_encoder(image), question_encoder(question_tokens)))

over the answer vocabulary, one example per (image, question) pair. The image encoder is
any headless backbone of `vision_jax.models` (a `config.model`-style dict with
`num_classes=None`): its pooled 'pre_logits' for the element-wise product fusion, its
last spatial map (a grid of image tokens) for cross-attention, where the question
attends over the grid. The question encoder is an LSTM (the state at each question's
last real token) or a small Transformer (the mean over the real tokens); pad id 0 is
masked in both, so padding never changes the answer.

`inputs` gives the ablations that tell what the model actually reads: 'blind' answers
from the question alone (the image is never read; no image parameters exist), and
'image_only' from the image alone (the question is never read). A full model that does
not beat the blind one by a wide margin answers from the question's priors.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.models import transformer

QUESTION_ENCODERS = ('lstm', 'transformer')
FUSIONS = ('product', 'attention')
INPUTS = ('full', 'blind', 'image_only')
PAD_ID = 0

DEFAULT_IMAGE_ENCODER = {'name': 'cnn', 'features': (32, 64), 'dense_features': ()}


class QuestionEncoder(nn.Module):
  """[N, width] features of [N, L] question token ids; pad id 0 changes nothing.

  Attributes:
    vocab_size: the vocabulary's size.
    kind: 'lstm' (the state at each question's last real token) or 'transformer' (the
      mean of its outputs over the real tokens, padding masked out of the attention).
    embed_dim: the word embedding width.
    width: the LSTM's state width, the Transformer's model width.
    num_layers: Transformer blocks.
    num_heads: Transformer attention heads.
    max_len: the most tokens (the Transformer's learned positions).
    dtype: compute dtype.
  """
  vocab_size: int
  kind: str = 'lstm'
  embed_dim: int = 64
  width: int = 128
  num_layers: int = 1
  num_heads: int = 4
  max_len: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    mask = tokens != PAD_ID
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name='embed')(tokens)
    if self.kind == 'lstm':
      # At least one step, so an all-padding row reads a defined state.
      lengths = jnp.maximum(mask.sum(-1), 1)
      rnn = nn.RNN(nn.OptimizedLSTMCell(self.width, dtype=self.dtype), name='lstm')
      # (c, h) in the compute dtype (the cell's own zeros are float32), as scan needs.
      zeros = jnp.zeros((tokens.shape[0], self.width), x.dtype)
      (_, h), _ = rnn(x, initial_carry=(zeros, zeros), seq_lengths=lengths,
                      return_carry=True)
      return h
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'questions of {tokens.shape[1]} tokens, more than max_len '
                       f'{self.max_len}')
    x = nn.Dense(self.width, dtype=self.dtype, name='embed_proj')(x)
    positions = self.param('positions', nn.initializers.normal(0.02),
                           (self.max_len, self.width))
    x = x + positions[:tokens.shape[1]].astype(x.dtype)
    for i in range(self.num_layers):
      x = transformer.EncoderBlock(num_heads=self.num_heads, mlp_dim=2 * x.shape[-1],
                                   dtype=self.dtype, name=f'block{i + 1}')(
                                       x, nn.make_attention_mask(mask, mask))
    x = nn.LayerNorm(dtype=self.dtype, name='norm')(x)
    weights = mask.astype(x.dtype)[..., None]
    return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1)


class Model(nn.Module):
  """Answers a question about an image with logits over the answer vocabulary.

  Attributes:
    vocab_size: the question vocabulary's size (ids 0-3 are pad, bos, eos, unknown).
    num_answers: the answer vocabulary's size, the number of logits.
    image_encoder: a `config.model`-style dict of a backbone family (e.g. 'cnn',
      'resnet'), built headless; None for a small CNN.
    question_encoder: 'lstm' or 'transformer'.
    fusion: 'product' (tanh projections of the pooled image features and the question,
      multiplied element-wise) or 'attention' (the question, as one token, and the grid
      of the image encoder's last spatial map attend to each other in Transformer
      blocks, `fusion_layers` of them).
    inputs: 'full', 'blind' (the question only) or 'image_only' (the image only).
    embed_dim: the word embedding width.
    hidden_dim: the question encoder's width and the fused width.
    num_layers: Transformer blocks of the question encoder.
    fusion_layers: Transformer blocks of the 'attention' fusion.
    num_heads: attention heads of the Transformer and of the cross-attention.
    max_len: the most question tokens (the Transformer's learned positions).
    classifier_features: hidden widths of the answer classifier MLP.
    dtype: compute dtype; parameters stay float32 and the logits are float32.
  """
  vocab_size: int
  num_answers: int
  image_encoder: Mapping[str, Any] | None = None
  question_encoder: str = 'lstm'
  fusion: str = 'product'
  inputs: str = 'full'
  embed_dim: int = 64
  hidden_dim: int = 128
  num_layers: int = 1
  fusion_layers: int = 2
  num_heads: int = 4
  max_len: int = 32
  classifier_features: tuple[int, ...] = (128,)
  dtype: Any = jnp.float32

  def _check(self):
    for name, value, allowed in (('question_encoder', self.question_encoder, QUESTION_ENCODERS),
                                 ('fusion', self.fusion, FUSIONS),
                                 ('inputs', self.inputs, INPUTS)):
      if value not in allowed:
        raise ValueError(f'vqa {name} must be one of {allowed}, got {value!r}')

  @nn.compact
  def __call__(self, image: jax.Array, question_tokens: jax.Array, *,
               train: bool = False) -> jax.Array:
    self._check()
    question = image_maps = None
    if self.inputs != 'image_only':
      question = QuestionEncoder(
          self.vocab_size, self.question_encoder, self.embed_dim, self.hidden_dim,
          self.num_layers, self.num_heads, self.max_len, dtype=self.dtype,
          name='question_encoder')(question_tokens)
    if self.inputs != 'blind':
      # Built unbound (get_model reads `name` as the family), then named here.
      encoder = models.get_model(self.image_encoder or DEFAULT_IMAGE_ENCODER,
                                 num_classes=None, dtype=self.dtype, parent=None)
      encoder = encoder.clone(parent=self, name='image_encoder')
      image_maps = encoder.feature_maps(image, train=train)

    if image_maps is None:
      fused = question
    elif self.fusion == 'product':
      pooled = image_maps['pre_logits']
      fused = jnp.tanh(nn.Dense(self.hidden_dim, dtype=self.dtype, name='image_proj')(pooled))
      if question is not None:
        fused = fused * jnp.tanh(
            nn.Dense(self.hidden_dim, dtype=self.dtype, name='question_proj')(question))
    else:
      grid = models.spatial_grid(image_maps)
      n, h, w, c = grid.shape
      tokens = nn.Dense(self.hidden_dim, dtype=self.dtype, name='grid_proj')(
          grid.reshape(n, h * w, c))
      grid_positions = self.param('grid_positions', nn.initializers.normal(0.02),
                                  (h * w, self.hidden_dim))
      tokens = tokens + grid_positions.astype(tokens.dtype)
      # Without a question, one learned query reads the grid.
      query = (question if question is not None else jnp.broadcast_to(
          self.param('query', nn.initializers.normal(0.02), (self.hidden_dim,)),
          (n, self.hidden_dim)).astype(tokens.dtype))
      # The question token and the grid attend to each other for `fusion_layers`
      # blocks, so that it can look again after a first look (find the red thing, then
      # read its shape; compare two objects) and count; its output is the answer's input.
      joint = jnp.concatenate([query[:, None], tokens], axis=1)
      fused = transformer.Encoder(num_layers=self.fusion_layers, num_heads=self.num_heads,
                                  mlp_dim=2 * self.hidden_dim, dtype=self.dtype,
                                  name='fusion')(joint, train=train)[:, 0]

    x = fused
    for i, width in enumerate(self.classifier_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'classifier{i + 1}')(x))
    logits = nn.Dense(self.num_answers, dtype=self.dtype, name='answer_head')(x)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
