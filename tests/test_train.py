"""The trainer end to end on tiny configs: sharding equivalence, no recompiles, resume,
SIGTERM, non-finite losses, corrupt checkpoints and a 2-process jax.distributed run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from vision_jax import checkpointing, config_lib, train
from vision_jax.evaluators import classification as classification_evaluator
from vision_jax.methods import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


def tiny_overrides(data_dir, **overrides):
  """cnn_digits:local with a narrower network, as `--config.<field>` strings."""
  return {'data.data_dir': str(data_dir), 'model.features': '(8, 16)',
          'model.dense_features': '(32,)', **{k: str(v) for k, v in overrides.items()}}


def tiny_config(data_dir, **overrides):
  config = config_lib.load_config(CNN_DIGITS + ':local')
  config_lib.apply_overrides(config, tiny_overrides(data_dir, **overrides))
  return config


def tiny_args(workdir, data_dir, **overrides):
  """The launcher's command line for `tiny_config(data_dir, **overrides)`."""
  return ['--config', CNN_DIGITS + ':local', '--workdir', str(workdir)] + [
      f'--config.{k}={v}' for k, v in tiny_overrides(data_dir, **overrides).items()]


def final_params(workdir):
  return checkpointing.read_latest(workdir)['params']


def final_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f][-1]


def assert_same_run(workdir, reference_workdir, reference_metrics, rtol, atol):
  """Final metrics and params of `workdir` equal those of the reference run."""
  final = final_metrics(workdir)
  for name, value in reference_metrics.items():
    assert final[name] == pytest.approx(value, rel=rtol, abs=atol), name
  chex.assert_trees_all_close(final_params(workdir), final_params(reference_workdir),
                              rtol=rtol, atol=atol)


def launch(args, env_extra=None, every_process_reports=False, **kwargs):
  """Starts the launcher; `every_process_reports`: not only process 0 prints its progress."""
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env_extra or {})}
  command = ['-m', 'vision_jax.train']
  if every_process_reports:
    command = ['-c', 'import sys; from vision_jax import reporting, train; '
               'init = reporting.Progress.__init__; '
               'reporting.Progress.__init__ = lambda self, *a, **k: init(self, *a, **{**k, '
               '"enabled": True}); sys.exit(train.main(sys.argv[1:]))']
  return subprocess.Popen([sys.executable, *command, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_eight_devices_equal_one_device(tmp_path, data_dir):
  # BatchNorm makes this check synchronised batch statistics too. Four steps and the
  # final evaluation (the one compared), with a small figure.
  config = tiny_config(data_dir, **{'total_steps': 4, 'model.use_batchnorm': True,
                                    'model.dropout_rate': 0.0, 'checkpoint_every_steps': 4,
                                    'evals.eval.num_figure_images': 4})
  one = train.train_and_evaluate(config, str(tmp_path / 'one'), num_devices=1)
  eight = train.train_and_evaluate(config, str(tmp_path / 'eight'), num_devices=8)
  chex.assert_trees_all_close(final_params(tmp_path / 'one'), final_params(tmp_path / 'eight'),
                              rtol=2e-4, atol=2e-5)
  assert one['eval/accuracy'] == pytest.approx(eight['eval/accuracy'], abs=1 / 360)


def test_steps_compile_once_and_metrics_are_written(tmp_path, data_dir, monkeypatch):
  monkeypatch.setattr(base.Method, 'update', chex.assert_max_traces(base.Method.update, n=1))
  monkeypatch.setattr(classification_evaluator.Evaluator, '_batch_sums', chex.assert_max_traces(
      classification_evaluator.Evaluator._batch_sums, n=1))
  config = tiny_config(data_dir, total_steps=12, log_every_steps=3, eval_every_steps=4)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/num_examples'] == 360
  with open(tmp_path / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [l['step'] for l in lines if 'train/loss' in l] == [3, 6, 9, 12]
  assert [l['step'] for l in lines if 'eval/accuracy' in l] == [4, 8, 12]
  assert {'train/grad_norm', 'train/lr', 'train/examples_per_sec'} <= set(lines[0])
  assert os.listdir(tmp_path / 'tensorboard')
  assert 'config.json' in os.listdir(tmp_path)
  assert {'predictions.png', 'confusion_matrix.png', 'per_class_accuracy.json'} <= set(
      os.listdir(tmp_path / 'eval'))
  with open(tmp_path / 'eval' / 'per_class_accuracy.json') as f:
    per_class = json.load(f)
  assert sorted(per_class) == [str(i) for i in range(10)]
  assert np.mean(list(per_class.values())) == pytest.approx(
      results['eval/mean_per_class_accuracy'], abs=1e-6)


def test_gradient_accumulation_matches_full_batch(tmp_path, data_dir):
  config = tiny_config(data_dir, total_steps=3, **{'model.dropout_rate': 0.0})
  train.train_and_evaluate(config, str(tmp_path / 'full'))
  config_lib.apply_overrides(config, {'grad_accum_steps': '4'})
  train.train_and_evaluate(config, str(tmp_path / 'accum'))
  chex.assert_trees_all_close(final_params(tmp_path / 'full'), final_params(tmp_path / 'accum'),
                              rtol=1e-4, atol=1e-5)


def _conv_and_dot_operand_dtypes(jaxpr) -> list[tuple[str, tuple[str, ...]]]:
  """(primitive, operand dtypes) of every convolution and matrix product, nested ones too."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
      found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        sub = getattr(sub, 'jaxpr', sub)  # A ClosedJaxpr's Jaxpr.
        if hasattr(sub, 'eqns'):
          found += _conv_and_dot_operand_dtypes(sub)
  return found


def test_bfloat16_compute_trains(tmp_path, data_dir, monkeypatch):
  made, make_train_step = {}, train.make_train_step
  def spy(method, abstract_batch, mesh, seed):  # Keeps the step the trainer compiles.
    made['abstract_batch'] = abstract_batch
    made['abstract_state'], _, _, made['train_step'] = result = make_train_step(
        method, abstract_batch, mesh, seed)
    return result
  monkeypatch.setattr(train, 'make_train_step', spy)
  config = tiny_config(data_dir, total_steps=4, compute_dtype='bfloat16')
  results = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results['eval/loss'])
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(final_params(tmp_path)))
  # The trainer's own step computes its forward and backward convolutions and matrix
  # products in bfloat16 (in float32 if compute_dtype were ignored) ...
  traced = made['train_step'].trace(made['abstract_state'], made['abstract_batch'])
  ops = _conv_and_dot_operand_dtypes(traced.jaxpr.jaxpr)
  assert {name for name, _ in ops} == {'conv_general_dilated', 'dot_general'}, ops
  assert all(set(dtypes) == {'bfloat16'} for _, dtypes in ops), ops
  # ... and keeps float32 params and optimizer state.
  new_state = traced.out_info[0]
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(
      (new_state.params, new_state.opt_state)) if leaf.ndim), new_state


def _wait_for_checkpoint(workdir, step, process, timeout=240):
  deadline = time.time() + timeout
  path = os.path.join(workdir, 'checkpoints', str(step))
  while not os.path.isdir(path):  # Orbax renames a finished save into place.
    assert process.poll() is None, process.stdout.read()
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, data_dir):
  # 80 steps still to go when the kill lands: several seconds of training, while the kill
  # follows the step-40 checkpoint within a poll.
  overrides = {'total_steps': 120, 'checkpoint_every_steps': 20, 'log_every_steps': 20,
               'eval_every_steps': 0, 'keep_checkpoints': 2}
  reference = train.train_and_evaluate(tiny_config(data_dir, **overrides),
                                       str(tmp_path / 'reference'))
  workdir = str(tmp_path / 'killed')
  args = tiny_args(workdir, data_dir, **overrides)
  process = launch(args)
  _wait_for_checkpoint(workdir, 40, process)
  process.kill()
  process.wait()
  assert process.returncode == -signal.SIGKILL
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert 40 <= steps[-1] < 120, steps
  process = launch(args)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  assert f'resumed from step {steps[-1]}' in output
  assert_same_run(workdir, tmp_path / 'reference', reference, rtol=1e-5, atol=1e-6)


def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
  workdir = str(tmp_path)
  # The narrow network without periodic evaluation: the run is start-up and a few steps.
  process = launch(tiny_args(workdir, data_dir, total_steps=100000, checkpoint_every_steps=20,
                             log_every_steps=20, eval_every_steps=0))
  _wait_for_checkpoint(workdir, 20, process)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output
  assert 'SIGTERM: checkpoint saved at step' in output
  saved = int(output.split('SIGTERM: checkpoint saved at step ')[1].split(';')[0])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(saved)))


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path, digits_data_dir):
  workdir = str(tmp_path)
  args = tiny_args(workdir, digits_data_dir, total_steps=100000, checkpoint_every_steps=20,
                   log_every_steps=5, eval_every_steps=0) + [
                       f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2']
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=1')}
  processes = [launch(args + [f'--process_id={i}'], env, every_process_reports=True)
               for i in range(2)]
  _wait_for_checkpoint(workdir, 20, processes[0])
  processes[1].send_signal(signal.SIGTERM)  # The other process learns it at a log step.
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  stopped = []
  for output in outputs:
    assert output.count('SIGTERM: checkpoint saved at step') == 1, output
    stopped.append(int(output.split('SIGTERM: checkpoint saved at step ')[1].split(';')[0]))
  assert stopped[0] == stopped[1] and stopped[0] % 5 == 0 and stopped[0] >= 20, stopped
  assert final_metrics(workdir)['step'] == stopped[0]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(stopped[0])))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, capsys):
  workdir = str(tmp_path)
  args = ['--config', CNN_DIGITS + ':local', '--workdir', workdir,
          f'--config.data.data_dir={data_dir}', '--config.checkpoint_every_steps=2',
          '--config.total_steps=6']
  assert train.main(args) == 0
  args += ['--config.total_steps=40', '--config.lr=1e30', '--config.schedule.warmup_steps=0']
  assert train.main(args) == 1
  error = capsys.readouterr().err
  assert 'non-finite training at step' in error and 'is intact in' in error, error
  last_good = final_params(workdir)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(last_good))


@pytest.mark.parametrize('damage', ['corrupt', 'incompatible'])
def test_bad_checkpoint_is_a_clear_error_and_nothing_is_touched(tmp_path, data_dir, capsys,
                                                               damage, file_hashes):
  workdir = str(tmp_path)
  args = ['--config', CNN_DIGITS + ':local', '--workdir', workdir,
          f'--config.data.data_dir={data_dir}', '--config.total_steps=4',
          '--config.checkpoint_every_steps=2']
  assert train.main(args) == 0
  checkpoint = os.path.join(workdir, 'checkpoints', '4')
  if damage == 'corrupt':
    for folder, _, files in os.walk(checkpoint):
      for name in files:
        with open(os.path.join(folder, name), 'wb') as f:
          f.write(b'\x00garbage')
  else:
    args += ['--config.model.features=(4, 4, 4)']
  before = file_hashes(workdir)
  assert train.main(args + ['--config.total_steps=8']) == 1
  error = capsys.readouterr().err
  assert f'checkpoint {checkpoint} cannot be restored' in error
  assert error.count('\n') == 1
  assert file_hashes(workdir) == before


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_process_distributed_run_matches_one_process(tmp_path, data_dir):
  # Full-batch steps without random augmentation or dropout: every step sees the same
  # examples whichever process reads them, so both runs must agree.
  overrides = {'data.train_split': 'train[:256]', 'batch_size': 256, 'total_steps': 3,
               'data.pp_train': 'decode|value_range(0, 1)', 'model.dropout_rate': 0.0,
               'checkpoint_every_steps': 3, 'log_every_steps': 1}
  reference = train.train_and_evaluate(tiny_config(data_dir, **overrides),
                                       str(tmp_path / 'one'))
  workdir = str(tmp_path / 'two')
  args = tiny_args(workdir, data_dir, **overrides) + [
      f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2']
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=4')}
  processes = [launch(args + [f'--process_id={i}'], env) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  assert 'over 8 device(s) in 2 process(es)' in outputs[0]
  assert outputs[1].strip() == '' or 'Final evaluation' not in outputs[1]  # Only process 0 logs.
  assert_same_run(workdir, tmp_path / 'one', reference, rtol=1e-4, atol=1e-5)


def test_classifier_trains_on_scenes_single_with_only_a_config_change(tmp_path, monkeypatch):
  from vision_jax.data import scenes  # pylint: disable=g-import-not-at-top
  # The real `single` config, shrunk so the test prepares it in seconds.
  tiny = scenes.ScenesConfig(name='single', max_objects=1, num_train=256, num_validation=32,
                             num_test=64)
  monkeypatch.setitem(scenes.Scenes.builder_configs, 'single', tiny)  # TFDS memoizes it.
  assert train.main(['--config', CNN_DIGITS + ':local', '--workdir', str(tmp_path / 'run'),
                     '--config.data.name=scenes/single',
                     f'--config.data.data_dir={tmp_path / "data"}']) == 0
  assert final_metrics(tmp_path / 'run')['eval/num_examples'] == 64


@pytest.mark.parametrize('channels', [1, 3])
def test_classifier_trains_on_an_image_folder(tmp_path, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(channels)
  for split, count in (('train', 32), ('test', 10)):
    for label, name in enumerate(('dark', 'light')):
      os.makedirs(tmp_path / 'images' / split / name)
      for i in range(count):
        pixels = rng.integers(0, 128, (8, 8, channels), np.uint8) + 127 * label
        Image.fromarray(pixels.squeeze()).save(tmp_path / 'images' / split / name / f'{i}.png')
  assert train.main(['--config', CNN_DIGITS + ':local', '--workdir', str(tmp_path / 'run'),
                     f'--config.data.name=folder:{tmp_path / "images"}',
                     '--config.batch_size=16', '--config.evals.eval.batch_size=8']) == 0
  assert final_metrics(tmp_path / 'run')['eval/num_examples'] == 20
  with open(tmp_path / 'run' / 'eval' / 'per_class_accuracy.json') as f:
    assert sorted(json.load(f)) == ['dark', 'light']


def test_images_of_several_sizes_without_a_resize_are_a_clear_error(tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      os.makedirs(tmp_path / split / name)
      for i, size in enumerate((8, 9, 10, 11)):
        Image.fromarray(np.zeros((size, size), np.uint8)).save(tmp_path / split / name / f'{i}.png')
  args = ['--config', CNN_DIGITS + ':local', '--workdir', str(tmp_path / 'run'),
          f'--config.data.name=folder:{tmp_path}', '--config.batch_size=8']
  assert train.main(args) == 1
  assert 'add a resize(...)' in capsys.readouterr().err


def test_an_unprepared_dataset_falls_back_to_the_embedded_one(tmp_path, data_dir, monkeypatch):
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pipeline, '_online', lambda: False)
  config = tiny_config(data_dir, **{'data.name': 'mnist', 'data.fallback': 'digits',
                                    'total_steps': 2, 'log_every_steps': 1})
  results = train.train_and_evaluate(config, str(tmp_path / 'run'), num_devices=1)
  assert results['eval/num_examples'] == 360  # The digits' test split.
  _, name, note = pipeline.training_builder(config.data)
  assert name == 'digits' and note.endswith("training on the embedded 'digits' instead "
                                            '(data.fallback)')
  # Without a fallback, the same config is the one-line offline error.
  config = tiny_config(data_dir, **{'data.name': 'mnist'})
  with pytest.raises(pipeline.DatasetNotFoundError, match='not prepared'):
    train.train_and_evaluate(config, str(tmp_path / 'other'), num_devices=1)
  assert not os.path.exists(tmp_path / 'other')
