r"""Times the trainer's compiled training step on synthetic batches.

  python -m vision_jax.benchmark \
      --config experiments/classification/resnet_cifar10.py [--batch_size N] \
      [--steps N] [--warmup N] [--cpu_kernels] [--torch] [--decode] [--detect] \
      [--cpu_devices N] \
      [--default_allocator] [--config.<field>=<value> ...]

The step is the one `vision_jax.train` runs (`train.make_train_step`: the same jitted,
sharded, state-donating update over every device), fed a random batch that the method
makes up (`Method.synthetic_batch`: by default an image of `data.input_shape` in each of
its `TRAIN_IMAGE_KEYS`, SimCLR's two views, and labels below `data.num_classes`;
captioning's images and token rows over a made-up vocabulary of `data.vocab_size`
tokens, `SYNTHETIC_VOCAB_SIZE` by default), so no dataset is needed. After `--warmup`
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

`--decode` also times the method's `caption` prediction (captioning: beam search with
`captioning.beam_size` beams) on a batch of synthetic images of the training batch
size, jitted as the evaluators jit it, and reports captions/s and ms per batch. Its
cost depends on the weights, since the search stops once no live beam can beat the
finished ones: it runs on freshly initialised weights, whose near-uniform next words
seldom put eos among the best beams, so that captions run to about `max_len - 1`
tokens, the most a batch costs (the mean caption length is printed with it). Weights
trained on the random tokens would say eos at once and time a decode of one step.

`--detect` also times a detector's `detect` prediction (the dense outputs, the top
candidates, class-wise NMS and, for CondInst, the masks) on a batch of synthetic images
of the training batch size and reports images/s. With fresh weights every candidate
scores about the focal prior, so NMS runs its full `max_detections` rounds, its most.

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
from vision_jax.data import text
from vision_jax.methods import base, get_method_class


def use_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices, unless JAX has already started."""
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    pass  # The backend is up (e.g. under pytest): its devices stay.


# The learning-rate schedule is built for a nominal run; it does not change a step's cost.
_NOMINAL_STEPS_PER_EPOCH = 100


# Tokens (the special ones included) of the made-up vocabulary when the config sets no
# data.vocab_size: about the scenes datasets' (some 100 words).
SYNTHETIC_VOCAB_SIZE = 124


def synthetic_info(config) -> pipeline.DatasetInfo:
  """The dataset info of synthetic batches: the config's `data.num_classes` (None if
  unset; a method that trains on labels says so) and a made-up vocabulary of
  `data.vocab_size` tokens in `metadata['vocabulary']`."""
  if config.data.get('input_shape') is None:
    raise config_lib.ConfigError(
        'the config does not set data.input_shape, which the benchmark needs to make '
        'synthetic batches')
  vocab_size = config.data.get('vocab_size') or SYNTHETIC_VOCAB_SIZE
  num_words = vocab_size - len(text.SPECIAL_TOKENS)
  if num_words < 1:
    raise config_lib.ConfigError(
        f'data.vocab_size {vocab_size} leaves no words after the '
        f'{len(text.SPECIAL_TOKENS)} special tokens')
  vocabulary = list(text.Vocabulary(f'word{i}' for i in range(num_words)).tokens)
  return pipeline.DatasetInfo(name='synthetic', num_examples={},
                              num_classes=config.data.get('num_classes') or None,
                              class_names=None, metadata={'vocabulary': vocabulary})


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


def make_method(config) -> base.Method:
  """The config's method on the synthetic dataset info, for a nominal run's length."""
  total_steps = config_lib.steps(config, 'total', _NOMINAL_STEPS_PER_EPOCH) or 10_000
  info = synthetic_info(config)
  try:
    return get_method_class(config.method)(
        config, info, total_steps=total_steps, steps_per_epoch=_NOMINAL_STEPS_PER_EPOCH)
  except ValueError as e:
    if isinstance(e, config_lib.ConfigError) or info.num_classes is not None:
      raise
    # A method that trains on labels refuses a dataset without them.
    raise config_lib.ConfigError(
        f'{e}: the benchmark makes up labels below data.num_classes, which the config '
        'does not set') from e


def _lowered_step(method, mesh, batch):
  """The trainer's step for this method: its state initialiser and its lowered step."""
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  abstract_state, state_sharding, init, train_step = train.make_train_step(
      method, abstract_batch, mesh, method.config.seed)
  state_spec = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            abstract_state, state_sharding)
  return init, train_step.lower(state_spec, batch)


class JaxStep:
  """The trainer's compiled step on a fixed synthetic batch; calling it runs one step.

  Attributes:
    method: the method whose step it is.
    mesh: the device mesh it runs on.
    state: the training state, updated (and donated) by each step.
    batch: the global synthetic batch it trains on.
    init: the jitted initialiser of a fresh training state.
  """

  def __init__(self, method: base.Method, mesh, init, compiled, batch):
    self.method, self.mesh, self.init, self.batch = method, mesh, init, batch
    self.state = init()
    self._compiled = compiled

  def __call__(self) -> None:
    self.state, metrics = self._compiled(self.state, self.batch)
    jax.block_until_ready(metrics['loss'])


def jax_step(config, count_flops: bool = True) -> tuple[JaxStep, dict[str, float]]:
  """The trainer's compiled step, with its compile seconds and FLOPs."""
  mesh = parallel.make_mesh()
  method = make_method(config)
  local = method.synthetic_batch(config.batch_size, tuple(config.data.input_shape),
                                 np.random.default_rng(config.seed))
  batch = parallel.to_global(local, mesh)
  init, lowered = _lowered_step(method, mesh, batch)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = 0.0
  if count_flops:
    # XLA cannot count inside the CPU kernels' custom calls: count the step built on
    # Flax's layers (the whole step, before it is split over devices).
    if config.model.get('cpu_kernels', False):
      lowered = _lowered_step(make_method(with_cpu_kernels(config, False)), mesh, batch)[1]
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) if cost else 0.0
  step = JaxStep(method, mesh, init, compiled, batch)
  return step, {'compile_s': compile_s, 'flops_per_step': flops}


def prediction_step(step: JaxStep, batch_size: int, name: str
                    ) -> tuple[Callable[[], Any], dict[str, float]]:
  """The method's jitted prediction `name` ('caption', 'detect') on a synthetic image
  batch with a freshly initialised state, as a closure returning its outputs; with its
  compile seconds."""
  method, mesh, state = step.method, step.mesh, step.init()
  if name not in method.PREDICTIONS:
    raise config_lib.ConfigError(f'method {method.name!r} has no {name} prediction')
  predict = jax.jit(parallel.under_mesh(mesh, method.prediction_function(name)))
  rng = np.random.default_rng(method.config.seed + 1)
  images = method.synthetic_batch(batch_size, tuple(method.config.data.input_shape), rng)
  batch = parallel.to_global({'image': images['image']}, mesh)
  start = time.perf_counter()
  compiled = predict.lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  def run():
    return jax.block_until_ready(compiled(state, batch))

  return run, {'compile_s': compile_s}


def caption_length(tokens) -> float:
  """The mean number of tokens of decoded captions [B, L] (their words and eos)."""
  tokens = np.asarray(jax.device_get(tokens))
  return float((tokens != text.Vocabulary.pad_id).sum(axis=1).mean())


def torch_step(config, info: pipeline.DatasetInfo) -> Callable[[], None] | None:
  """The PyTorch twin's eager step; None (with a message) when PyTorch is missing."""
  try:
    from vision_jax import benchmark_torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('PyTorch is not installed: `pip install torch` to compare (it is optional).')
    return None
  shape = tuple(config.data.input_shape)
  if config.method == 'captioning':
    return benchmark_torch.make_captioning_step(
        config, shape, len(info.metadata['vocabulary']), config.batch_size)
  if config.method == 'clip':
    # The method's own vocabulary size: the config's, or the made-up vocabulary's.
    vocab_size = config.model.get('vocab_size') or len(info.metadata['vocabulary'])
    return benchmark_torch.make_clip_step(config, shape, vocab_size, config.batch_size)
  return benchmark_torch.make_train_step(config, shape, info.num_classes, config.batch_size)


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
  parser.add_argument('--decode', action='store_true',
                      help="also time the method's caption prediction (beam search)")
  parser.add_argument('--detect', action='store_true',
                      help="also time a detector's detect prediction (NMS included)")
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
    if args.decode:
      decode, decode_result = prediction_step(step, config.batch_size, 'caption')
    if args.detect:
      detect, detect_result = prediction_step(step, config.batch_size, 'detect')
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.torch and (torch := torch_step(config, step.method.data_info)):
    steps['torch'] = torch
  timings = time_steps(steps, args.steps, args.warmup)
  if args.decode:
    decode_result.update(time_steps({'decode': decode}, args.steps, args.warmup)['decode'])
    decode_result['length'] = caption_length(decode())
  if args.detect:
    detect_result.update(time_steps({'detect': detect}, args.steps, args.warmup)['detect'])
    detect_result['rows'] = detect()['boxes'].shape[1]  # D, the detections per image
  devices = jax.devices()
  # Fields besides the images and labels, e.g. captioning's tokens.
  others = {k: v.shape[1:] for k, v in step.batch.items()
            if k not in (*step.method.TRAIN_IMAGE_KEYS, 'label')}
  others = ''.join(f' + {k} {shape}' for k, shape in others.items()) + (
      f' (vocabulary of {len(step.method.data_info.metadata["vocabulary"])})'
      if any('token' in k for k in others) else '')
  print(f'{args.config}: {config.model.name} {config.model.to_dict()}, '
        f'batch {config.batch_size} of {tuple(config.data.input_shape)}{others}, '
        f'{config.compute_dtype}')
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
  if args.decode:
    ms = decode_result['ms_per_step']
    beam = step.method.options.get('beam_size', 1)
    print(f'{"decode":<11s} {config.batch_size / ms * 1e3:9.1f} captions/s  {ms:9.2f} '
          f'ms/batch of {config.batch_size} (min {decode_result["min_ms_per_step"]:.2f}), '
          f'beam {beam}, mean length {decode_result["length"]:.1f} tokens  '
          f'compile {decode_result["compile_s"]:.1f} s')
  if args.detect:
    ms = detect_result['ms_per_step']
    print(f'{"detect":<11s} {config.batch_size / ms * 1e3:9.1f} images/s  {ms:9.2f} '
          f'ms/batch of {config.batch_size} (min {detect_result["min_ms_per_step"]:.2f}), '
          f'{detect_result["rows"]} detections per image  '
          f'compile {detect_result["compile_s"]:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
