"""Video classification end to end: training, multi-clip evaluation, resuming, devices, data."""

import functools
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_jax import checkpointing, config_lib, parallel, train
from vision_jax.data import pipeline
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import get_method_class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/video')
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def local_config(data_dir, arch, name='video_scenes', **overrides):
  config = config_lib.load_config(os.path.join(EXPERIMENTS, f'{name}.py:arch={arch},local'))
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, **overrides})
  return config


def make_method(arch):
  config = config_lib.load_config(os.path.join(EXPERIMENTS, f'video_scenes.py:arch={arch},local'))
  info = DatasetInfo('scenes_video', {'train': 16}, 10, tuple(map(str, range(10))))
  return get_method_class('classification')(config, info, total_steps=2, steps_per_epoch=1)


def clips(count, seed=0):
  return jax.random.normal(jax.random.key(seed), (count, 8, 28, 28, 3))


def test_multi_clip_prediction_is_the_mean_of_each_clips_logits():
  method = make_method('3d')
  variables = jit(method.init_variables)(jax.random.key(0), {'image': clips(2)})
  params = variables.pop('params')
  state = method.init_state(jax.random.key(0), {'image': clips(2)}).replace(
      params=params, model_state=variables)
  views = clips(6, seed=1).reshape(2, 3, 8, 28, 28, 3)
  each = [method.predict(state, {'image': views[:, k]}) for k in range(3)]
  np.testing.assert_allclose(method.predict_views(state, {'image': views}),
                             np.mean(each, axis=0), rtol=1e-5, atol=1e-6)


def test_a_video_step_on_8_devices_equals_1_device():
  method = make_method('2plus1d')
  batch = {'image': clips(16), 'label': jnp.arange(16) % 10}
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss1, (_, stats1)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (_, stats8)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-6)


def test_vivit_trains_evaluates_on_several_clips_draws_attention_and_resumes(
    tmp_path, scenes_video_data_dir):
  fields = {'schedule.name': 'constant', 'checkpoint_every_steps': '2'}
  config = local_config(scenes_video_data_dir, 'vivit', **fields)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  for name in ('test', 'test_multi_clip'):
    assert results[f'{name}/num_examples'] == 12
    assert 0 <= results[f'{name}/accuracy'] <= results[f'{name}/top5_accuracy'] <= 1
    assert (tmp_path / 'run' / name / 'predictions.png').exists()
  assert 0 <= results['attention/entropy'] <= 1 and results['attention/num_examples'] == 12
  assert (tmp_path / 'run' / 'attention' / 'temporal_attention.png').exists()
  # Interrupted after its checkpoint at step 2 and resumed: the same final weights. The
  # run's own step-2 checkpoint, alone in a fresh workdir, is that interruption; the
  # resumed run skips the evaluation, which the weights do not depend on.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(tmp_path / 'run' / 'checkpoints' / '2',
                  os.path.join(resumed, 'checkpoints', '2'))
  assert checkpointing.saved_steps(resumed) == [2]
  config.evals = {}
  train.train_and_evaluate(config, resumed)
  chex.assert_trees_all_close(checkpointing.read_latest(resumed)['params'],
                              checkpointing.read_latest(str(tmp_path / 'run'))['params'],
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('spec', ['video_scenes.py:arch=frame', 'video_scenes.py:arch=vivit',
                                  'video_ucf101.py:arch=2plus1d,local'])
def test_recipes_pp_matches_the_model(scenes_video_data_dir, spec):
  config = config_lib.load_config(os.path.join(EXPERIMENTS, spec))
  builder = pipeline.get_builder(config.data.name, scenes_video_data_dir)
  batch = next(iter(pipeline.eval_batches(builder, 'train', batch_size=2,
                                          pp=config.data.pp_train)))
  assert batch['image'].shape[1:] == tuple(config.data.input_shape)
  multi = next(iter(pipeline.eval_batches(builder, 'test', batch_size=2,
                                          pp=config.evals.test_multi_clip.pp)))
  assert multi['image'].shape[2:] == tuple(config.data.input_shape)


def test_ucf101_recipe_reads_a_folder_of_clips(tmp_path):
  """The accelerator recipe's preprocessing on the user's own clips (frame folders)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for name in ('jump', 'run'):
      folder = tmp_path / split / name / 'clip0'
      folder.mkdir(parents=True)
      for t in range(34):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8)).save(
            folder / f'{t}.png')
  config = config_lib.load_config(os.path.join(EXPERIMENTS, 'video_ucf101.py'))
  builder = pipeline.get_builder(f'folder:{tmp_path}')
  batch = next(iter(pipeline.eval_batches(builder, 'train', batch_size=2,
                                          pp=config.data.pp_train)))
  assert batch['image'].shape[1:] == tuple(config.data.input_shape) == (16, 112, 112, 3)
  multi = next(iter(pipeline.eval_batches(builder, 'test', batch_size=2,
                                          pp=config.evals.test_multi_clip.pp)))
  assert multi['image'].shape[1:] == (10, 16, 112, 112, 3)


def test_bad_arguments_are_named():
  with pytest.raises(config_lib.ConfigError, match='arch must be one of'):
    config_lib.load_config(os.path.join(EXPERIMENTS, 'video_scenes.py:arch=lstm'))
  with pytest.raises(config_lib.ConfigError, match='no attention layers'):
    make_method('3d').attention_weights(None, {'image': clips(1)})
