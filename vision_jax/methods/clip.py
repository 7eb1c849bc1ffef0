r"""CLIP's contrastive pretraining (Radford et al. 2021) on image-text pairs.

A training batch holds N images `image` and, for each, one of its texts as token ids
`tokens` [N, L] (`choose_one('captions', 'caption')|tokenize(L)`: a caption drawn at
random each epoch). The model (`vision_jax.models.clip`) embeds both into one space,
L2-normalised, and the loss is the symmetric cross-entropy of `losses.clip_loss`:

  logits = min(exp(t), 100) I_e T_e^T                       [N, N]
  L = (CE(logits, diag) over texts + CE(logits^T, diag) over images) / 2

Under the sharded jit the [N, N] matrix spans the global batch of every device and
process, so the negatives of each pair are all the other pairs of the global batch
and the loss is that of one device holding it. A micro-batch would see fewer
negatives, so `grad_accum_steps > 1` is refused.

The text side uses the dataset's word vocabulary (generated datasets keep it in their
metadata), or OpenAI's byte-pair tokenizer from the vocabulary file `clip.bpe_path`
for real text (the pipeline's `bpe_tokenize` op), or, with only `model.vocab_size`
set, token ids made elsewhere (then prompts cannot be tokenized here).

With `clip.hard_negatives`, the batch also holds `negative_tokens` [N, L], each caption
with one word swapped for a word of another meaning (the `swap_word` op); they are
extra texts in every image's softmax (NegCLIP, Yuksekgonul et al. 2023), so that the
image tower must tell apart what the swapped word names (a circle from a square) and
not only what the other words do. A negative equal to its caption (no word to swap) is
left out.

Metrics: `loss`, `logit_scale` (exp(t), clipped) and the in-batch retrieval accuracies
`image_to_text_accuracy` and `text_to_image_accuracy` (chance 1 / N).
Predictions: `embed_image` (I_e of `batch['image']`), `embed_text` (T_e of
`batch['tokens']`, which may have extra leading axes, e.g. [B, captions, L]).
"""

import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, losses, models
from vision_jax.data import text
from vision_jax.methods import base


class Method(base.Method):
  """Trains a CLIP `config.model` on `batch['image']` and `batch['tokens']`.

  Attributes:
    vocab: the tokenizer of prompts: the dataset's word vocabulary, the byte-pair
      tokenizer of `clip.bpe_path`, or None with only `model.vocab_size`.
    model: the two towers.
  """
  name = 'clip'
  OPTIONS = {'bpe_path': config_lib.placeholder(str), 'hard_negatives': False}
  PREDICTIONS = ('embed_image', 'embed_text')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if (config.grad_accum_steps or 1) > 1:
      raise config_lib.ConfigError(
          'clip: grad_accum_steps must be 1: a loss over each micro-batch alone would see '
          'fewer negatives; use a smaller batch_size or more devices instead')
    overrides = {'dtype': self.compute_dtype}
    self.vocab = None
    if self.options.bpe_path:
      from vision_jax.data import bpe  # pylint: disable=g-import-not-at-top
      self.vocab = bpe.load(self.options.bpe_path)
      overrides.update(vocab_size=self.vocab.vocab_size, eos_id=self.vocab.eos_id,
                       pad_id=self.vocab.pad_id)
    elif config.model.get('vocab_size') is None:
      self.vocab = text.from_metadata(data_info.metadata, 'the clip method (or set '
                                      'clip.bpe_path or model.vocab_size)')
      overrides['vocab_size'] = len(self.vocab)
    self.model = models.get_model(config.model, **overrides)

  @property
  def max_len(self) -> int:
    return self.model.max_len

  def tokenize(self, texts) -> np.ndarray:
    """Host-side int32 [len(texts), max_len] ids of texts, as the pipeline's `tokenize`
    makes them (for prompts built from label text)."""
    if self.vocab is None:
      raise config_lib.ConfigError(
          'clip: no tokenizer for texts: the model takes token ids made elsewhere '
          '(model.vocab_size); set clip.bpe_path or train on a dataset with a vocabulary')
    return self.vocab.encode_batch(list(texts), self.max_len)

  def synthetic_batch(self, batch_size, input_shape, rng):
    """Random images and token rows: bos, random words, eos, padding."""
    return {'image': rng.standard_normal((batch_size, *input_shape), np.float32),
            'tokens': text.random_token_rows(rng, batch_size, self.max_len,
                                             self.model.vocab_size)}

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], batch['tokens'], train=False)

  def loss(self, params, model_state, batch, rng):
    (images, texts, logit_scale), model_state = base.apply_model(
        self.model, params, model_state, batch['image'], train=True, rng=rng,
        tokens=batch['tokens'])
    negatives = mask = None
    if self.options.hard_negatives:
      if 'negative_tokens' not in batch:
        raise config_lib.ConfigError(
            'clip.hard_negatives needs batch["negative_tokens"]: add e.g. '
            '`swap_word(WORDS, outkey="negative_caption")|tokenize(L, '
            'inkey="negative_caption", outkey="negative_tokens")` to data.pp_train')
      negatives = self.model.apply({'params': params, **model_state},
                                   batch['negative_tokens'], train=True, method='encode_text')
      mask = jnp.any(batch['negative_tokens'] != batch['tokens'], axis=-1)
    loss = losses.clip_loss(images, texts, logit_scale, negatives, mask)
    similarity = images @ texts.T
    matches = jnp.arange(images.shape[0])
    metrics = {
        'logit_scale': jnp.minimum(jnp.exp(logit_scale), losses.MAX_LOGIT_SCALE),
        'image_to_text_accuracy': jnp.mean(jnp.argmax(similarity, axis=1) == matches),
        'text_to_image_accuracy': jnp.mean(jnp.argmax(similarity, axis=0) == matches)}
    return loss, (metrics, model_state)

  def _variables(self, state):
    return {'params': state.params, **state.model_state}

  def embed_image(self, state, batch):
    """Eval-mode L2-normalised image embeddings, float32 [B, embed_dim]."""
    return self.model.apply(self._variables(state), batch['image'], method='encode_image')

  def embed_text(self, state, batch):
    """Eval-mode L2-normalised text embeddings of `batch['tokens']` [..., L], float32
    [..., embed_dim]."""
    tokens = batch['tokens']
    flat = self.model.apply(self._variables(state), tokens.reshape(-1, tokens.shape[-1]),
                            method='encode_text')
    return flat.reshape(*tokens.shape[:-1], flat.shape[-1])
