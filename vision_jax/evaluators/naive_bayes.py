"""Naive Bayes evaluator: the fitted model itself, p_cd = P(pixel d on | class c).

Reads no data. Metric: `train_examples`, the number of examples counted (the training
split size after an exact pass). Figure: `class_pixel_probabilities.png`, one panel
per class showing its p_cd as an image: how often each pixel is on in that class's
training images (smoothed), which is everything the model knows about the class.
"""

import math
import os

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  # noqa: E402
import numpy as np  # noqa: E402

from vision_jax import config_lib, evaluators, parallel  # noqa: E402


class Evaluator(evaluators.Evaluator):
  """Config: max_classes (panels drawn, default 100), columns (default 5, or 10 for more
  than 10 classes)."""

  def __init__(self, method, config, *, builder, mesh):
    del builder  # Everything shown comes from the counts in the state.
    if not hasattr(method, 'pixel_probabilities'):
      raise config_lib.ConfigError(
          f'evaluator type naive_bayes needs method naive_bayes, not {method.config.method}')
    self.method = method
    self.config = config
    self.mesh = mesh
    names = method.data_info.class_names
    self.class_names = names or tuple(map(str, range(method.data_info.num_classes)))

  def evaluate(self, state):
    return {'train_examples': float(parallel.fetch(state.params['class_counts']).sum())}

  def figures(self, state, outdir):
    if jax.process_index() != 0:
      return []
    params = parallel.fetch(state.params)
    probabilities = np.asarray(self.method.pixel_probabilities(params))  # [C, H, W, ch]
    path = os.path.join(outdir, 'class_pixel_probabilities.png')
    class_pixel_probabilities(probabilities, self.class_names, params['class_counts'], path,
                              max_classes=self.config.get('max_classes', 100),
                              columns=self.config.get('columns'))
    return [path]


def class_pixel_probabilities(probabilities: np.ndarray, class_names, class_counts,
                              path: str, *, max_classes: int = 100,
                              columns: int | None = None) -> None:
  """One panel per class: P(pixel on | class) on a fixed 0..1 scale, so panels compare."""
  count = min(len(probabilities), max_classes)
  columns = min(columns or (5 if count <= 10 else 10), count)
  rows = math.ceil(count / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns + 1.2, 1.7 * rows + 0.6),
                           squeeze=False, layout='constrained')
  shown = None
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= count:
      continue
    image = probabilities[i]
    if image.shape[-1] == 3:  # Colour: each channel's probability as that channel.
      shown = ax.imshow(image, interpolation='nearest')
    else:
      shown = ax.imshow(image.mean(-1), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
    ax.set_title(f'{class_names[i]} (n={int(class_counts[i])})', fontsize=8)
  if shown is not None and probabilities.shape[-1] != 3:
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label='P(pixel on | class)')
  more = f' (first {count} of {len(probabilities)} classes)' if count < len(probabilities) else ''
  fig.suptitle('Bernoulli Naive Bayes: per-class pixel probabilities' + more, fontsize=10)
  fig.savefig(path, dpi=100)
  plt.close(fig)
