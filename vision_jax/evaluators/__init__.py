"""Evaluators, chosen by `type` in `config.evals.<name>`; each yields named metrics.

An evaluator reads its own split with padded, masked batches (see
`data.pipeline.eval_batches`), so every example counts exactly once whatever the batch
size and device count, and writes figures at the end of training.
"""

import importlib
from typing import Iterator

import ml_collections

from vision_jax import config_lib, parallel
from vision_jax.data import pipeline


class Evaluator:
  """Base class: iterates the eval split as global, data-sharded batches.

  Attributes:
    method: the training method being evaluated.
    config: this evaluator's config (type, split, pp, batch_size, ...).
    mesh: the device mesh.
  """

  def __init__(self, method, config: ml_collections.ConfigDict, *, builder, mesh):
    self.method = method
    self.config = config
    self.mesh = mesh
    self._builder = builder

  def global_batches(self) -> Iterator[dict]:
    local_batch_size = parallel.local_batch_size(self.config.batch_size, self.mesh)
    for batch in pipeline.eval_batches(
        self._builder, self.config.split, batch_size=local_batch_size,
        pp=self.config.pp, cache=self.config.get('cache', True)):
      yield parallel.to_global(batch, self.mesh)

  def evaluate(self, state) -> dict[str, float]:
    raise NotImplementedError

  def figures(self, state, outdir: str) -> list[str]:
    """Writes this evaluator's PNGs into `outdir`; returns their paths."""
    del state, outdir
    return []


def get_evaluator(method, config: ml_collections.ConfigDict, **kwargs) -> Evaluator:
  try:
    module = importlib.import_module(f'vision_jax.evaluators.{config.type}')
  except ModuleNotFoundError as e:
    if e.name != f'vision_jax.evaluators.{config.type}':
      raise
    raise config_lib.ConfigError(f'unknown evaluator type {config.type!r}') from None
  return module.Evaluator(method, config, **kwargs)
