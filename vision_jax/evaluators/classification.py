"""Classification evaluator: loss, top-1, top-5, per-class accuracy, confusion matrix.

Figures: `predictions.png` (test images with predicted labels),
`confusion_matrix.png` and `per_class_accuracy.json`.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import evaluators, losses, metrics, parallel, plotting
from vision_jax.data.pipeline import MASK_KEY


class Evaluator(evaluators.Evaluator):
  """Config: split, pp, batch_size, figures (bool), num_figure_images."""

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    self.num_classes = method.data_info.num_classes
    self.class_names = method.data_info.class_names or tuple(map(str, range(self.num_classes)))
    self._sums = jax.jit(parallel.under_mesh(self.mesh, self._batch_sums),
                         out_shardings=parallel.replicated(self.mesh))
    self._add = jax.jit(functools.partial(jax.tree.map, jnp.add))
    self._predict = jax.jit(parallel.under_mesh(self.mesh, method.predict))
    self._last_confusion = None

  def _batch_sums(self, state, batch):
    logits = self.method.predict(state, batch)
    labels, mask = batch['label'], batch[MASK_KEY].astype(jnp.float32)
    predictions = jnp.argmax(logits, -1)
    sums = {
        'count': mask.sum(),
        'loss': jnp.sum(losses.softmax_cross_entropy(logits, labels) * mask),
        'accuracy': jnp.sum((predictions == labels) * mask),
        'confusion': metrics.confusion_matrix(labels, predictions, self.num_classes, mask),
    }
    if self.num_classes > 5:
      sums['top5_accuracy'] = jnp.sum(metrics.topk_correct(logits, labels, 5) * mask)
    return sums

  def evaluate(self, state):
    totals = None
    for batch in self.global_batches():
      sums = self._sums(state, batch)
      totals = sums if totals is None else self._add(totals, sums)
    totals = parallel.fetch(totals)
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

  def figures(self, state, outdir):
    if self._last_confusion is None:
      self.evaluate(state)
    paths = []
    batch = next(self.global_batches())
    logits = self._predict(state, batch)
    if jax.process_index() == 0:
      count = min(self.config.get('num_figure_images', 32), int(batch[MASK_KEY].shape[0]))
      images = parallel.local_rows(batch['image'])[:count]
      labels = parallel.local_rows(batch['label'])[:count]
      mask = parallel.local_rows(batch[MASK_KEY])[:count]
      predicted = parallel.local_rows(logits).argmax(-1)[:count]
      keep = mask.astype(bool)
      path = os.path.join(outdir, 'predictions.png')
      plotting.labelled_image_grid(
          images[keep], [self.class_names[p] for p in predicted[keep]],
          correct=(predicted == labels)[keep], path=path,
          title='Test images with predicted labels (red: wrong)')
      paths.append(path)
      path = os.path.join(outdir, 'confusion_matrix.png')
      plotting.confusion_matrix(self._last_confusion, self.class_names, path)
      paths.append(path)
      path = os.path.join(outdir, 'per_class_accuracy.json')
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(self.per_class_accuracy(), f, indent=1)
      paths.append(path)
    return paths
