"""Orbax checkpoints of the whole train state, saved every N steps and resumed automatically.

The state (params, optimizer state, BatchNorm statistics, step) is the only thing
saved: the data position and the per-step randomness are functions of the step.
`initialize_from` starts a new run from parts of another run's checkpoint.
"""

import asyncio
import contextlib
import functools
import json
import logging
import os
from typing import Any, Iterator

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils as _orbax_asyncio


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


def _run_until_every_task_is_done(coro):
  """Orbax's `_run_sync_via_new_loop`, except that the loop outlives the reads it started.

  Orbax reads a checkpoint's arrays concurrently and closes its event loop as soon as
  one read fails; the reads still in flight then call back into the closed loop, and
  each prints a `RuntimeError: Event loop is closed` traceback. Here the loop first
  waits for them (their errors are the one already raised).
  """
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    try:
      return loop.run_until_complete(coro)
    except BaseException:
      while pending := asyncio.all_tasks(loop):
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      raise
  finally:
    asyncio.set_event_loop(None)
    loop.close()


class _HeldLogs(logging.Filter):
  """Holds back the records of the `absl` logger (Orbax's) while it is installed."""

  def __init__(self):
    super().__init__()
    self.records = []
    self._logger = logging.getLogger('absl')

  def filter(self, record):
    self.records.append(record)
    return False

  def __enter__(self):
    self._logger.addFilter(self)
    return self

  def __exit__(self, *exc):
    self._logger.removeFilter(self)

  def release(self):
    """Logs the held records after all, e.g. once a read that might fail has succeeded."""
    records, self.records = self.records, []
    for record in records:
      self._logger.handle(record)


@contextlib.contextmanager
def _reading(path: str, what: str, hint: str = '',
             held: _HeldLogs | None = None) -> Iterator[None]:
  """Turns any failure to read the checkpoint at `path` into one `CheckpointError`.

  On failure nothing else is printed: Orbax's own log lines about the damage (kept for
  a successful read, with those `held` earlier) and the tracebacks of its abandoned
  concurrent reads are dropped.
  """
  original = getattr(_orbax_asyncio, '_run_sync_via_new_loop', None)
  if original is not None:
    _orbax_asyncio._run_sync_via_new_loop = _run_until_every_task_is_done
  try:
    with _HeldLogs() as logs:
      yield
  except CheckpointError:
    raise
  except Exception as e:  # Orbax raises many types for corrupt or mismatched trees.
    text = str(e).strip()
    reason = text.splitlines()[0][:500] if text else type(e).__name__
    if isinstance(e, json.JSONDecodeError):
      reason = f'a metadata file is not valid JSON ({reason})'
    raise CheckpointError(f'checkpoint {path} {what}: {reason}{hint}') from e
  else:
    if held is not None:
      held.release()
    logs.release()
  finally:
    if original is not None:
      _orbax_asyncio._run_sync_via_new_loop = original


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
    # Orbax logs an error for each damaged step it finds here; that is only news if the
    # step is never restored (`restore` says what is wrong with it in one line).
    with _HeldLogs() as self._held_logs:
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the latest (or given) step into the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step))
    with _reading(path, 'cannot be restored into this experiment\'s state (corrupt, or '
                  'saved by a different model/optimizer)',
                  '. Nothing was changed; move it away or use another --workdir.',
                  held=self._held_logs):
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as `step` (asynchronously); every process must call it."""
    self._held_logs.release()
    if step != self.latest_step():
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._held_logs.release()
    self._manager.close()


def saved_steps(workdir: str) -> list[int]:
  """The finished steps under `workdir/checkpoints` (Orbax renames a save into place)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in os.listdir(directory)
                if s.isdigit() and os.path.isdir(os.path.join(directory, s, 'default')))


def _read_tree_metadata(path: str) -> Any:
  """The saved tree of `ArrayMetadata` (shape, dtype) of the item folder `path`."""
  with _reading(path, 'cannot be read (corrupt or not an Orbax checkpoint)'):
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
      metadata = checkpointer.metadata(path)
    tree = getattr(getattr(metadata, 'item_metadata', None), 'tree', None)
    if tree is None:
      raise ValueError('Orbax found no readable metadata in it')
    return tree


def _restore_item(path: str, target: Any) -> Any:
  """Restores the item folder `path` as `target`; its `ocp.PLACEHOLDER` leaves are not read."""
  with _reading(path, 'cannot be read (corrupt)'):
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))


def read_latest(workdir: str) -> dict[str, Any]:
  """The latest saved state of a run as host numpy arrays, e.g. `read_latest(w)['params']`.

  Independent of the devices and processes that saved it: for analysis and research code.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = saved_steps(os.path.dirname(directory))
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}')
  path = os.path.join(directory, str(steps[-1]), 'default')
  saved = _read_tree_metadata(path)
  return _restore_item(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved))


def restore_latest(workdir: str, abstract_state: Any) -> tuple[int, Any]:
  """`(step, state)`: a run's latest checkpoint read into `abstract_state` (a tree of
  `jax.ShapeDtypeStruct`s with shardings), without opening the run for writing."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = saved_steps(os.path.dirname(directory))
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}')
  path = os.path.join(directory, str(steps[-1]), 'default')
  with _reading(path, 'cannot be restored into the state of the run\'s config (corrupt, '
                'or saved by a different model)'):
    with ocp.StandardCheckpointer() as checkpointer:
      return steps[-1], checkpointer.restore(path, abstract_state)


# Starting from another run's checkpoint.

def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _path_name(path) -> str:
  return '/'.join(_key_name(k) for k in path)


def _flat(tree: Any) -> dict[str, Any]:
  """`{'params/dense1/kernel': leaf, ...}`: the leaves by '/'-joined path."""
  return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _children(node: Any) -> list[str] | None:
  if isinstance(node, dict):
    return [str(k) for k in node]
  if isinstance(node, (list, tuple)):
    return [str(i) for i in range(len(node))]
  return None


def _find(tree: Any, path: str, where: str) -> None:
  """Checks that `path` names a subtree of the nested dicts/lists `tree`."""
  node, walked = tree, []
  for name in path.split('/'):
    children = _children(node)
    if children is None or name not in children:
      level = '/'.join(walked) or 'the top level'
      has = ', '.join(children) if children else 'nothing'
      raise CheckpointError(f'init_from: {where} has no subtree {path!r}: '
                            f'at {level} it has {has}')
    node = node[name] if isinstance(node, dict) else node[int(name)]
    walked.append(name)


def _join(prefix: str, relative: str) -> str:
  return f'{prefix}/{relative}' if relative else prefix


def _under(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
  """The leaves at or below `prefix`, keyed by their path relative to it."""
  return {('' if p == prefix else p[len(prefix) + 1:]): leaf for p, leaf in flat.items()
          if p == prefix or p.startswith(prefix + '/')}


def _checkpoint_item(path: str, step: int | None) -> str:
  """The Orbax item folder that `init_from.path` (and `init_from.step`) name."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(f'init_from.path {path} does not exist')
  if os.path.isdir(os.path.join(path, 'checkpoints')):  # A workdir.
    steps = saved_steps(path)
    if not steps:
      raise CheckpointError(f'init_from.path {path}: no checkpoint in {path}/checkpoints')
    if step is not None and step not in steps:
      raise CheckpointError(f'init_from.path {path} has no checkpoint of step {step}; '
                            f'it has steps {steps}')
    return os.path.join(path, 'checkpoints', str(steps[-1] if step is None else step), 'default')
  if os.path.isdir(os.path.join(path, 'default')):  # <workdir>/checkpoints/<step>.
    item, name = os.path.join(path, 'default'), os.path.basename(path)
  elif os.path.isfile(os.path.join(path, '_METADATA')):  # Its `default` item folder.
    item, name = path, os.path.basename(os.path.dirname(path))
  else:
    raise CheckpointError(
        f'init_from.path {path} is not a run\'s workdir, a checkpoint folder '
        '(<workdir>/checkpoints/<step>) nor its default/ item folder')
  if step is not None and name != str(step):
    raise CheckpointError(f'init_from.path {path} is the checkpoint of step {name}, '
                          f'but init_from.step is {step}')
  return item


def _as_paths(paths: Any) -> list[str]:
  if isinstance(paths, str):
    paths = (paths,)
  return [str(p).strip('/') for p in paths or ()]


def _subtree_pairs(subtrees: Any) -> list[tuple[str, str]]:
  if isinstance(subtrees, str):
    subtrees = (subtrees,)
  pairs = []
  for spec in subtrees or ():
    source, _, target = str(spec).partition(':')
    source, target = source.strip('/'), (target or source).strip('/')
    if not source or not target or ':' in target:
      raise CheckpointError(f'init_from.subtrees: {spec!r} is not a path like '
                            "'params/backbone' nor a pair like 'params/encoder:params/backbone'")
    pairs.append((source, target))
  if not pairs:
    raise CheckpointError('init_from.subtrees is empty; name what to copy, e.g. (\'params\',)')
  return pairs


# Pretrained weights that `init_from.path` may name directly (`vision_jax.convert`).
WEIGHTS_FILES = ('.safetensors', '.pth', '.pt', '.bin')


def _converted_weights(path: str) -> dict[str, Any]:
  """`{'params': ..., 'model_state': ...}` of a torchvision or open_clip weights file."""
  from vision_jax import convert  # pylint: disable=g-import-not-at-top
  try:
    return convert.convert_file(path).variables
  except convert.ConversionError as e:
    raise CheckpointError(f'init_from.path: {e}') from None


def initialize_from(init_from: ml_collections.ConfigDict, state: Any,
                    state_sharding: Any) -> Any:
  """`state` with the subtrees `init_from` names read from another run's checkpoint.

  `init_from.path` is that run's workdir (its latest checkpoint, or `init_from.step`),
  one of its checkpoint folders `<workdir>/checkpoints/<step>`, that folder's
  `default/`, the output folder of `vision_jax.convert`, or a torchvision / open_clip
  weights file (`.safetensors`, or `.pth` with PyTorch installed), converted on the fly.
  Each of `init_from.subtrees` is a '/'-separated path into the state ('params',
  'model_state/batch_stats/backbone'), copied to the same path, or a 'source:target'
  pair ('params/encoder:params/backbone'). The paths of `init_from.exclude`
  ('params/head': a new classifier on a pretrained network) keep their initial values,
  whatever the checkpoint holds there, and no other target leaf may be left without a
  source leaf. Only those arrays are read, straight into the shardings of
  `state_sharding`; the rest of `state` (the optimizer state, the step, other params) is
  returned as it came. Returns `state` itself when `init_from.path` is unset. Raises
  `CheckpointError` naming the path, subtree or leaf for a missing checkpoint or
  subtree, a different structure, shape or dtype, or a corrupt checkpoint.
  """
  if not init_from.get('path'):
    return state
  if os.path.isfile(os.path.expanduser(init_from.path)) and init_from.path.endswith(
      WEIGHTS_FILES):
    item, saved = init_from.path, _converted_weights(init_from.path)
    read = lambda target: saved
  else:
    item = _checkpoint_item(init_from.path, init_from.get('step'))
    saved = _read_tree_metadata(item)
    read = lambda target: _restore_item(item, target)
  saved_flat = _flat(saved)
  state_tree = flax.serialization.to_state_dict(state)
  state_flat, sharding_flat = _flat(state), _flat(state_sharding)

  excluded = []
  for path in _as_paths(init_from.get('exclude', ())):
    _find(state_tree, path, 'this experiment\'s state (init_from.exclude)')
    excluded.append(path)

  def kept(relative_paths, target):
    return {r: leaf for r, leaf in relative_paths.items()
            if not any(_join(target, r) == e or _join(target, r).startswith(e + '/')
                       for e in excluded)}

  targets = {}  # Checkpoint leaf path -> (state leaf path, restore target).
  for source, target in _subtree_pairs(init_from.get('subtrees', ('params', 'model_state'))):
    _find(saved, source, f'the checkpoint {item}')
    _find(state_tree, target, 'this experiment\'s state')
    from_checkpoint = kept(_under(saved_flat, source), target)
    into_state = kept(_under(state_flat, target), target)
    if set(from_checkpoint) != set(into_state):
      only_saved = sorted(set(from_checkpoint) - set(into_state))[:3]
      only_state = sorted(set(into_state) - set(from_checkpoint))[:3]
      raise CheckpointError(
          f'init_from: the checkpoint\'s {source} and this experiment\'s {target} differ '
          f'in structure: only in the checkpoint {only_saved}, only in the state {only_state} '
          f'(checkpoint {item})')
    for relative, metadata in sorted(from_checkpoint.items()):
      leaf, saved_dtype = into_state[relative], np.dtype(metadata.dtype)
      saved_path, state_path = _join(source, relative), _join(target, relative)
      if tuple(metadata.shape) != tuple(leaf.shape) or saved_dtype != leaf.dtype:
        raise CheckpointError(
            f'init_from: {saved_path} is {saved_dtype.name}{list(metadata.shape)} in the '
            f'checkpoint {item} but {state_path} is {np.dtype(leaf.dtype).name}'
            f'{list(leaf.shape)} in this experiment\'s state')
      targets[saved_path] = (state_path, jax.ShapeDtypeStruct(
          leaf.shape, leaf.dtype, sharding=sharding_flat[state_path]))

  # A partial restore: placeholders are not read, the rest lands in its final sharding.
  restore_target = jax.tree_util.tree_map_with_path(
      lambda path, _: targets.get(_path_name(path), (None, ocp.PLACEHOLDER))[1], saved)
  restored = _flat(read(restore_target))
  copies = {state_path: restored[saved_path] for saved_path, (state_path, _) in targets.items()}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  return jax.tree.unflatten(treedef, [
      jax.device_put(copies[name], sharding_flat[name]) if (name := _path_name(path)) in copies
      else leaf for path, leaf in leaves])
