"""Processes, devices and shardings: one `data` mesh axis over every device of every process.

This is the current form of pmap-style data parallelism: the train step is one `jax.jit`
with explicit shardings; batches are split along the `data` axis, the state is
replicated, and XLA inserts the gradient all-reduce.
"""

import functools
import os
import pickle
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_jax import config_lib

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process job; arguments fall back to the JAX_* environment variables.

  One process per host (or several on one host for testing): the same command run
  with `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', 0)) or None
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if not coordinator_address or (num_processes or 1) == 1:
    return
  # CPU collectives across processes go through gloo (no effect on accelerators).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def under_mesh(mesh: jax.sharding.Mesh, fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` traced with `mesh` as the abstract mesh (`jax.sharding.get_abstract_mesh()`).

  Ops that XLA's partitioner cannot split, such as the custom-call convolutions of
  `vision_jax.kernels.cpu_conv`, look there to run per device on their shard of the
  batch (otherwise XLA would gather the whole batch onto every device).
  """
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return traced


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1D `data` mesh over all devices (or the first `num_devices`, for tests)."""
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError('num_devices only applies to single-process runs')
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh) -> int:
  """The per-process share of a global batch, checked to split evenly over devices."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise config_lib.ConfigError(f'batch_size {global_batch_size} is not divisible by the '
                     f'{num_devices} devices')
  return global_batch_size // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assembles the process-local batches into global arrays sharded along `data`."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def fetch(tree: Any) -> Any:
  """Host copies of replicated outputs (valid in every process of a multi-host job).

  A data-sharded array would give only one device's rows: that is an error, not a
  silent truncation (use `local_rows` and `gather_to_main` for per-example outputs).
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated:
      raise ValueError(f'fetch expects replicated arrays; got one of shape {x.shape} '
                       f'sharded as {x.sharding}')
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
  return jax.tree.map(get, tree)


def gather_to_main(obj: Any) -> list[Any] | None:
  """Every process's `obj` (anything picklable), on process 0 in process order; None on
  the others. All processes must call it. One process: `[obj]`."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = multihost_utils.process_allgather(np.int64(data.size))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everything = multihost_utils.process_allgather(padded)
  if jax.process_index() != 0:
    return None
  return [pickle.loads(row[:size].tobytes()) for row, size in zip(everything, sizes)]


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a `data`-sharded global array, in order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # Replicas of one block appear once.
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)
