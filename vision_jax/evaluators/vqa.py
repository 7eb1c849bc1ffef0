"""VQA evaluator: answer accuracy, overall and per question type, and the VQA accuracy.

Reads `data.split` of its data one row per question (its pp starts with `per_question`)
with the method's answer logits (`pred`, 'predict' by default) and the true `answer_id`.
The question strings travel on the host (`keep_on_cpu` must name 'question'), where
`scenes_reader.question_type` sorts them into its QUESTION_TYPES ('other' for
questions it does not know): `accuracy_<type>` and `num_examples_<type>` for each type
that occurs.

The VQA accuracy (Antol et al. 2015) credits an answer by how many humans gave it,
min(#matching / 3, 1). With `human_answers` naming a host field (in `keep_on_cpu`) that
holds each question's human answers, it is reported as `vqa_accuracy`. With fewer than
three answers the threshold is their number, so on `scenes`, with one answer per
question, it equals the exact accuracy and is not reported separately.

Figure, in `workdir/<name>/`: `answers.png` (test images with the question, the
predicted and the true answer; red: wrong).
"""

import collections
import functools
import os
import textwrap
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, evaluators, losses, parallel, plotting
from vision_jax.data import scenes_reader
from vision_jax.data.pipeline import MASK_KEY


def _text(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _normalise(answer) -> str:
  return _text(answer).strip().lower()


def vqa_accuracy(predicted: str, answers: Sequence[str]) -> float:
  """min(#answers equal to `predicted` / 3, 1): full credit when three humans agree.

  Answers compare after stripping and lower-casing. With fewer than three answers the
  threshold is their number, so one answer gives the exact-match accuracy; no answers
  give 0. (The official VQA score also averages this over the ten leave-one-out subsets
  of ten answers; with three or fewer agreeing answers that changes it slightly.)
  """
  answers = [_normalise(a) for a in answers]
  if not answers:
    return 0.0
  matches = sum(a == _normalise(predicted) for a in answers)
  return min(matches / min(3, len(answers)), 1.0)


def _rows(values) -> list:
  """A host field's value as a list of answers (a scalar string is one answer)."""
  values = np.asarray(values)
  return [values.item()] if values.ndim == 0 else values.reshape(-1).tolist()


def _host_sum(array: np.ndarray) -> np.ndarray:
  """The sum over processes of a host array (every process gets it)."""
  if jax.process_count() == 1:
    return array
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array)).sum(0)


# The types of `scenes` questions, and 'other' for questions of other datasets.
QUESTION_TYPES = scenes_reader.QUESTION_TYPES + ('other',)


def _question_type(question: str) -> int:
  try:
    return QUESTION_TYPES.index(scenes_reader.question_type(question))
  except ValueError:
    return len(QUESTION_TYPES) - 1


@functools.lru_cache(maxsize=None)
def _jitted_outputs(predict, mesh):
  def outputs(state, batch):
    logits = predict(state, batch).astype(jnp.float32)
    labels, mask = batch['answer_id'], batch[MASK_KEY].astype(jnp.float32)
    known = mask * (labels >= 0)
    sums = {'count': mask.sum(), 'known': known.sum(),
            'loss': jnp.sum(losses.softmax_cross_entropy(logits, jnp.maximum(labels, 0))
                            * known),
            'accuracy': jnp.sum((jnp.argmax(logits, -1) == labels) * mask)}
    return sums, jnp.argmax(logits, -1)
  return jax.jit(parallel.under_mesh(mesh, outputs),
                 out_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)))


class Evaluator(evaluators.Evaluator):
  """Options: human_answers (the host field of each question's human answers, '' for
  none), num_figure_images (test images drawn in answers.png)."""
  OPTIONS = {'human_answers': '', 'num_figure_images': 16}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    host = tuple(self.config.keep_on_cpu)
    needed = ['question'] + ([self.config.human_answers] if self.config.human_answers else [])
    missing = [k for k in needed if k not in host]
    if missing:
      raise config_lib.ConfigError(
          f'evals.{self.name}.keep_on_cpu must name {missing} (it has {list(host)}): the '
          'vqa evaluator reads them on the host')
    self.answers = tuple(method.answers)
    self._outputs = _jitted_outputs(self.predict, self.mesh)

  def evaluate(self, state, *, step, rng):
    del step, rng
    types = QUESTION_TYPES
    # Per type: [examples, correct]; and the summed VQA accuracy.
    per_type = np.zeros([len(types), 2], np.float64)
    vqa_sum = np.zeros([1], np.float64)
    totals = collections.Counter()
    for batch, host in self.batches():
      sums, predicted = self._outputs(state, batch)
      totals.update({k: float(v) for k, v in parallel.fetch(sums).items()})
      predicted, mask = evaluators.local_outputs(predicted, batch[MASK_KEY])
      labels = parallel.local_rows(batch['answer_id'])
      for i in np.flatnonzero(mask):  # Padding rows are masked out: each row counts once.
        kind = _question_type(_text(host['question'][i]))
        per_type[kind] += (1, predicted[i] == labels[i])
        if self.config.human_answers:
          vqa_sum += vqa_accuracy(self.answers[predicted[i]],
                                  _rows(host[self.config.human_answers][i]))
    per_type, vqa_sum = _host_sum(per_type), _host_sum(vqa_sum)
    count = totals['count']
    results = {'accuracy': totals['accuracy'] / max(count, 1.0),
               'loss': totals['loss'] / max(totals['known'], 1.0),
               'num_examples': count}
    if self.config.human_answers:
      results['vqa_accuracy'] = float(vqa_sum[0]) / max(count, 1.0)
    for kind, (examples, correct) in zip(types, per_type):
      if examples:
        results[f'accuracy_{kind}'] = float(correct / examples)
        results[f'num_examples_{kind}'] = float(examples)
    return results

  def figures(self, state, *, step, rng):
    del rng
    batch, host = next(self.batches())
    _, predicted = self._outputs(state, batch)
    predicted, mask = evaluators.local_outputs(predicted, batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    outdir = self.make_outdir()
    real = np.flatnonzero(mask)
    count = min(self.config.num_figure_images, len(real))
    # Spread over the batch: consecutive rows are the questions of one image.
    rows = real[::max(1, len(real) // max(count, 1))][:count]
    images = parallel.local_rows(batch['image'])[rows]
    labels = parallel.local_rows(batch['answer_id'])[rows]
    # The answer strings when kept on the host (all of a question's, if several).
    truths = ['/'.join(dict.fromkeys(map(_normalise, _rows(host['answer'][i]))))
              if 'answer' in host else (self.answers[labels[j]] if labels[j] >= 0 else '?')
              for j, i in enumerate(rows)]
    titles = ['\n'.join(textwrap.wrap(_text(host['question'][i]), 24)) +
              f'\n{self.answers[predicted[i]]} ({truth})' for i, truth in zip(rows, truths)]
    path = os.path.join(outdir, 'answers.png')
    plotting.labelled_image_grid(
        images, titles, correct=(predicted[rows] == labels), path=path, columns=4,
        title=f'{self.name}: {self.data_info.name}, predicted (true) answers '
              f'(red: wrong), step {step}')
    return [path]

