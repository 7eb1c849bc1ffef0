"""Temporal attention evaluator: where in time does a video Transformer's class token look?

Reads the attention weights of the last block of the encoder `encoder` (the method's
`attention_weights` prediction; for ViViT 'temporal_encoder', whose keys are the
temporal class token then one token per time index) and takes the class token's row,
averaged over heads: a distribution over the T' time tokens. Metrics: `entropy`, its
mean entropy divided by log T' (1 for attention spread evenly, 0 for one time token),
and `num_examples`. Figure, in `workdir/<name>/`: `temporal_attention.png`, test clips
as strips of frames, the class token's weights as bars under them, titled with the
predicted and the true class.
"""

import functools
import os

import jax
import jax.numpy as jnp

from vision_jax import config_lib, evaluators, parallel, plotting
from vision_jax.data.pipeline import MASK_KEY


def class_token_attention(weights: dict[str, jax.Array], encoder: str) -> jax.Array:
  """The class token's attention over the other tokens in the last block of `encoder`,
  averaged over heads and renormalised without its weight on itself: [B, T']."""
  blocks = sorted((key for key in weights if key.startswith(f'{encoder}/encoderblock_')),
                  key=lambda key: int(key.rsplit('_', 1)[1]))
  if not blocks:
    raise config_lib.ConfigError(
        f'the model has no attention layers under {encoder!r}; it has {sorted(weights)}')
  row = weights[blocks[-1]][:, :, 0, 1:].mean(axis=1)
  return row / jnp.maximum(row.sum(-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=None)
def _jitted(attention_weights, predict, encoder: str, mesh):
  """(outputs for the figure, summed normalised entropies for the metric), jitted."""
  def outputs(state, batch):
    attention = class_token_attention(attention_weights(state, batch), encoder)
    return attention, jnp.argmax(predict(state, batch), -1)

  def sums(state, batch):
    attention, _ = outputs(state, batch)
    mask = batch[MASK_KEY].astype(jnp.float32)
    entropy = -jnp.sum(attention * jnp.log(jnp.maximum(attention, 1e-12)), -1)
    entropy = entropy / jnp.log(max(attention.shape[-1], 2))
    return {'count': mask.sum(), 'entropy': jnp.sum(entropy * mask)}

  return (jax.jit(parallel.under_mesh(mesh, outputs)),
          jax.jit(parallel.under_mesh(mesh, sums), out_shardings=parallel.replicated(mesh)))


class Evaluator(evaluators.Evaluator):
  """Options: encoder (the submodule whose last block is read), num_figure_clips."""
  OPTIONS = {'pred': 'attention_weights', 'encoder': 'temporal_encoder',
             'num_figure_clips': 6}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    self._outputs, self._sums = _jitted(method.prediction_function(self.config.pred),
                                        method.prediction_function('predict'),
                                        self.config.encoder, self.mesh)
    self.class_names = method.data_info.class_names

  def evaluate(self, state, *, step, rng):
    del step, rng
    totals = self.summed(self._sums, state)
    count = float(totals['count'])
    return {'entropy': float(totals['entropy']) / max(count, 1.0), 'num_examples': count}

  def figures(self, state, *, step, rng):
    del rng
    batch, _ = next(self.batches())
    (attention, predicted), mask = evaluators.local_outputs(self._outputs(state, batch),
                                                            batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    count = self.config.num_figure_clips
    clips = parallel.local_rows(batch['image'])[mask][:count]
    labels = parallel.local_rows(batch['label'])[mask][:count]
    predicted = predicted[mask][:count]
    path = os.path.join(self.make_outdir(), 'temporal_attention.png')
    plotting.clip_strips(
        clips, [f'predicted: {self.class_names[p]}   true: {self.class_names[t]}'
                for p, t in zip(predicted, labels)],
        correct=predicted == labels, attention=attention[mask][:count], path=path,
        title=f"{self.name}: the class token's attention over time (last temporal "
              f'block, mean of heads), step {step}')
    return [path]
