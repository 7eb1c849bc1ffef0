"""Evaluators, chosen by `type` in `config.evals.<name>`; each yields named metrics.

An evaluator reads its own data (any dataset and split: `data.name`, `data.split`,
`data.data_dir`; the training dataset by default) with its own `pp` and `batch_size`,
as padded, masked batches (see `data.pipeline.eval_batches`), so every example counts
exactly once whatever the batch size and device count. It calls the method's prediction
function named by `pred` (big_vision's `pred`; unset, the type's own: 'predict' for
most) on `method.eval_state(state)`, runs every `every_steps` (the experiment's
`eval_every_steps` when unset) and at the end, and writes its figures into `workdir/<name>/` at the end and every `figures_every_steps`,
so two evaluators never write the same file. Fields named in `keep_on_cpu` (strings,
all the captions or boxes of an image) travel beside the device batch, on the host.
"""

import functools
import importlib
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision_jax import config_lib, parallel
from vision_jax.data import pipeline


class Evaluator:
  """Base class: the evaluator's data as global, data-sharded batches, and its outputs.

  Subclasses set `OPTIONS` (their own fields, with defaults) and implement `evaluate`,
  and `figures` if they draw any; one that reads no data (it looks at the state only)
  sets `READS_DATA = False`.

  Attributes:
    method: the training method being evaluated.
    config: this evaluator's config, completed with the defaults.
    name: its name in `config.evals`; metrics are logged as `<name>/<metric>`.
    outdir: `workdir/<name>`, where its figures and files go.
    mesh: the device mesh.
    builder: the TFDS builder of its data.
    data_info: sizes, labels and metadata of its data.
    predict: the jitted prediction function `(state, batch) -> outputs`.
    initial_state: `() -> state`, the state the run starts from before any step (the
      trainer's jitted init, for baselines such as a probe of the untrained encoder),
      or None outside the trainer.
  """
  OPTIONS: dict[str, Any] = {}
  # Fields of a type's config that hold another component's options, passed on as given.
  FREE_FORM_OPTIONS: tuple[str, ...] = ()
  READS_DATA = True

  def __init__(self, method, config: ml_collections.ConfigDict, *, name: str, workdir: str,
               mesh, train_data: ml_collections.ConfigDict,
               initial_state: Callable[[], Any] | None = None):
    defaults = config_lib.evaluator_config()
    defaults.update(self.OPTIONS)
    self.config = config_lib.complete(config, defaults, f'evals.{name}')
    if self.config.pred is None:  # The type's own default (a probe's is 'embed_image').
      self.config.pred = self.OPTIONS.get('pred', 'predict')
    self.method = method
    self.name = name
    self.outdir = os.path.join(workdir, name)
    self.mesh = mesh
    self.initial_state = initial_state
    if not self.READS_DATA:
      return
    data = self.config.data
    own_data = bool(data.name)
    self.builder = pipeline.get_builder(data.name if own_data else train_data.name,
                                        data.data_dir if own_data else train_data.data_dir)
    pipeline.split_size(self.builder, data.split)  # A missing split is an error now.
    pipeline.check_pp(self.config.pp, self.builder, f'evals.{name}.pp')
    self.data_info = pipeline.dataset_info(self.builder, data.name or train_data.name)
    # An evaluator that calls the method in other ways (the generative one) sets pred ''.
    self.predict = (_jitted(method.prediction_function(self.config.pred), mesh)
                    if self.config.pred else None)

  def due(self, step: int, default_every_steps: int) -> bool:
    every = self.config.every_steps
    every = default_every_steps if every is None else every
    return bool(every) and step % every == 0

  def figures_due(self, step: int) -> bool:
    every = self.config.figures_every_steps
    return bool(every) and step % every == 0

  def batches(self) -> Iterator[tuple[dict[str, jax.Array], dict[str, list]]]:
    """`(device_batch, host_fields)`: the global batch and this process's host fields
    (`{key: [one numpy array per local row, None for padding]}`)."""
    local_batch_size = parallel.local_batch_size(self.config.batch_size, self.mesh)
    for batch in pipeline.eval_batches(
        self.builder, self.config.data.split, batch_size=local_batch_size,
        pp=self.config.pp, cache=self.config.cache, keep_on_cpu=self.config.keep_on_cpu,
        skip_undecodable=self.config.skip_undecodable):
      host = batch.pop(pipeline.HOST_KEY)
      yield parallel.to_global(batch, self.mesh), host

  def summed(self, batch_sums: Callable, state) -> dict[str, np.ndarray]:
    """`batch_sums(state, batch)` (a jitted function returning replicated sums) added up
    over every batch of the evaluator's data, fetched to the host."""
    totals = None
    for batch, _ in self.batches():
      sums = batch_sums(state, batch)
      totals = sums if totals is None else _add_trees(totals, sums)
    return parallel.fetch(totals)

  def evaluate(self, state, *, step: int, rng: jax.Array) -> dict[str, float]:
    """The metrics of `state` on this evaluator's data (every process calls it)."""
    raise NotImplementedError

  def figures(self, state, *, step: int, rng: jax.Array) -> list[str]:
    """Writes this evaluator's figures and files into `outdir`; returns their paths.

    Every process calls it; only process 0 writes.
    """
    del state, step, rng
    return []

  def make_outdir(self) -> str:
    os.makedirs(self.outdir, exist_ok=True)
    return self.outdir


_add_trees = jax.jit(functools.partial(jax.tree.map, jnp.add))


@functools.lru_cache(maxsize=None)
def _jitted(fn: Callable, mesh) -> Callable:
  """One compiled prediction function per (method function, mesh), shared by evaluators."""
  return jax.jit(parallel.under_mesh(mesh, fn))


def get_evaluator(method, config: ml_collections.ConfigDict, **kwargs) -> Evaluator:
  eval_type = config.get('type') if isinstance(config, (dict, ml_collections.ConfigDict)) else None
  if not eval_type:
    raise config_lib.ConfigError(f'evaluator {kwargs.get("name")!r} has no type')
  try:
    module = importlib.import_module(f'vision_jax.evaluators.{eval_type}')
  except ModuleNotFoundError as e:
    if e.name != f'vision_jax.evaluators.{eval_type}':
      raise
    raise config_lib.ConfigError(f'unknown evaluator type {eval_type!r}') from None
  return module.Evaluator(method, config, **kwargs)


def gather_rows(local_rows: list[Any]) -> list[Any] | None:
  """All processes' rows (any picklable objects) on process 0, in process order; None
  elsewhere. For metrics that need every prediction at once (mAP, BLEU)."""
  gathered = parallel.gather_to_main(local_rows)
  return None if gathered is None else [row for rows in gathered for row in rows]


def local_outputs(outputs, mask: jax.Array) -> tuple[Any, np.ndarray]:
  """This process's rows of data-sharded outputs and of the mask, as numpy."""
  return jax.tree.map(parallel.local_rows, outputs), parallel.local_rows(mask).astype(bool)
