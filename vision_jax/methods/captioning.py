"""Image captioning: a captioner from `config.model`, trained with teacher forcing.

A training batch holds `image` and `tokens` [B, L] (bos, the words of one caption
chosen at random, eos, padding: `choose_one('captions', 'caption')|tokenize(L)`). The
loss is the cross-entropy of each next word given the true words before it, averaged
over the real (non-padding) words of the global batch. With
`captioning.attention_regularizer` = lambda > 0, an attention decoder adds Show, Attend
and Tell's doubly stochastic penalty lambda * sum_i (1 - sum_t alpha_ti)^2, which asks
every grid cell to be looked at about once over the caption.

Predictions: `caption` (token ids [B, L - 1] by beam search with
`captioning.beam_size` beams and length-penalty exponent `captioning.length_penalty`;
one beam is greedy search), `attention` (the attention [B, T, N] of each word of
`batch['tokens']` over the image grid, teacher-forced; not for the 'rnn' decoder) and
`embed_image` (the encoder's pooled features).
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, decoding, models
from vision_jax.data import text
from vision_jax.methods import base


class Method(base.Method):
  """Trains `config.model` (a 'captioner') on `batch['image']` and `batch['tokens']`.

  Attributes:
    vocab: the dataset's word vocabulary.
    model: the captioner, its `vocab_size` that of `vocab`.
  """
  name = 'captioning'
  OPTIONS = {'beam_size': 3, 'length_penalty': 0.0, 'attention_regularizer': 0.0}
  PREDICTIONS = ('caption', 'attention', 'embed_image')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    self.vocab = text.from_metadata(data_info.metadata, 'the captioning method')
    self.model = models.get_model(config.model, vocab_size=len(self.vocab),
                                  dtype=self.compute_dtype)
    if self.options.beam_size < 1:
      raise config_lib.ConfigError(
          f'captioning.beam_size must be at least 1, got {self.options.beam_size}')
    if self.options.attention_regularizer and self.model.decoder != 'attention':
      raise config_lib.ConfigError(
          'captioning.attention_regularizer is for the attention decoder; '
          f'model.decoder is {self.model.decoder!r}')

  @property
  def max_len(self) -> int:
    return self.model.max_len

  def _check_tokens(self, tokens):
    if tokens.shape[1] != self.max_len:
      raise ValueError(f'captioning: batch tokens have length {tokens.shape[1]}, the model '
                       f'max_len {self.max_len}; make tokenize(...) in the pp match it')

  def synthetic_batch(self, batch_size, input_shape, rng):
    """Random images and token rows: bos, 1 to max_len - 2 random words, eos, padding."""
    return {'image': rng.standard_normal((batch_size, *input_shape), np.float32),
            'tokens': text.random_token_rows(rng, batch_size, self.max_len, len(self.vocab))}

  def init_variables(self, rng, batch):
    self._check_tokens(batch['tokens'])
    return self.model.init(rng, batch['image'], batch['tokens'][:, :-1], train=False)

  def loss(self, params, model_state, batch, rng):
    tokens = batch['tokens']
    self._check_tokens(tokens)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def forward(module, images, inputs):
      return module.decode(module.encode(images, train=True), inputs, train=True)

    (logits, attention), model_state = base.apply_model(
        self.model, params, model_state, batch['image'], train=True, rng=rng,
        method=lambda module, images, **kw: forward(module, images, inputs))
    real = (targets != text.Vocabulary.pad_id).astype(jnp.float32)
    count = jnp.maximum(real.sum(), 1.0)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    loss = jnp.sum(nll * real) / count
    metrics = {'token_accuracy': jnp.sum((jnp.argmax(logits, -1) == targets) * real) / count,
               'perplexity': jnp.exp(loss)}
    if self.options.attention_regularizer:
      coverage = jnp.sum(attention * real[..., None], axis=1)  # [B, N]: sum_t alpha_ti
      penalty = jnp.mean(jnp.sum((1.0 - coverage) ** 2, axis=-1))
      metrics['attention_penalty'] = penalty
      loss = loss + self.options.attention_regularizer * penalty
    return loss, (metrics, model_state)

  def _variables(self, state):
    return {'params': state.params, **state.model_state}

  def caption(self, state, batch):
    """Token ids [B, max_len - 1] of each image's caption (after bos, eos then padding)."""
    variables = self._variables(state)
    memory = self.model.apply(variables, batch['image'], method='encode')
    carry = self.model.apply(variables, memory, method='initial_carry')

    def step_fn(memory, carry, tokens, position):
      return self.model.apply(variables, memory, carry, tokens, position, method='step')

    vocab = text.Vocabulary
    options = dict(max_len=self.max_len - 1, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                   pad_id=vocab.pad_id)
    if self.options.beam_size == 1:
      return decoding.greedy(step_fn, memory, carry, **options)
    return decoding.beam_search(step_fn, memory, carry, beam_size=self.options.beam_size,
                                alpha=self.options.length_penalty, **options)[0]

  def attention(self, state, batch):
    """The attention over the grid [B, T, N] of each of `batch['tokens']` [B, T]."""
    if self.model.decoder == 'rnn':
      raise config_lib.ConfigError("captioning: the 'rnn' decoder has no attention")
    variables = self._variables(state)
    memory = self.model.apply(variables, batch['image'], method='encode')
    _, attention = self.model.apply(variables, memory, batch['tokens'], method='decode')
    return attention.astype(jnp.float32)

  def embed_image(self, state, batch):
    """Eval-mode pooled features of the image encoder, float32."""
    maps = self.model.apply(self._variables(state), batch['image'],
                            method=lambda module, x: module.image_encoder.feature_maps(x))
    return maps['pre_logits'].astype(jnp.float32)
