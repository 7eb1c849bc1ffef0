"""Visual question answering: answer classification over the answer vocabulary.

One training example per (image, question) pair (`per_question` leads the pp spec),
with fields `image`, `question_tokens` (`tokenize(..., inkey='question',
outkey='question_tokens')`) and `answer_id` (`answer_id`: the answer's class id, -1 for
an answer outside the vocabulary). The model is `config.model` (name 'vqa', see
`vision_jax.models.vqa`), given the sizes of the dataset's question vocabulary and answer
vocabulary (`metadata['answers']`, else `scenes.ANSWERS`); the loss is softmax
cross-entropy.
"""

import jax.numpy as jnp

from vision_jax import config_lib, losses, models
from vision_jax.data import scenes_language, text
from vision_jax.methods import base
from vision_jax.models import vqa as vqa_model


def answer_vocabulary(metadata) -> tuple[str, ...]:
  """The dataset's answer words (`metadata['answers']`), else those of `scenes`."""
  if metadata and 'answers' in metadata:
    return tuple(metadata['answers'])
  return tuple(scenes_language.ANSWERS)


class Method(base.Method):
  """Answers `batch['question_tokens']` about `batch['image']` with `batch['answer_id']`.

  Config: `model` (the 'vqa' model's fields but its sizes and `inputs`),
  `vqa.inputs` ('full', or the ablations 'blind': the question only, 'image_only': the
  image only), and the shared optimizer fields. Predictions: `predict` (float32 answer
  logits).

  Attributes:
    vocabulary: the dataset's question vocabulary.
    answers: the answer words; answer id i is `answers[i]`.
    model: the VQA model.
  """
  name = 'vqa'
  OPTIONS = {'inputs': 'full'}
  PREDICTIONS = ('predict',)

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if self.options.inputs not in vqa_model.INPUTS:
      raise config_lib.ConfigError(
          f'vqa.inputs must be one of {vqa_model.INPUTS}, got {self.options.inputs!r}')
    if config.model.get('inputs', self.options.inputs) != self.options.inputs:
      raise config_lib.ConfigError('set the inputs in vqa.inputs, not model.inputs')
    self.vocabulary = text.from_metadata(data_info.metadata, 'the vqa method')
    self.answers = answer_vocabulary(data_info.metadata)
    self.model = models.get_model(
        config.model, vocab_size=len(self.vocabulary), num_answers=len(self.answers),
        inputs=self.options.inputs, dtype=self.compute_dtype)

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], batch['question_tokens'], train=False)

  def loss(self, params, model_state, batch, rng):
    logits, model_state = base.apply_model(
        self.model, params, model_state, batch['image'], train=True, rng=rng,
        question_tokens=batch['question_tokens'])
    labels = batch['answer_id']
    # An answer outside the vocabulary cannot be learnt; it does not count.
    known = (labels >= 0).astype(jnp.float32)
    per_example = losses.softmax_cross_entropy(logits, jnp.maximum(labels, 0))
    num_known = jnp.maximum(known.sum(), 1)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == labels) * known) / num_known
    return jnp.sum(per_example * known) / num_known, ({'accuracy': accuracy}, model_state)

  def predict(self, state, batch):
    """Eval-mode answer logits, float32."""
    logits, _ = base.apply_model(self.model, state.params, state.model_state,
                                 batch['image'], train=False,
                                 question_tokens=batch['question_tokens'])
    return logits.astype(jnp.float32)
