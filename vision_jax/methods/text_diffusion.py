r"""Text-to-image by diffusion (GLIDE, Nichol et al. 2022; Imagen, Saharia et al. 2022):
DDPM on images with their captions, classifier-free guidance from the caption.

Everything of `methods/diffusion` (the schedule, L_simple, the DDPM and DDIM samplers,
EMA weights) with the class label replaced by a caption: the network is
`models/text_unet` (a text Transformer trained with the U-Net, its token features
cross-attended and its mean-pooled feature added to the timestep embedding). A training
batch holds `image` (in [0, 1]) and `tokens` [B, L] (bos, one caption's words, eos,
padding: `choose_one|tokenize(L)`, as in captioning).

Classifier-free guidance (Ho & Salimans 2022), as GLIDE does it for text: in training
each caption is replaced by the empty caption (bos, eos, padding) with probability
`text_dropout` (GLIDE: 0.2), so one network learns eps(x, t, c) and eps(x, t, empty);
sampling uses (1 + w) eps(x, t, c) - w eps(x, t, empty) with w = `guidance` (GLIDE's
scale s is 1 + w).

Text-to-image: `generate_from_text(state, rng, tokens, **sample_options)` gives images
[B, H, W, C] in [0, 1] from `tokenize(texts)`'s rows, for the `text_to_image`
evaluator and `python -m vision_jax.generate`. `test_metrics` is the test
`simple_loss` with the batch's captions. Config: `model` (`text_unet`),
`text_diffusion.{beta_schedule, num_timesteps, text_dropout, ema_decay}`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, models
from vision_jax.data import text
from vision_jax.methods import diffusion


class Method(diffusion.Method):
  """DDPM conditioned on captions, with classifier-free guidance.

  Attributes:
    vocab: the dataset's word vocabulary.
    empty_tokens: int32 [text_len], the empty caption (the null condition).
  """
  name = 'text_diffusion'
  OPTIONS = {'beta_schedule': 'linear', 'num_timesteps': 1000, 'text_dropout': 0.2,
             'ema_decay': 0.9999}
  CAPABILITIES = ('test_metrics',)
  SAMPLE_OPTIONS = {**diffusion.Method.SAMPLE_OPTIONS, 'guidance': 3.0}
  CONDITION_DROPOUT = 'text_dropout'

  def __init__(self, config, data_info, **kwargs):
    try:
      self.vocab = text.from_metadata(data_info.metadata, 'the text_diffusion method')
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    super().__init__(config, data_info, **kwargs)
    self.empty_tokens = self.vocab.encode('', self.text_len)

  def build_model(self):
    return models.get_model(self.config.model, vocab_size=len(self.vocab),
                            dtype=self.compute_dtype)

  @property
  def text_len(self) -> int:
    return self.model.text_len

  def tokenize(self, texts) -> np.ndarray:
    """Host-side int32 [len(texts), text_len] rows, as the pipeline's `tokenize`."""
    return self.vocab.encode_batch(list(texts), self.text_len)

  def _check_tokens(self, tokens):
    if tokens.ndim != 2 or tokens.shape[1] != self.text_len:
      raise config_lib.ConfigError(
          f'text_diffusion: batch tokens have shape {tuple(tokens.shape)}, but '
          f'model.text_len is {self.text_len}; make tokenize(...) in the pp match it')

  def synthetic_batch(self, batch_size, input_shape, rng):
    return {'image': rng.uniform(size=(batch_size, *input_shape)).astype(np.float32),
            'tokens': text.random_token_rows(rng, batch_size, self.text_len,
                                             len(self.vocab))}

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    self._check_tokens(batch['tokens'])
    n = batch['image'].shape[0]
    return self.model.init(rng, batch['image'], jnp.zeros([n], jnp.int32),
                           batch['tokens'].astype(jnp.int32))

  def with_empty_captions(self, tokens, drop):
    """`tokens` [N, L] with the rows where `drop` [N] is true made the empty caption."""
    return jnp.where(drop[:, None], jnp.asarray(self.empty_tokens)[None], tokens)

  def loss(self, params, model_state, batch, rng):
    noise_rng, text_rng, dropout_rng = jax.random.split(rng, 3)
    tokens = batch['tokens'].astype(jnp.int32)
    self._check_tokens(tokens)
    if self.options.text_dropout:
      tokens = self.with_empty_captions(
          tokens, jax.random.bernoulli(text_rng, self.options.text_dropout, tokens.shape[:1]))
    per_example, model_state = self.simple_loss(
        params, model_state, batch['image'], noise_rng, train=True,
        dropout_rng=dropout_rng, tokens=tokens)
    return per_example.mean(), ({}, model_state)

  def _eps_fn(self, state, tokens, guidance):
    """eps(x, t_scalar) for captions `tokens` [N, L], guided against the empty caption."""
    variables = {'params': state.params, **state.model_state}

    def apply(x, t, tokens):
      return self.model.apply(variables, x, jnp.full([x.shape[0]], t, jnp.int32), tokens)

    def eps(x, t):
      if not guidance:
        return apply(x, t, tokens)
      empty = self.with_empty_captions(tokens, jnp.ones(tokens.shape[:1], bool))
      both = apply(jnp.concatenate([x, x]), t, jnp.concatenate([tokens, empty]))
      return diffusion.guided_eps(both[:len(x)], both[len(x):], guidance)
    return eps

  def generate_from_text(self, state, rng, tokens, **sample_options) -> jax.Array:
    """Images [B, H, W, C] in [0, 1], float32, drawn for the captions `tokens`
    [B, text_len] (see SAMPLE_OPTIONS; guidance w against the empty caption)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    self._check_tokens(tokens)
    options = self.sample_options(sample_options)
    noise_rng, loop_rng = jax.random.split(rng)
    x_t = self._initial_noise(noise_rng, tokens.shape[0])
    x, _ = self._sample_loop(state, loop_rng, tokens, x_t, options)
    return self._to_unit(x)

  def generate(self, state, rng, labels, **sample_options):
    raise NotImplementedError('text_diffusion draws images from text: use '
                              'generate_from_text(state, rng, tokenize(texts))')

  def test_metrics(self, state, batch, rng):
    """`simple_loss` per test image with its caption, t and eps drawn from `rng`."""
    tokens = batch['tokens'].astype(jnp.int32)
    self._check_tokens(tokens)
    per_example, _ = self.simple_loss(state.params, state.model_state, batch['image'],
                                      rng, train=False, tokens=tokens)
    return {'simple_loss': per_example}
