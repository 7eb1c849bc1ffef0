"""Rotation evaluator: how well does the pretext classifier tell the four rotations apart?

Rotates every image of `data.split` by 0, 90, 180 and 270 degrees and scores the
method's rotation classifier (`pred`, 'predict_rotations': logits [N, 4, 4], see
`vision_jax.methods.rotation`). Metrics: `accuracy` over all 4N rotated images,
`accuracy_<degrees>` for each rotation, and `num_examples` (images). Figure, in
`workdir/<name>/`: `rotations.png`, test images under each rotation titled with the
rotation the classifier predicts (green when right, red when wrong).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import evaluators, parallel, plotting
from vision_jax.data.pipeline import MASK_KEY

DEGREES = (0, 90, 180, 270)


@functools.lru_cache(maxsize=None)
def _jitted_sums(predict, mesh):
  def sums(state, batch):
    logits = predict(state, batch)
    mask = batch[MASK_KEY].astype(jnp.float32)
    correct = jnp.argmax(logits, -1) == jnp.arange(len(DEGREES))  # [N, 4]
    return {'count': mask.sum(), 'correct': jnp.sum(correct * mask[:, None], 0)}
  return jax.jit(parallel.under_mesh(mesh, sums), out_shardings=parallel.replicated(mesh))


class Evaluator(evaluators.Evaluator):
  """Options: num_figure_images (test images drawn, each under its four rotations)."""
  OPTIONS = {'pred': 'predict_rotations', 'num_figure_images': 6}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    self._sums = _jitted_sums(self.predict, self.mesh)

  def evaluate(self, state, *, step, rng):
    del step, rng
    totals = self.summed(self._sums, state)
    count, correct = float(totals['count']), np.asarray(totals['correct'], np.float64)
    results = {'accuracy': float(correct.sum() / (len(DEGREES) * count)),
               'num_examples': count}
    results.update({f'accuracy_{d}': float(c / count) for d, c in zip(DEGREES, correct)})
    return results

  def figures(self, state, *, step, rng):
    del rng
    batch, _ = next(self.batches())
    logits, mask = evaluators.local_outputs(self.predict(state, batch), batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    images = parallel.local_rows(batch['image'])[mask][:self.config.num_figure_images]
    predicted = logits[mask][:len(images)].argmax(-1)  # [n, 4]
    cells = [np.rot90(image, r) for image in images for r in range(len(DEGREES))]
    labels = [f'{DEGREES[r]}° as {DEGREES[p]}°' for row in predicted for r, p in enumerate(row)]
    correct = (predicted == np.arange(len(DEGREES))).reshape(-1)
    path = os.path.join(self.make_outdir(), 'rotations.png')
    plotting.labelled_image_grid(
        np.stack(cells), labels, correct=correct, path=path,
        title=f'{self.name}: test images rotated by 0, 90, 180, 270 degrees and the '
              f'predicted rotation (red: wrong), step {step}')
    return [path]
