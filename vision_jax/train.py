r"""The launcher and the one training loop every method of the lecture rides on.

  python -m vision_jax.train --config experiments/<area>/<name>.py[:key=value,...] \
      --workdir DIR [--config.<field>=<value> ...]

Multi-host: start the same command once per process with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` gives 8
devices, and the run uses all of them.

Sections of `train_and_evaluate`: mesh, input, method (model, loss, optimizer),
evaluators, sharded state, checkpoint (resume, else `init_from`, else scratch), update
step, loop, final report. Nothing is written to the workdir before the data, method and
evaluators are set up, so a mistake in any of them leaves it as it was.
"""

import functools
import itertools
import math
import os
import signal
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vision_jax import checkpointing, compilation_cache, config_lib, evaluators, host_memory
from vision_jax import parallel, reporting
from vision_jax.data import pipeline
from vision_jax.methods import get_method_class


# Evaluators draw their randomness (samples, noise) from fold_in(key(seed), EVAL_SALT).
EVAL_SALT = 0x5EED


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _write_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """Saves the resolved config; a resumed run with a changed config keeps both."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f'config.resumed_at_{step}.json')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def _abstract_batch(local_batch: dict[str, np.ndarray],
                    global_batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  return {name: jax.ShapeDtypeStruct((global_batch_size, *x.shape[1:]), x.dtype)
          for name, x in local_batch.items()}


def _logged_metrics(history: list[dict]) -> dict[str, float]:
  """Training metrics over the logged steps: counts (`num_*`) summed, the rest averaged."""
  history = jax.device_get(history)
  return {f'train/{k}': float((np.sum if k.startswith('num_') else np.mean)(
      [h[k] for h in history])) for k in history[0]}


def _image_array(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def make_train_step(method, abstract_batch: dict[str, jax.ShapeDtypeStruct], mesh,
                    seed: int):
  """The state's abstract form and sharding, its jitted init and the jitted update step.

  The state is replicated and batches are split along the mesh's `data` axis. Returns
  `(abstract_state, state_sharding, init, train_step)`: `init()` creates the state
  already sharded; `train_step(state, batch) -> (state, metrics)` is compiled once,
  donates the state, and draws its randomness from `fold_in(key, step)`. The
  benchmark times this same step.
  """
  init_key, train_key = jax.random.split(jax.random.key(seed))

  def init_state(rng):
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_batch)
    return method.init_state(rng, zeros)

  abstract_state = jax.eval_shape(init_state, init_key)
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract_state)
  init = functools.partial(jax.jit(init_state, out_shardings=state_sharding), init_key)

  def update(state, batch):
    return method.update(state, batch, jax.random.fold_in(train_key, state.step))

  train_step = jax.jit(
      parallel.under_mesh(mesh, update), donate_argnums=0,
      in_shardings=(state_sharding, parallel.data_sharded(mesh)),
      out_shardings=(state_sharding, parallel.replicated(mesh)))
  return abstract_state, state_sharding, init, train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       num_devices: int | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

  Returns the final evaluation metrics, e.g. `{'eval/accuracy': 0.97, ...}`.
  """
  # Mesh: one `data` axis over every device of every process.
  mesh = parallel.make_mesh(num_devices)
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f'--workdir {workdir} exists and is not a directory')

  # Input. Nothing is written to the workdir until the data, the method and the
  # evaluators have been set up, so a mistake in any of them leaves it as it was.
  data = config.data
  builder, data_name, data_note = pipeline.training_builder(data)
  if data_name != data.name:  # The fallback: evaluators of the training data read it too.
    data = ml_collections.ConfigDict(data.to_dict())
    data.name = data_name
  data_info = pipeline.dataset_info(builder, data.name)
  num_train = pipeline.split_size(builder, data.train_split)
  pipeline.check_pp(data.pp_train, builder, 'data.pp_train')
  steps_per_epoch = max(1, num_train // config.batch_size)
  total_steps = config_lib.steps(config, 'total', steps_per_epoch)
  if not total_steps or total_steps < 0:
    raise config_lib.ConfigError(
        f'the run needs a positive total_steps or total_epochs, got {total_steps}')
  local_batch_size = parallel.local_batch_size(config.batch_size, mesh)

  # Method: model, loss, optimizer.
  method = get_method_class(config.method)(
      config, data_info, total_steps=total_steps, steps_per_epoch=steps_per_epoch)

  # The data stream resumes where the latest checkpoint left off.
  start_step = max(checkpointing.saved_steps(workdir), default=0)  # Read-only.
  train_iter = pipeline.train_batches(
      builder, data.train_split, batch_size=local_batch_size, seed=config.seed,
      pp=data.pp_train, start_step=start_step, cache=data.cache,
      shuffle_buffer=data.shuffle_buffer, skip_undecodable=data.skip_undecodable)
  # Shapes come from the first batch: decoded image shapes are only known then.
  first_batch = next(train_iter)
  train_iter = itertools.chain([first_batch], train_iter)
  abstract_batch = _abstract_batch(first_batch, config.batch_size)

  # Sharded state, created abstractly first so that no host copy is ever made, and the
  # update step: compiled once, the state donated, randomness fold_in(key, step).
  abstract_state, state_sharding, init, train_step = make_train_step(
      method, abstract_batch, mesh, config.seed)

  # Evaluators, by name: metrics are written as `<name>/<metric>`, files to `<name>/`.
  evals = {name: evaluators.get_evaluator(method, eval_config, name=name, workdir=workdir,
                                          mesh=mesh, train_data=data, initial_state=init)
           for name, eval_config in config.evals.items()}
  eval_key = jax.random.fold_in(jax.random.key(config.seed), EVAL_SALT)

  # Resume from this run's latest checkpoint, else start from `init_from`'s weights
  # (checked before anything is written), else from scratch.
  if not start_step:
    state = init()
    if config.init_from.path:
      state = checkpointing.initialize_from(config.init_from, state, state_sharding)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps or total_steps,
      keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  if start_step:
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abstract_state, state_sharding)
    try:
      state = checkpointer.restore(target, start_step)
    except BaseException:
      checkpointer.close()
      raise
  if is_main:
    _write_config(config, workdir, start_step)

  writer = reporting.MetricWriter(workdir, enabled=is_main)
  progress = reporting.Progress(total_steps, start_step, config.batch_size, enabled=is_main)
  if is_main:
    if data_note:
      progress.message(data_note)
    progress.message(
        f'{config.method} on {data.name}: {total_steps} steps of {config.batch_size} '
        f'examples over {mesh.devices.size} device(s) in {jax.process_count()} process(es); '
        + (f'resumed from step {start_step}' if start_step else
           f'starting from {config.init_from.path}' if config.init_from.path else
           'starting fresh'))

  sigterm = {'received': False}
  def on_sigterm(signum, frame):
    del signum, frame
    sigterm['received'] = True
  previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

  def stop_requested(step):
    """Every process must stop at the same step (checkpointing is collective)."""
    if jax.process_count() == 1:
      return sigterm['received']
    if step % config.log_every_steps:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(sigterm['received']))))

  def check_finite(step, metrics):
    # The loss is of the params before the step; param_norm covers the params after it.
    values = parallel.fetch({k: metrics[k] for k in ('loss', 'param_norm') if k in metrics})
    if not all(map(math.isfinite, values.values())):
      last = checkpointer.latest_step()
      raise NonFiniteLossError(
          f'non-finite training at step {step} (loss {values["loss"]}, param norm '
          f'{values.get("param_norm")}); stopping. The last good checkpoint '
          + (f'(step {last}) is intact in {checkpointer.directory}' if last is not None
             else 'does not exist: none was saved before the failure'))

  def run_evals(step, final=False):
    results = {}
    for name, evaluator in evals.items():
      if final or evaluator.due(step, config.eval_every_steps):
        metrics = evaluator.evaluate(state, step=step, rng=jax.random.fold_in(eval_key, step))
        results.update({f'{name}/{k}': v for k, v in metrics.items()})
    writer.write(step, results)
    return results

  def write_figures(step, final=False):
    paths = []
    for name, evaluator in evals.items():
      if final or evaluator.figures_due(step):
        new = evaluator.figures(state, step=step, rng=jax.random.fold_in(eval_key, step))
        for path in new:
          if path.endswith('.png'):
            writer.write_image(step, f'{name}/{os.path.basename(path)[:-4]}',
                               _image_array(path))
        paths += new
    return paths

  # The loop.
  step = start_step
  history, pending, results = [], None, {}
  try:
    while step < total_steps:
      batch = parallel.to_global(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if pending:  # The previous step's loss: checked without waiting on this step.
        check_finite(*pending)
      pending = (step, metrics)
      history.append(metrics)
      last = step == total_steps
      stop = stop_requested(step)
      if step % config.log_every_steps == 0 or last or stop:
        check_finite(*pending)
        logged = _logged_metrics(history)
        history = []
        logged['train/examples_per_sec'] = progress.log(
            step, {k: logged[k] for k in ('train/loss', 'train/lr') if k in logged})
        writer.write(step, logged)
      else:
        progress.tick(step)
      if checkpointer.should_save(step) or last or stop:
        check_finite(*pending)
        checkpointer.save(step, state)
      eval_start = time.time()
      step_results = run_evals(step, final=last)
      if not last:
        write_figures(step)
      progress.exclude(time.time() - eval_start)
      if step_results:
        results = step_results
        progress.message('eval @ %d: ' % step + ', '.join(
            f'{k}={v:.4f}' for k, v in results.items() if not k.endswith('num_examples')))
      if stop:
        progress.message(f'SIGTERM: checkpoint saved at step {step}; exiting.')
        break
    if step >= total_steps and not results:  # Resumed a finished run: report again.
      results = run_evals(step, final=True)
  finally:
    checkpointer.wait()
    checkpointer.close()
    signal.signal(signal.SIGTERM, previous_handler)

  # Final report: figures and a summary of the eval metrics.
  if step >= total_steps:
    figures = write_figures(step, final=True)
    if is_main:
      lines = [f'Final evaluation at step {step}:']
      lines += [f'  {k:<32s} {v:.4f}' for k, v in sorted(results.items())]
      lines += [f'Results in {workdir}: metrics.jsonl, tensorboard/, '
                'checkpoints/, config.json']
      lines += [f'Figure: {p}' if p.endswith('.png') else f'Also: {p}' for p in figures]
      progress.message('\n'.join(lines))
  writer.close()
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = config_lib.command_line_parser('python -m vision_jax.train', __doc__)
  parser.add_argument('--workdir', required=True, help='where logs and checkpoints go')
  parser.add_argument('--coordinator_address', default=None)
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--process_id', type=int, default=None)
  try:
    args, config = config_lib.parse_command_line(
        parser, sys.argv[1:] if argv is None else argv)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  host_memory.keep_freed_memory()
  compilation_cache.enable()
  parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                  args.process_id)
  try:
    train_and_evaluate(config, args.workdir)
  except (config_lib.ConfigError, pipeline.DatasetNotFoundError, pipeline.BatchingError,
          pipeline.UndecodableError, checkpointing.CheckpointError, NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2 if isinstance(e, config_lib.ConfigError) else 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
