"""Evaluators: their own data, prediction functions by name, their own schedules and
output folders, host-side fields, and gathering to process 0 across processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn import datasets as sk_datasets

from vision_jax import config_lib, evaluators, parallel, train
from vision_jax.data import pipeline
from vision_jax.methods import get_method_class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


@pytest.fixture(scope='module')
def digit_folder(tmp_path_factory):
  """The last 100 scikit-learn digits as an image folder: root/test/<digit>/<i>.png."""
  root = tmp_path_factory.mktemp('digit_folder')
  digits = sk_datasets.load_digits()
  for i in range(len(digits.images) - 100, len(digits.images)):
    folder = root / 'test' / str(digits.target[i])
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f'{i}.png')
  return root


def config_with_evals(data_dir, evals, total_steps=4):
  config = config_lib.load_config(CNN_DIGITS + ':local')
  config_lib.apply_overrides(config, {
      'data.data_dir': str(data_dir), 'model.features': '(8, 16)',
      'model.dense_features': '(32,)', 'total_steps': str(total_steps),
      'eval_every_steps': '2', 'log_every_steps': '2', 'checkpoint_every_steps': '0'})
  with config.unlocked():
    config.evals = {name: config_lib.evaluator_config(**fields) for name, fields in evals.items()}
  return config


def metrics_by_step(workdir):
  by_step = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      by_step.setdefault(record.pop('step'), {}).update(record)
  return by_step


def test_evaluators_read_their_own_data_on_their_own_schedule(tmp_path, data_dir,
                                                              digit_folder):
  config = config_with_evals(data_dir, {
      'digits': dict(type='classification', data=dict(split='test'), batch_size=64,
                     every_steps=0),
      'folder': dict(type='classification', batch_size=32, pp='decode(1)|value_range(0, 1)',
                     data=dict(name=f'folder:{digit_folder}', split='test'),
                     figures_every_steps=2),
  })
  workdir = tmp_path / 'run'
  results = train.train_and_evaluate(config, str(workdir))
  assert results['digits/num_examples'] == 360
  assert results['folder/num_examples'] == 100
  logged = metrics_by_step(workdir)
  # `folder` runs every 2 steps (the experiment's eval_every_steps), `digits` at the end.
  assert 'folder/accuracy' in logged[2] and 'digits/accuracy' not in logged[2]
  assert 'folder/accuracy' in logged[4] and 'digits/accuracy' in logged[4]
  # Each evaluator writes into its own folder: nothing overwritten, nothing shared.
  for name in ('digits', 'folder'):
    assert {'predictions.png', 'confusion_matrix.png', 'per_class_accuracy.json'} <= set(
        os.listdir(workdir / name))
  assert not (workdir / 'predictions.png').exists()
  # Figures at step 2 (figures_every_steps) and at the end reach TensorBoard.
  steps = set()
  for events in (workdir / 'tensorboard').glob('events.*'):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      if any(v.tag == 'folder/predictions' for v in event.summary.value):
        steps.add(event.step)
  assert steps == {2, 4}


def make_evaluator(data_dir, mesh, **fields):
  config = config_with_evals(data_dir, {})
  builder = pipeline.get_builder('digits', str(data_dir))
  method = get_method_class('classification')(
      config, pipeline.dataset_info(builder, 'digits'), total_steps=4, steps_per_epoch=1)
  return evaluators.get_evaluator(method, config_lib.evaluator_config(**fields), name='e',
                                  workdir='/nonexistent', mesh=mesh, train_data=config.data)


@pytest.mark.parametrize('batch_size', [8, 48, 128])
def test_host_side_fields_travel_beside_the_device_batch(data_dir, digit_folder, batch_size):
  evaluator = make_evaluator(
      data_dir, parallel.make_mesh(8), type='classification', batch_size=batch_size,
      pp='decode(1)|value_range(0, 1)', keep_on_cpu=('image/filename',),
      data=dict(name=f'folder:{digit_folder}', split='test'))
  seen = []
  for batch, host in evaluator.batches():
    assert set(batch) == {'image', 'label', pipeline.MASK_KEY}  # Strings stay on the host.
    mask = parallel.local_rows(batch[pipeline.MASK_KEY])
    names = host['image/filename']
    assert len(names) == batch_size
    assert [n is None for n in names] == list(~mask)
    for name, label in zip(names, parallel.local_rows(batch['label'])):
      if name is not None:
        path = name.item().decode()
        assert os.path.basename(os.path.dirname(path)) == str(label)  # Rows stay aligned.
        seen.append(path)
  assert sorted(seen) == sorted(str(p) for p in digit_folder.glob('test/*/*.png'))


def test_variable_length_host_fields_keep_their_shapes():
  examples = [{'boxes': np.arange(4 * n, dtype=np.float32).reshape(n, 4),
               'captions': np.array([b'a'] * (n + 1)), 'x': np.float32(n)} for n in (0, 3, 1)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={
          'boxes': tf.TensorSpec([None, 4], tf.float32),
          'captions': tf.TensorSpec([None], tf.string), 'x': tf.TensorSpec([], tf.float32)})
  ds = ds.map(lambda ex: pipeline._device_fields(ex, ('boxes', 'captions'))).batch(4)
  batch = pipeline._host_fields(pipeline._pad(next(ds.as_numpy_iterator()), 4))
  host = batch[pipeline.HOST_KEY]
  np.testing.assert_array_equal(batch['x'], [0, 3, 1, 0])
  assert [b.shape for b in host['boxes'][:3]] == [(0, 4), (3, 4), (1, 4)]
  np.testing.assert_array_equal(host['boxes'][1], examples[1]['boxes'])
  assert [len(c) for c in host['captions'][:3]] == [1, 4, 2] and host['captions'][3] is None


def test_evaluator_config_mistakes_are_config_errors(data_dir):
  mesh = parallel.make_mesh(1)
  with pytest.raises(config_lib.ConfigError, match="no prediction function 'sample'"):
    make_evaluator(data_dir, mesh, type='classification', pred='sample')
  with pytest.raises(config_lib.ConfigError, match='evals.e.batchsize .*did you mean '
                                                   'evals.e.batch_size'):
    make_evaluator(data_dir, mesh, type='classification', batchsize=3)
  with pytest.raises(config_lib.ConfigError, match='evals.e.pp: unknown preprocessing op'):
    make_evaluator(data_dir, mesh, type='classification', pp='decode|no_such_op')
  with pytest.raises(pipeline.DatasetNotFoundError, match='no split'):
    make_evaluator(data_dir, mesh, type='classification', data=dict(split='validation'))
  with pytest.raises(config_lib.ConfigError, match="unknown evaluator type 'nope'"):
    make_evaluator(data_dir, mesh, type='nope')


def test_fetch_refuses_sharded_arrays():
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(np.arange(16.0), parallel.data_sharded(mesh))
  with pytest.raises(ValueError, match='replicated'):
    parallel.fetch(sharded)
  replicated = jax.device_put(np.arange(16.0), parallel.replicated(mesh))
  np.testing.assert_array_equal(parallel.fetch({'a': replicated})['a'], np.arange(16.0))


GATHER_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    from vision_jax import evaluators, parallel
    parallel.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
    index = jax.process_index()
    # Rows of different sizes and types per process, as captions or boxes are.
    rows = [{'process': index, 'caption': 'x' * (10 * index + i)} for i in range(2 + index)]
    gathered = evaluators.gather_rows(rows)
    print('GATHERED', index, gathered if gathered is None else
          [(r['process'], len(r['caption'])) for r in gathered])
''')


def test_gather_rows_collects_every_process_on_process_zero(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  script = tmp_path / 'gather.py'
  script.write_text(GATHER_SCRIPT)
  env = {**os.environ, 'PYTHONPATH': REPO, 'XLA_FLAGS': os.environ['XLA_FLAGS'].replace(
      'device_count=8', 'device_count=2')}
  processes = [subprocess.Popen([sys.executable, str(script), address, str(i)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs
  lines = [line for out in outputs for line in out.splitlines() if line.startswith('GATHERED')]
  assert sorted(lines) == ['GATHERED 0 [(0, 0), (0, 1), (1, 10), (1, 11), (1, 12)]',
                           'GATHERED 1 None']
