r"""Times the trainer's compiled training step on synthetic batches.

  python -m vision_jax.benchmark \
      --config experiments/classification/resnet_cifar10.py [--batch_size N] \
      [--steps N] [--warmup N] [--cpu_kernels] [--torch] [--cpu_devices N] \
      [--default_allocator] [--config.<field>=<value> ...]

The step is the one `vision_jax.train` runs (`train.make_train_step`: the same jitted,
sharded, state-donating update over every device), fed a random batch of the config's
`data.input_shape` and `data.num_classes` (an image in each of the method's
`TRAIN_IMAGE_KEYS`: SimCLR's two views), so no dataset is needed. After `--warmup`
steps, each of `--steps` steps is timed on its own and the median is reported as
ms/step and examples/s, with the compile time and the FLOP/s achieved by the step's
XLA-counted FLOPs (multiply-add = 2; always counted on the step built with Flax's own
layers, since XLA cannot see inside the custom calls of the CPU kernels).

`--cpu_kernels` times the step both ways: `jax` on Flax's own layers and
`jax-kernels` with the CPU kernels of `vision_jax.kernels` injected
(`config.model.cpu_kernels=True`; on XLA:CPU only). `--torch` also times a PyTorch
eager twin of the model (`vision_jax/benchmark_torch.py`: same layers, batch and
optimizer, channels-last, one thread per core) in the same process. They take turns of
10 timed steps, each turn after 3 untimed ones (the first steps after a switch are
slower), so that a shared machine's load falls on all alike.

On a CPU, JAX runs one device, like the trainer; `--cpu_devices N` splits the host
into N devices instead.
"""

import copy
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from vision_jax import config_lib, host_memory, parallel, train
from vision_jax.data import pipeline
from vision_jax.methods import get_method_class


def use_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices, unless JAX has already started."""
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    pass  # The backend is up (e.g. under pytest): its devices stay.


# The learning-rate schedule is built for a nominal run; it does not change a step's cost.
_NOMINAL_STEPS_PER_EPOCH = 100


def synthetic_info(config) -> pipeline.DatasetInfo:
  num_classes = config.data.get('num_classes')
  if not num_classes or config.data.get('input_shape') is None:
    raise config_lib.ConfigError(
        'the config does not set data.input_shape and data.num_classes, which the '
        'benchmark needs to make synthetic batches')
  return pipeline.DatasetInfo(name='synthetic', num_examples={}, num_classes=num_classes,
                              class_names=None)


def time_steps(steps_by_name: dict[str, Callable[[], Any]], steps: int, warmup: int,
               block: int = 10, settle: int = 3) -> dict[str, dict[str, float]]:
  """Median and fastest ms/step of each step function, taking turns block by block.

  Each turn runs `settle` untimed steps, then up to `block` timed ones: turns spread a
  shared machine's load over all the functions, and the untimed steps absorb the
  switch (right after PyTorch's steps, the JAX step's first two run up to 40% slower,
  while PyTorch's OpenMP threads still hold the cores).
  """
  for step in steps_by_name.values():
    for _ in range(warmup):
      step()
  times = {name: [] for name in steps_by_name}
  while any(len(t) < steps for t in times.values()):
    for name, step in steps_by_name.items():
      for _ in range(settle):
        step()
      for _ in range(min(block, steps - len(times[name]))):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
  return {name: {'ms_per_step': 1e3 * statistics.median(t), 'min_ms_per_step': 1e3 * min(t)}
          for name, t in times.items()}


def with_cpu_kernels(config, cpu_kernels: bool):
  """A copy of the config with `model.cpu_kernels` set."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.cpu_kernels = cpu_kernels
  return config


def _lowered_step(config, mesh, batch):
  """The trainer's step for this config: its state initialiser and its lowered step."""
  info = synthetic_info(config)
  total_steps = config_lib.steps(config, 'total', _NOMINAL_STEPS_PER_EPOCH) or 10_000
  method = get_method_class(config.method)(
      config, info, total_steps=total_steps, steps_per_epoch=_NOMINAL_STEPS_PER_EPOCH)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  abstract_state, state_sharding, init, train_step = train.make_train_step(
      method, abstract_batch, mesh, config.seed)
  state_spec = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            abstract_state, state_sharding)
  return init, train_step.lower(state_spec, batch)


def jax_step(config, count_flops: bool = True
             ) -> tuple[Callable[[], None], dict[str, float]]:
  """The trainer's compiled step as a closure, with its compile seconds and FLOPs."""
  mesh = parallel.make_mesh()
  info = synthetic_info(config)
  batch_size = config.batch_size
  shape = (batch_size, *config.data.input_shape)
  rng = np.random.default_rng(config.seed)
  image_keys = get_method_class(config.method).TRAIN_IMAGE_KEYS
  local = {key: rng.standard_normal(shape, np.float32) for key in image_keys}
  local['label'] = rng.integers(0, info.num_classes, batch_size, dtype=np.int32)
  batch = parallel.to_global(local, mesh)
  init, lowered = _lowered_step(config, mesh, batch)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = 0.0
  if count_flops:
    # XLA cannot count inside the CPU kernels' custom calls: count the step built on
    # Flax's layers (the whole step, before it is split over devices).
    if config.model.get('cpu_kernels', False):
      lowered = _lowered_step(with_cpu_kernels(config, False), mesh, batch)[1]
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) if cost else 0.0

  state = {'state': init()}
  def step():
    state['state'], metrics = compiled(state['state'], batch)
    jax.block_until_ready(metrics['loss'])

  return step, {'compile_s': compile_s, 'flops_per_step': flops}


def torch_step(config) -> Callable[[], None] | None:
  """The PyTorch twin's eager step; None (with a message) when PyTorch is missing."""
  try:
    from vision_jax import benchmark_torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('PyTorch is not installed: `pip install torch` to compare (it is optional).')
    return None
  return benchmark_torch.make_train_step(
      config, tuple(config.data.input_shape), config.data.num_classes, config.batch_size)


def _report(name: str, result: dict[str, float], batch_size: int, flops: float) -> str:
  ms = result['ms_per_step']
  line = (f'{name:<11s} {batch_size / ms * 1e3:9.1f} ex/s  {ms:9.2f} ms/step '
          f'(min {result["min_ms_per_step"]:.2f})  {flops / ms * 1e-6:7.2f} GFLOP/s')
  if 'compile_s' in result:
    line += f'  compile {result["compile_s"]:.1f} s'
  return line


def main(argv: Sequence[str] | None = None) -> int:
  parser = config_lib.command_line_parser('python -m vision_jax.benchmark', __doc__)
  parser.add_argument('--batch_size', type=int, default=None,
                      help="global batch size (default: the config's)")
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps after compiling')
  parser.add_argument('--torch', action='store_true', help='also time the PyTorch twin')
  parser.add_argument('--cpu_kernels', action='store_true',
                      help='time the step both on Flax\'s own layers and with the CPU '
                      'kernels of vision_jax.kernels (config.model.cpu_kernels)')
  parser.add_argument('--default_allocator', action='store_true',
                      help="leave glibc's malloc as it is, to measure what "
                      'vision_jax.host_memory saves (the trainer keeps freed memory)')
  parser.add_argument('--cpu_devices', type=int, default=None,
                      help='JAX devices on a CPU host (default: 1, as in the trainer)')
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, _ = parser.parse_known_args(argv)
    if not args.default_allocator:
      host_memory.keep_freed_memory()
    batch_size = {'batch_size': str(args.batch_size)} if args.batch_size else {}
    args, config = config_lib.parse_command_line(parser, argv, batch_size)
    if args.cpu_devices:
      use_cpu_devices(args.cpu_devices)
    if args.cpu_kernels:
      step, result = jax_step(with_cpu_kernels(config, False))
      steps = {'jax': step, 'jax-kernels': jax_step(with_cpu_kernels(config, True),
                                                    count_flops=False)[0]}
    else:
      step, result = jax_step(config)
      steps = {'jax': step}
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.torch and (torch := torch_step(config)):
    steps['torch'] = torch
  timings = time_steps(steps, args.steps, args.warmup)
  devices = jax.devices()
  print(f'{args.config}: {config.model.name} {dict(config.model)}, batch {config.batch_size} '
        f'of {tuple(config.data.input_shape)}, {config.compute_dtype}')
  print(f'{len(devices)} {devices[0].platform} device(s), {len(os.sched_getaffinity(0))} '
        f'cores; median of {args.steps} steps after {args.warmup} warm-up steps'
        f'{", in turns of 10" if len(steps) > 1 else ""}; '
        f'{result["flops_per_step"] / 1e9:.2f} GFLOP per step (XLA cost analysis)')
  print(_report('jax', {**timings['jax'], **result}, config.batch_size,
                result['flops_per_step']))
  for name in ('jax-kernels', 'torch'):
    if name in timings:
      print(_report(name, timings[name], config.batch_size, result['flops_per_step']))
  for name in ('jax-kernels', 'torch'):
    if name in timings:
      print(f'jax / {name} speed: '
            f'{timings[name]["ms_per_step"] / timings["jax"]["ms_per_step"]:.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
