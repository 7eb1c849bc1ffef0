"""Classification evaluator: loss, top-1, top-5, per-class accuracy, confusion matrix.

Reads `data.split` of its data with the method's class scores (`pred`, 'predict' by
default: logits or log-probabilities over the training classes; 'predict_views' for
multi-clip or multi-crop evaluation, whose pp makes K views of each example). Figures,
in `workdir/<name>/`: `predictions.png` (test images, or test clips as strips of frames,
with predicted labels),
`confusion_matrix.png` and `per_class_accuracy.json`.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, evaluators, losses, metrics, parallel, plotting
from vision_jax.data.pipeline import MASK_KEY


MAX_FIGURE_CLIPS = 8


@functools.lru_cache(maxsize=None)
def _jitted_sums(batch_sums, predict, num_classes: int, mesh):
  return jax.jit(parallel.under_mesh(mesh, functools.partial(batch_sums, predict, num_classes)),
                 out_shardings=parallel.replicated(mesh))


class Evaluator(evaluators.Evaluator):
  """Options: num_figure_images (test images drawn in predictions.png)."""
  OPTIONS = {'num_figure_images': 32}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    self.num_classes = method.data_info.num_classes
    if self.data_info.num_classes not in (None, self.num_classes):
      raise config_lib.ConfigError(
          f'evals.{self.name}: dataset {self.data_info.name} has '
          f'{self.data_info.num_classes} classes, the model {self.num_classes}')
    self.class_names = method.data_info.class_names or tuple(map(str, range(self.num_classes)))
    # One compile for every evaluator of this method and prediction function.
    self._sums = _jitted_sums(type(self)._batch_sums, self.predict, self.num_classes,
                              self.mesh)
    self._last_confusion = None

  @staticmethod
  def _batch_sums(predict, num_classes, state, batch):
    logits = predict(state, batch).astype(jnp.float32)
    labels, mask = batch['label'], batch[MASK_KEY].astype(jnp.float32)
    predictions = jnp.argmax(logits, -1)
    sums = {
        'count': mask.sum(),
        'loss': jnp.sum(losses.softmax_cross_entropy(logits, labels) * mask),
        'accuracy': jnp.sum((predictions == labels) * mask),
        'confusion': metrics.confusion_matrix(labels, predictions, num_classes, mask),
    }
    if num_classes > 5:
      sums['top5_accuracy'] = jnp.sum(metrics.topk_correct(logits, labels, 5) * mask)
    return sums

  def evaluate(self, state, *, step, rng):
    del step, rng
    totals = self.summed(self._sums, state)
    count = totals.pop('count')
    confusion = totals.pop('confusion')
    self._last_confusion = confusion
    results = {name: value / count for name, value in totals.items()}
    per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    results['mean_per_class_accuracy'] = float(per_class.mean())
    results['num_examples'] = float(count)
    return results

  def per_class_accuracy(self) -> dict[str, float]:
    """From the last `evaluate` call: class name -> accuracy."""
    confusion = self._last_confusion
    accuracy = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    return dict(zip(self.class_names, map(float, accuracy)))

  def figures(self, state, *, step, rng):
    if self._last_confusion is None:
      self.evaluate(state, step=step, rng=rng)
    batch, _ = next(self.batches())
    logits, mask = evaluators.local_outputs(self.predict(state, batch), batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    outdir = self.make_outdir()
    count = min(self.config.num_figure_images, len(mask))
    images = parallel.local_rows(batch['image'])[:count]
    labels = parallel.local_rows(batch['label'])[:count]
    keep, predicted = mask[:count], logits.argmax(-1)[:count]
    paths = [os.path.join(outdir, name) for name in (
        'predictions.png', 'confusion_matrix.png', 'per_class_accuracy.json')]
    if self.config.pred == 'predict_views':
      images = images[:, images.shape[1] // 2]  # The middle view stands for the others.
    names = [self.class_names[p] for p in predicted[keep]]
    if images.ndim == 5:  # Clips [N, T, H, W, C], a row of frames each.
      plotting.clip_strips(
          images[keep][:MAX_FIGURE_CLIPS],
          [f'predicted: {p}   true: {self.class_names[t]}'
           for p, t in zip(names, labels[keep])],
          correct=(predicted == labels)[keep], path=paths[0],
          title=f'{self.name}: {self.data_info.name} clips with predicted labels '
                f'(red: wrong), step {step}')
    else:
      plotting.labelled_image_grid(
          images[keep], names, correct=(predicted == labels)[keep], path=paths[0],
          title=f'{self.name}: {self.data_info.name} images with predicted labels '
                f'(red: wrong), step {step}')
    plotting.confusion_matrix(self._last_confusion, self.class_names, paths[1])
    with open(paths[2], 'w', encoding='utf-8') as f:
      json.dump(self.per_class_accuracy(), f, indent=1)
    return paths
