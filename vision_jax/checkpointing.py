"""Orbax checkpoints of the whole train state, saved every N steps and resumed automatically.

The state (params, optimizer state, BatchNorm statistics, step) is the only thing
saved: the data position and the per-step randomness are functions of the step.
"""

import functools
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names its path."""


@functools.cache
def _save_cpu_arrays_whole() -> None:
  """Replica-parallel saving slices each replicated array per device, compiling a slice
  per shape and device: slow with many (fake) CPU devices, and no gain there."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns about any override.
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)


class Checkpointer:
  """Saves and restores train states under `workdir/checkpoints/<step>`.

  Attributes:
    directory: where the step folders live.
    every_steps: the save interval; the trainer also saves at the end and on SIGTERM.
  """

  def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
    if jax.default_backend() == 'cpu':
      _save_cpu_arrays_whole()
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.every_steps = max(1, every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the latest (or given) step into the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step))
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # Orbax raises many types for corrupt or mismatched trees.
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(
          f'checkpoint {path} cannot be restored into this experiment\'s state '
          f'(corrupt, or saved by a different model/optimizer): {reason[:500]}. '
          f'Nothing was changed; move it away or use another --workdir.') from e

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as `step` (asynchronously); every process must call it."""
    if step != self.latest_step():
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()



def read_latest(workdir: str) -> dict[str, Any]:
  """The latest saved state of a run as host numpy arrays, e.g. `read_latest(w)['params']`.

  Independent of the devices and processes that saved it: for analysis and research code.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = [int(s) for s in os.listdir(directory) if s.isdigit()] if os.path.isdir(directory) else []
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}')
  path = os.path.join(directory, str(max(steps)), 'default')
  checkpointer = ocp.StandardCheckpointer()
  try:
    saved = checkpointer.metadata(path).item_metadata.tree
    return checkpointer.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved))
  except Exception as e:  # Orbax raises many types for corrupt checkpoints.
    raise CheckpointError(f'checkpoint {path} cannot be read: {e}') from e
