r"""DALL-E's prior (Ramesh et al., 2021): a Transformer over [caption words; VQ image
tokens], trained on the codes of a frozen, separately trained VQ-VAE.

Stage one trains a VQ-VAE (`methods/vqvae`); this method is stage two.
`dalle.vqvae_workdir` names that run: it is loaded once (`inference.load_run`) when
the method is built, its weights and codebook kept on the host as constants of the
compiled functions, so they are neither trained nor part of this run's TrainState
or checkpoints. A training batch holds `image` (in [0, 1]) and `tokens` [B, L] (bos,
the words of one caption chosen at random, eos, padding, as in captioning). Inside the
step the image becomes its token grid [B, h, w] by the VQ-VAE's nearest codes (under
`stop_gradient`), flattened row by row to [B, h w], and the prior
(`vision_jax.models.dalle`) is trained by teacher forcing with

  L = w CE_text + (1 - w) CE_image,    w = `dalle.text_loss_weight`

CE_image the mean cross-entropy of the image tokens, CE_text that of the caption's
real tokens (padding and the fixed bos not counted), each averaged over its tokens of
the global batch. DALL-E weighs them 1/8 and 7/8 (w = 1/8, the default): the image
part is what generation uses; the text part asks the model to know its captions.

The prior's vocabulary of words is the dataset's (`text.from_metadata`) and its
`text_len` that of the tokens; `num_image_codes` and `image_tokens` come from the
VQ-VAE. Built without a VQ-VAE (`dalle.vqvae_workdir` empty, as the benchmark builds
it), the method takes them from `dalle.num_image_codes` and `dalle.grid_size`, and
its synthetic batches carry random codes in `image_codes`, which the loss reads in
place of images: a training step of the prior alone (no VQ-VAE encoding).

Text-to-image: `generate_from_text(state, rng, tokens, temperature, top_k)` draws the
image tokens one at a time (KV cache; softmax(logits / temperature) over the `top_k`
most likely codes, greedy at temperature 0) and decodes them with the VQ-VAE: float32
images [B, H, W, C] in [0, 1]. `tokenize(texts)` gives the token rows of prompts.
`generate(state, rng, labels)` is not defined: images need text, not labels
(CAPABILITIES is empty, so the `generative` evaluator draws nothing; the
`text_to_image` evaluator and `python -m vision_jax.generate` draw from prompts).
Training metrics: `image_loss`, `text_loss`, `image_token_accuracy`, `image_perplexity`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import checkpointing, config_lib, inference, models
from vision_jax.data import text
from vision_jax.methods import base, generative


class Method(generative.Method):
  """Trains the DALL-E prior `config.model` (name 'dalle') on the codes of a frozen
  VQ-VAE run and the batch's captions.

  Attributes:
    vocab: the dataset's word vocabulary.
    vqvae: the VQ-VAE run's method (`methods.vqvae.Method`), None when built without one.
    vqvae_state: that run's state as host arrays (None without a VQ-VAE).
    grid_shape: (h, w), the token grid of one image.
    model: the prior.
  """
  name = 'dalle'
  OPTIONS = {'vqvae_workdir': '', 'text_loss_weight': 1 / 8,
             # Only without a VQ-VAE (the benchmark): the codebook size and token grid.
             'num_image_codes': 512, 'grid_size': 8}
  CAPABILITIES = ()
  SAMPLE_OPTIONS = {'temperature': 1.0, 'top_k': None}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    o = self.options
    if not 0 <= o.text_loss_weight < 1:
      raise config_lib.ConfigError(
          f'dalle.text_loss_weight must be in [0, 1), got {o.text_loss_weight}')
    self.vocab = text.from_metadata(data_info.metadata, 'the dalle method')
    self.vqvae, self.vqvae_state = None, None
    if o.vqvae_workdir:
      self.vqvae, self.vqvae_state = load_vqvae(o.vqvae_workdir, self.image_shape)
      self.grid_shape, num_codes = self.vqvae.grid_shape, self.vqvae.num_codes
    else:
      self.grid_shape, num_codes = (int(o.grid_size),) * 2, int(o.num_image_codes)
    self.model = models.get_model(
        config.model, text_vocab_size=len(self.vocab), num_image_codes=num_codes,
        image_tokens=self.grid_shape[0] * self.grid_shape[1], dtype=self.compute_dtype)

  @property
  def text_len(self) -> int:
    return self.model.text_len

  @property
  def image_tokens(self) -> int:
    return self.model.image_tokens

  def tokenize(self, texts) -> np.ndarray:
    """Host-side int32 [len(texts), text_len] rows of texts, as the pipeline's
    `tokenize(text_len)` makes them."""
    return self.vocab.encode_batch(list(texts), self.text_len)

  def _check_tokens(self, tokens):
    if tokens.ndim != 2 or tokens.shape[1] != self.text_len:
      raise config_lib.ConfigError(
          f'dalle: batch tokens have shape {tuple(tokens.shape)}, but model.text_len is '
          f'{self.text_len}; make tokenize(...) in the pp match it')

  def image_codes(self, batch) -> jax.Array:
    """The batch's image tokens [B, h w]: its `image_codes`, or the frozen VQ-VAE's
    codes of its `image`, row by row."""
    if 'image_codes' in batch:
      return batch['image_codes'].astype(jnp.int32)
    if self.vqvae is None:
      raise config_lib.ConfigError(
          'dalle.vqvae_workdir is unset: the prior trains on the codes of a trained '
          'vqvae run (e.g. experiments/vision_language/dalle_scenes.py:stage=vqvae)')
    self.check_images(batch['image'])
    grid = self.vqvae.encode_tokens(self.vqvae_state, batch['image'])
    return jax.lax.stop_gradient(grid.reshape(grid.shape[0], -1))

  # The trainer's interface.

  def synthetic_batch(self, batch_size, input_shape, rng):
    """Token rows and, with a VQ-VAE, uniform images in [0, 1]; without one, random
    image codes in `image_codes`."""
    batch = {'tokens': text.random_token_rows(rng, batch_size, self.text_len,
                                              len(self.vocab))}
    if self.vqvae is None:
      batch['image_codes'] = rng.integers(0, self.model.num_image_codes,
                                          (batch_size, self.image_tokens), dtype=np.int32)
    else:
      batch['image'] = rng.uniform(size=(batch_size, *input_shape)).astype(np.float32)
    return batch

  def init_variables(self, rng, batch):
    self._check_tokens(batch['tokens'])
    codes = jnp.zeros((batch['tokens'].shape[0], self.image_tokens), jnp.int32)
    return self.model.init(rng, batch['tokens'], codes, train=False)

  def losses(self, params, model_state, batch, rng, *, train: bool):
    """(loss, metrics, model_state) of the teacher-forced prior on a batch."""
    tokens = batch['tokens']
    self._check_tokens(tokens)
    codes = self.image_codes(batch)
    out, model_state = base.apply_model(self.model, params, model_state, tokens,
                                        train=train, rng=rng, image_tokens=codes)
    image_nll = -jnp.take_along_axis(jax.nn.log_softmax(out['image_logits']),
                                     codes[..., None], -1)[..., 0]
    image_loss = jnp.mean(image_nll)
    vocab = text.Vocabulary
    real = ((tokens != vocab.pad_id) & (tokens != vocab.bos_id)).astype(jnp.float32)
    text_nll = -jnp.take_along_axis(jax.nn.log_softmax(out['text_logits']),
                                    tokens[..., None], -1)[..., 0]
    text_loss = jnp.sum(text_nll * real) / jnp.maximum(real.sum(), 1.0)
    w = self.options.text_loss_weight
    loss = w * text_loss + (1 - w) * image_loss
    metrics = {'image_loss': image_loss, 'text_loss': text_loss,
               'image_perplexity': jnp.exp(image_loss),
               'image_token_accuracy': jnp.mean(
                   jnp.argmax(out['image_logits'], -1) == codes)}
    return loss, metrics, model_state

  def loss(self, params, model_state, batch, rng):
    loss, metrics, model_state = self.losses(params, model_state, batch, rng, train=True)
    return loss, (metrics, model_state)

  # Text to image.

  def _variables(self, state):
    return {'params': state.params, **state.model_state}

  def sample_tokens(self, state, rng, tokens, temperature=1.0, top_k=None) -> jax.Array:
    """Image token grids [B, h, w] drawn for the captions `tokens` [B, text_len]."""
    self._check_tokens(tokens)
    codes = self.model.apply(self._variables(state), tokens, rng, temperature=temperature,
                             top_k=top_k, method='sample')
    return codes.reshape(codes.shape[0], *self.grid_shape)

  def generate_from_text(self, state, rng, tokens, temperature=1.0, top_k=None
                         ) -> jax.Array:
    """Images [B, H, W, C] in [0, 1], float32, drawn for the captions `tokens`
    [B, text_len] and decoded by the VQ-VAE."""
    if self.vqvae is None:
      raise config_lib.ConfigError(
          'dalle: images are decoded by the VQ-VAE of dalle.vqvae_workdir, which is unset')
    grid = self.sample_tokens(state, rng, tokens, temperature, top_k)
    return self.vqvae.decode_tokens(self.vqvae_state, grid)


def load_vqvae(workdir: str, image_shape) -> tuple[base.Method, object]:
  """`(method, host state)` of the trained vqvae run in `workdir`, checked to take
  images of `image_shape`; a one-line ConfigError naming the workdir otherwise."""
  where = f'dalle.vqvae_workdir {workdir}'
  try:
    _, method, state = inference.load_run(workdir)
  except (inference.RunError, checkpointing.CheckpointError, config_lib.ConfigError,
          ValueError) as e:
    raise config_lib.ConfigError(f'{where}: {e}') from None
  if not hasattr(method, 'encode_tokens'):
    raise config_lib.ConfigError(
        f'{where} holds a {method.config.method} run, not a vqvae run')
  if tuple(method.image_shape) != tuple(image_shape):
    raise config_lib.ConfigError(
        f'{where}: the VQ-VAE takes images {tuple(method.image_shape)}, but '
        f'data.input_shape is {tuple(image_shape)}')
  return method, jax.device_get(state)
