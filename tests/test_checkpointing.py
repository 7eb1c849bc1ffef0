"""Checkpoints: `initialize_from` on small hand-made states, its errors, and end to end."""

import gc
import os
import re
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vision_jax import checkpointing, parallel, train
from vision_jax.methods.base import TrainState

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_checkpointing')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


def tiny_args(workdir, data_dir, **overrides):
  """The launcher's command line for cnn_digits:local with a narrow network."""
  overrides = {'data.data_dir': data_dir, 'model.features': '(8, 16)',
               'model.dense_features': '(32,)', 'model.dropout_rate': 0.0, **overrides}
  return ['--config', CNN_DIGITS + ':local', '--workdir', str(workdir)] + [
      f'--config.{k}={v}' for k, v in overrides.items()]


def final_params(workdir):
  return checkpointing.read_latest(workdir)['params']


def make_state(seed, *, head=3, extra=False):
  """A TrainState like the trainer's: params, adam state, batch stats and a step."""
  rng = np.random.default_rng(seed)
  params = {'backbone': {'conv': {'kernel': rng.standard_normal((3, 3, 1, 4), np.float32)}},
            'head': {'kernel': rng.standard_normal((4, head), np.float32),
                     'bias': rng.standard_normal((head,), np.float32)}}
  if extra:
    params['backbone']['conv']['bias'] = rng.standard_normal((4,), np.float32)
  params = jax.tree.map(jnp.asarray, params)
  tx = optax.adam(1e-3)
  opt_state = jax.tree.map(lambda x: x + seed + 1, tx.init(params))
  model_state = {'batch_stats': {'backbone': {'mean': jnp.full((4,), seed, jnp.float32)}}}
  return TrainState(step=jnp.asarray(10 * seed, jnp.int32), params=params,
                    opt_state=opt_state, model_state=model_state)


def sharded(state, mesh):
  sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  return jax.device_put(state, sharding), sharding


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A workdir with checkpoints of step 1 (seed 1) and step 2 (seed 2)."""
  workdir = str(tmp_path_factory.mktemp('source'))
  checkpointer = checkpointing.Checkpointer(workdir, every_steps=1, keep=5)
  for step in (1, 2):
    checkpointer.save(step, make_state(step))
  checkpointer.wait()
  checkpointer.close()
  return workdir


def init_from(path, **fields):
  """`config.init_from` as `config_lib.base_config()` has it."""
  return ml_collections.ConfigDict(
      {'path': path, 'step': None, 'subtrees': ('params', 'model_state'), **fields})


@pytest.fixture
def fresh():
  mesh = parallel.make_mesh(4)
  return sharded(make_state(7), mesh)


def test_default_subtrees_copy_params_and_model_state_only(source, fresh):
  state, sharding = fresh
  result = checkpointing.initialize_from(init_from(source), state, sharding)
  saved = make_state(2)
  chex.assert_trees_all_equal(result.params, saved.params)
  chex.assert_trees_all_equal(result.model_state, saved.model_state)
  chex.assert_trees_all_equal(result.opt_state, make_state(7).opt_state)  # As initialised.
  assert int(result.step) == 70
  for leaf, want in zip(jax.tree.leaves(result), jax.tree.leaves(sharding)):
    assert isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(want, leaf.ndim)


@pytest.mark.parametrize('where', ['workdir', 'step_folder', 'item_folder'])
def test_path_is_a_workdir_a_checkpoint_folder_or_its_item_folder(source, fresh, where):
  state, sharding = fresh
  path = {'workdir': source, 'step_folder': os.path.join(source, 'checkpoints', '1'),
          'item_folder': os.path.join(source, 'checkpoints', '1', 'default')}[where]
  step = None if where == 'workdir' else 1
  config = init_from(path, step=1 if where == 'workdir' else step)
  result = checkpointing.initialize_from(config, state, sharding)
  chex.assert_trees_all_equal(result.params, make_state(1).params)


def test_one_subtree_and_a_renamed_subtree(source, fresh):
  state, sharding = fresh
  config = init_from(source, subtrees=('params/backbone',
                                       'params/head/bias:params/head/bias',
                                       'model_state/batch_stats'))
  result = checkpointing.initialize_from(config, state, sharding)
  saved, initial = make_state(2), make_state(7)
  chex.assert_trees_all_equal(result.params['backbone'], saved.params['backbone'])
  chex.assert_trees_all_equal(result.params['head']['bias'], saved.params['head']['bias'])
  chex.assert_trees_all_equal(result.params['head']['kernel'], initial.params['head']['kernel'])
  # Renaming: the saved Adam first moment of the params becomes the second moment.
  config = init_from(source, subtrees=('opt_state/0/mu:opt_state/0/nu',))
  result = checkpointing.initialize_from(config, state, sharding)
  chex.assert_trees_all_equal(result.opt_state[0].nu, saved.opt_state[0].mu)
  chex.assert_trees_all_equal(result.opt_state[0].mu, initial.opt_state[0].mu)
  chex.assert_trees_all_equal(result.params, initial.params)


def test_a_backbone_into_a_model_with_a_new_head(source, fresh):
  """'params/backbone:params' with the head excluded: a pretrained encoder under a new
  classifier; the head keeps its initial values."""
  state, sharding = fresh
  wider = state.replace(params={**state.params['backbone'], 'head': state.params['head']})
  wider_sharding = sharding.replace(
      params={**sharding.params['backbone'], 'head': sharding.params['head']})
  config = init_from(source, subtrees=('params/backbone:params',), exclude=('params/head',))
  result = checkpointing.initialize_from(config, wider, wider_sharding)
  saved, initial = make_state(2), make_state(7)
  chex.assert_trees_all_equal(result.params['conv'], saved.params['backbone']['conv'])
  chex.assert_trees_all_equal(result.params['head'], initial.params['head'])
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"only in the state \['head/bias', 'head/kernel'\]"):
    checkpointing.initialize_from(init_from(source, subtrees=('params/backbone:params',)),
                                  wider, wider_sharding)
  with pytest.raises(checkpointing.CheckpointError, match='no subtree .params/neck.'):
    checkpointing.initialize_from(init_from(source, exclude=('params/neck',)), state, sharding)


def test_unset_path_returns_the_state_itself(fresh):
  state, sharding = fresh
  assert checkpointing.initialize_from(init_from(None), state, sharding) is state


@pytest.mark.parametrize('fields, state_kwargs, message', [
    (dict(path='/nonexistent/run'), {}, 'init_from.path /nonexistent/run does not exist'),
    (dict(step=5), {}, 'has no checkpoint of step 5; it has steps [1, 2]'),
    (dict(subtrees=('params/neck',)), {},
     "has no subtree 'params/neck': at params it has backbone, head"),
    (dict(subtrees=('params/backbone:params/trunk',)), {},
     "this experiment's state has no subtree 'params/trunk': at params it has backbone, head"),
    (dict(subtrees=()), {}, 'init_from.subtrees is empty'),
    (dict(subtrees=('params/head:params/a:b',)), {}, 'is not a path like'),
    ({}, dict(extra=True), "differ in structure: only in the checkpoint [], "
     "only in the state ['backbone/conv/bias']"),
])
def test_errors_name_the_problem(source, fields, state_kwargs, message):
  state, sharding = sharded(make_state(7, **state_kwargs), parallel.make_mesh(1))
  with pytest.raises(checkpointing.CheckpointError) as error:
    checkpointing.initialize_from(init_from(**{'path': source, **fields}), state, sharding)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_shape_mismatch_names_both_shapes(source):
  state, sharding = sharded(make_state(7, head=5), parallel.make_mesh(1))
  with pytest.raises(checkpointing.CheckpointError, match=r'params/head/bias is float32\[3\] '
                     r'in the checkpoint .* but params/head/bias is float32\[5\]'):
    checkpointing.initialize_from(init_from(source), state, sharding)


def test_dtype_mismatch_is_an_error(source):
  state = make_state(7)
  state = state.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.params))
  state, sharding = sharded(state, parallel.make_mesh(1))
  with pytest.raises(checkpointing.CheckpointError, match=(
      r'params/backbone/conv/kernel is float32\[3, 3, 1, 4\] in the checkpoint .* but '
      r'params/backbone/conv/kernel is bfloat16\[3, 3, 1, 4\]')):
    checkpointing.initialize_from(init_from(source), state, sharding)


def test_not_a_checkpoint_folder_and_an_empty_workdir(tmp_path, fresh):
  state, sharding = fresh
  with pytest.raises(checkpointing.CheckpointError, match='is not a run\'s workdir'):
    checkpointing.initialize_from(init_from(str(tmp_path)), state, sharding)
  os.makedirs(tmp_path / 'checkpoints')
  with pytest.raises(checkpointing.CheckpointError, match='no checkpoint in'):
    checkpointing.initialize_from(init_from(str(tmp_path)), state, sharding)


@pytest.mark.parametrize('reader', ['resume', 'initialize_from'])
@pytest.mark.parametrize('damage', ['every_file', 'array_data'])
def test_corrupt_checkpoint_is_one_line_and_untouched(tmp_path, fresh, capfd, monkeypatch,
                                                      damage, reader, file_hashes):
  state, sharding = fresh
  checkpointer = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=1)
  checkpointer.save(3, make_state(3))
  checkpointer.wait()
  checkpointer.close()
  item = tmp_path / 'checkpoints' / '3' / 'default'
  for folder, _, files in os.walk(item):
    for name in files:
      if damage == 'every_file' or os.path.basename(folder) == 'd':  # OCDBT's data files.
        with open(os.path.join(folder, name), 'wb') as f:
          f.write(b'\x00garbage')
  before = file_hashes(tmp_path)
  # Orbax's abandoned concurrent reads raise in their callbacks ('Event loop is closed').
  unraisable = []
  monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
  capfd.readouterr()
  with pytest.raises(checkpointing.CheckpointError,
                     match=f'^checkpoint {re.escape(str(item.parent))}(/default)? cannot be'):
    if reader == 'resume':
      checkpointer = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=1)
      try:
        checkpointer.restore(jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding))
      finally:
        checkpointer.close()
    else:
      checkpointing.initialize_from(init_from(str(tmp_path)), state, sharding)
  time.sleep(0.2)
  gc.collect()
  assert not unraisable, [u.exc_value for u in unraisable]
  out, err = capfd.readouterr()
  assert not out + err, out + err
  assert file_hashes(tmp_path) == before


# End to end through the launcher.

@pytest.fixture(scope='module')
def run_a(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('run_a'))
  assert train.main(tiny_args(workdir, data_dir, total_steps=3)) == 0
  return workdir


# lr 0: a run's params stay what it started from.
FROZEN = {'total_steps': 1, 'lr': 0.0}


def test_a_run_starts_from_another_runs_params(tmp_path, data_dir, run_a):
  b = str(tmp_path / 'b')
  assert train.main(tiny_args(b, data_dir, **FROZEN, **{'init_from.path': run_a})) == 0
  chex.assert_trees_all_equal(final_params(b), final_params(run_a))
  # Only dense1 comes from A; the other layers are B's own initialisation (the seed's).
  c = str(tmp_path / 'c')
  assert train.main(tiny_args(c, data_dir, **FROZEN, **{
      'init_from.path': run_a, 'init_from.subtrees': "('params/dense1',)"})) == 0
  scratch = str(tmp_path / 'scratch')
  assert train.main(tiny_args(scratch, data_dir, **FROZEN)) == 0
  chex.assert_trees_all_equal(final_params(c)['dense1'], final_params(run_a)['dense1'])
  for layer in ('stage1_conv1', 'stage2_conv1', 'head'):
    chex.assert_trees_all_equal(final_params(c)[layer], final_params(scratch)[layer])
    assert not np.array_equal(final_params(c)[layer]['kernel'],
                              final_params(run_a)[layer]['kernel'])


def test_a_resumed_run_ignores_init_from(tmp_path, data_dir, run_a):
  b = str(tmp_path / 'b')
  assert train.main(tiny_args(b, data_dir, **FROZEN, **{'init_from.path': run_a})) == 0
  # Its own checkpoint wins: a path that cannot be read is not even looked at.
  assert train.main(tiny_args(b, data_dir, **{**FROZEN, 'total_steps': 2,
                                              'init_from.path': '/nonexistent'})) == 0
  assert os.path.exists(os.path.join(b, 'config.resumed_at_1.json'))
  chex.assert_trees_all_equal(final_params(b), final_params(run_a))
