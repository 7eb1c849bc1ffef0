"""Naive Bayes evaluator: the fitted model itself, p_cd = P(pixel d on | class c).

Reads no data. Metric: `train_examples`, the number of examples counted (the training
split size after an exact pass). Figure, in `workdir/<name>/`:
`class_pixel_probabilities.png`, one panel per class showing its p_cd as an image: how
often each pixel is on in that class's training images (smoothed), which is everything
the model knows about the class.
"""

import os

import jax
import numpy as np

from vision_jax import config_lib, evaluators, parallel, plotting


class Evaluator(evaluators.Evaluator):
  """Options: max_classes (panels drawn), columns (None: 5, or 10 for more than 10
  classes)."""
  OPTIONS = {'max_classes': 100, 'columns': None}
  READS_DATA = False

  def __init__(self, method, config, **kwargs):
    if not hasattr(method, 'pixel_probabilities'):
      raise config_lib.ConfigError(
          f'evaluator type naive_bayes needs method naive_bayes, not {method.config.method}')
    super().__init__(method, config, **kwargs)
    names = method.data_info.class_names
    self.class_names = names or tuple(map(str, range(method.data_info.num_classes)))

  def evaluate(self, state, *, step, rng):
    del step, rng
    return {'train_examples': float(parallel.fetch(state.params['class_counts']).sum())}

  def figures(self, state, *, step, rng):
    del step, rng
    if jax.process_index() != 0:
      return []
    params = parallel.fetch(state.params)
    probabilities = np.asarray(self.method.pixel_probabilities(params))  # [C, H, W, ch]
    path = os.path.join(self.make_outdir(), 'class_pixel_probabilities.png')
    plotting.class_pixel_probabilities(
        probabilities, self.class_names, params['class_counts'], path,
        max_classes=self.config.max_classes, columns=self.config.columns)
    return [path]
