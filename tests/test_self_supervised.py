"""Rotation prediction and SimCLR (CPC: tests/test_cpc.py): rotation labels, SimCLR's
loss as NT-Xent of the interleaved projections, 8 devices equal 1 (global negatives and
BatchNorm statistics), views that differ and come back after a resume, the local
experiments end to end, the random-init probe baseline, and fine-tuning that copies
exactly the encoder (the losses: tests/test_losses.py; the probes: tests/test_probe.py;
the models' derivatives: tests/models/test_autodiff.py)."""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_jax import checkpointing, config_lib, evaluators, losses, optim, parallel, train
from vision_jax.data import pipeline
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import get_method_class, rotation, self_supervised

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_self_supervised')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/self_supervised')
INFO = DatasetInfo(name='toy', num_examples={'train': 16}, num_classes=10, class_names=None)
TINY_ENCODER = dict(name='cnn', features=(8,), dense_features=(16,), use_batchnorm=True)
# Tiny networks; XLA's optimising compile is what costs (as in tests/models).
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def make_method(name, **fields):
  config = config_lib.base_config()
  config.method = name
  config.model.update(TINY_ENCODER)
  config.update(fields)
  return get_method_class(name)(config, INFO, total_steps=2, steps_per_epoch=1)


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape), jnp.float32)


def test_rotation_labels_match_the_rotation_applied():
  x = images((3, 5, 5, 2))
  rotated, labels = rotation.rotate_all(x)
  chex.assert_shape(rotated, (12, 5, 5, 2))
  for i in range(3):
    for r in range(4):
      np.testing.assert_array_equal(rotated[4 * i + r], np.rot90(np.asarray(x[i]), r))
      assert labels[4 * i + r] == r
  with pytest.raises(ValueError, match='square images, got 4x5'):
    rotation.rotate_all(images((1, 4, 5, 1)))


def test_rotation_predictions_score_every_rotation_of_an_image():
  method = make_method('rotation')
  x = images((2, 8, 8, 1))
  state = jit(method.init_state)(jax.random.key(0), {'image': x})
  logits = jit(method.predict_rotations)(state, {'image': x})
  chex.assert_shape(logits, (2, 4, 4))
  rotated, _ = rotation.rotate_all(x)
  _, direct = method.model.apply({'params': state.params, **state.model_state}, rotated)
  np.testing.assert_allclose(logits.reshape(8, 4), direct, rtol=1e-5, atol=1e-6)


def test_simclr_loss_is_nt_xent_of_the_interleaved_projections():
  method = make_method('simclr', simclr=dict(temperature=0.2, projection_features=8))
  batch = {'view1': images((4, 8, 8, 1), 1), 'view2': images((4, 8, 8, 1), 2)}
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  loss, (metrics, _) = jit(method.loss)(params, model_state, batch, jax.random.key(1))
  # Both views in one pass (BatchNorm over all 2N), z rows 2k, 2k + 1 the views of k.
  (_, z), _ = method.model.apply({'params': params, **model_state},
                                 jnp.concatenate([batch['view1'], batch['view2']]),
                                 train=True, mutable=['batch_stats'])
  interleaved = np.empty((8, 8), np.float32)
  interleaved[0::2], interleaved[1::2] = z[:4], z[4:]
  np.testing.assert_allclose(loss, losses.nt_xent(jnp.asarray(interleaved), 0.2), rtol=1e-6)
  assert 0 <= metrics['contrastive_accuracy'] <= 1


def test_simclr_on_8_devices_equals_1_device():
  """Loss, gradients and BatchNorm statistics of one step on a global batch of 16
  images split over 8 devices equal the same step on one device: the negatives and the
  batch statistics are global."""
  method = make_method('simclr', simclr=dict(projection_features=8))
  batch = {'view1': images((16, 8, 8, 1), 1), 'view2': images((16, 8, 8, 1), 2)}
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss1, (_, stats1)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (_, stats8)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-7)


def test_simclr_refuses_gradient_accumulation_and_needs_two_views():
  with pytest.raises(config_lib.ConfigError, match='grad_accum_steps must be 1'):
    make_method('simclr', grad_accum_steps=2)
  method = make_method('simclr')
  with pytest.raises(ValueError, match='two views per image'):
    method.init_variables(jax.random.key(0), {'image': images((2, 8, 8, 1))})
  with pytest.raises(config_lib.ConfigError, match='leave model.num_classes unset'):
    make_method('simclr', model=dict(TINY_ENCODER, num_classes=10))


def test_views_differ_and_come_back_after_a_resume(data_dir):
  config = config_lib.load_config(os.path.join(EXPERIMENTS, 'simclr_mnist.py:local'))
  builder = pipeline.get_builder('digits', data_dir)
  stream = functools.partial(pipeline.train_batches, builder, 'train', batch_size=8, seed=3,
                             pp=config.data.pp_train)
  uninterrupted = stream(start_step=0)
  batches = [next(uninterrupted) for _ in range(3)]
  assert set(batches[0]) == {'view1', 'view2'}
  assert not np.allclose(batches[2]['view1'], batches[2]['view2'])
  resumed = next(stream(start_step=2))
  np.testing.assert_array_equal(resumed['view1'], batches[2]['view1'])
  np.testing.assert_array_equal(resumed['view2'], batches[2]['view2'])


def cheap_probes(config):
  """kNN only: the linear probes are tests/test_probe.py's; their solver compiles slowly."""
  for evaluator in config.evals.values():
    if evaluator.type == 'probe':
      with evaluator.unlocked():
        evaluator.knn_only = True
  return config


@pytest.fixture(scope='module')
def simclr_run(tmp_path_factory, data_dir):
  config = cheap_probes(config_lib.load_config(os.path.join(EXPERIMENTS, 'simclr_mnist.py:local')))
  # Two steps, evaluated once at the end.
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, 'total_steps': '2',
                                      'eval_every_steps': '2', 'checkpoint_every_steps': '2'})
  for evaluator in config.evals.values():  # Half the training split: more than knn_k.
    with evaluator.unlocked():
      evaluator.train_split = 'train[:50%]'
  workdir = str(tmp_path_factory.mktemp('simclr'))
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_simclr_local_trains_and_probes_beside_its_initial_encoder(simclr_run, data_dir):
  config, workdir, results = simclr_run
  assert results['probe/num_examples'] == 360  # digits' test split
  for name in ('probe', 'probe_random_init', 'progress'):
    assert 0 <= results[f'{name}/knn/accuracy'] <= 1
  assert os.path.isfile(os.path.join(workdir, 'probe', 'embedding.png'))
  # The baseline is the state the trainer started from: recomputed from the config's
  # seed outside the trainer, its probe is the same.
  method = get_method_class('simclr')(config, INFO, total_steps=4, steps_per_epoch=1)
  outside = evaluators.get_evaluator(method, config.evals.probe_random_init, name='baseline',
                                     workdir=workdir, mesh=parallel.make_mesh(),
                                     train_data=config.data)
  again = outside.evaluate(None, step=4, rng=jax.random.key(0))
  assert again['knn/accuracy'] == results['probe_random_init/knn/accuracy']


def test_fine_tuning_starts_from_exactly_the_encoder(simclr_run):
  _, workdir, _ = simclr_run
  config = config_lib.load_config(
      os.path.join(EXPERIMENTS, f'finetune.py:init_from={workdir},local'))
  assert config.data.train_split == 'train[:1%]'
  method = get_method_class('classification')(config, INFO, total_steps=4, steps_per_epoch=1)
  mesh = parallel.make_mesh(1)
  abstract_batch = {'image': jax.ShapeDtypeStruct((8, 28, 28, 1), jnp.float32),
                    'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  _, sharding, init, _ = train.make_train_step(method, abstract_batch, mesh, config.seed)
  fresh = init()
  state = checkpointing.initialize_from(config.init_from, fresh, sharding)
  pretrained = checkpointing.read_latest(workdir)
  encoder = pretrained['params']['encoder']
  assert set(state.params) == set(encoder) | {'head'}
  chex.assert_trees_all_equal({k: v for k, v in state.params.items() if k != 'head'},
                              encoder)
  chex.assert_trees_all_equal(state.model_state['batch_stats'],
                              pretrained['model_state']['batch_stats']['encoder'])
  chex.assert_trees_all_equal(state.params['head'], fresh.params['head'])
  with pytest.raises(ValueError, match='no config.json there'):
    config_lib.load_config(os.path.join(EXPERIMENTS, 'finetune.py:init_from=/nonexistent'))


@pytest.mark.parametrize('name', ['rotation_mnist', 'cpc_mnist'])
def test_local_mode_trains_and_evaluates(tmp_path, data_dir, name):
  config = cheap_probes(config_lib.load_config(os.path.join(EXPERIMENTS, f'{name}.py:local')))
  config_lib.apply_overrides(config, {'data.data_dir': data_dir})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['probe/num_examples'] == 360
  assert np.isfinite(results['probe/knn/accuracy'])
  if name == 'rotation_mnist':
    assert 0 <= results['rotation/accuracy'] <= 1
    assert os.path.isfile(tmp_path / 'rotation' / 'rotations.png')


def test_fine_tune_layout_names_the_encoder():
  method = make_method('rotation')
  variables = jax.eval_shape(method.init_variables, jax.random.key(0),
                             {'image': images((2, 8, 8, 1))})
  assert set(variables['params']) == {'encoder', 'head'}
  assert set(variables['batch_stats']) == {'encoder'}
  assert self_supervised.FINE_TUNE_EXCLUDE == ('params/head',)


SSL_CONFIGS = ['simclr_mnist', 'rotation_mnist', 'cpc_mnist', 'simclr_scenes',
               'rotation_scenes', 'cpc_scenes', 'simclr_cifar10']


# Small datasets with the same image features (generating scenes/single takes a minute).
STAND_INS = {'mnist': 'digits', 'scenes/single': 'fake_images/cifar10',
             'cifar10': 'fake_images/cifar10'}


@pytest.mark.parametrize('name', SSL_CONFIGS)
def test_configured_input_shape_matches_the_preprocessing(data_dir, name):
  config = config_lib.load_config(os.path.join(EXPERIMENTS, f'{name}.py'))
  builder = pipeline.get_builder(STAND_INS[config.data.name], data_dir)
  method = get_method_class(config.method)
  train = next(iter(pipeline.eval_batches(builder, 'train', batch_size=2,
                                          pp=config.data.pp_train)))
  for key in method.TRAIN_IMAGE_KEYS:
    assert train[key].shape[1:] == tuple(config.data.input_shape)
  probe = next(iter(pipeline.eval_batches(builder, 'test', batch_size=2,
                                          pp=config.evals.probe.pp)))
  assert probe['image'].shape[1:] == tuple(config.data.input_shape)


def test_cifar10_recipe_is_the_official_one():
  config = config_lib.load_config(os.path.join(EXPERIMENTS, 'simclr_cifar10.py'))
  assert (config.batch_size, config.total_epochs, config.simclr.temperature) == (512, 1000, 0.5)
  assert (config.model.name, config.model.depth, config.model.stem) == ('resnet', 18, 'cifar')
  assert config.optimizer.name == 'lars' and 'blur' not in config.data.pp_train.replace(
      'blur=False', '')
  steps_per_epoch = 50_000 // 512
  schedule, _ = optim.from_config(config, total_steps=1000 * steps_per_epoch,
                                  steps_per_epoch=steps_per_epoch)
  assert float(schedule(10 * steps_per_epoch)) == pytest.approx(2.0)  # 1.0 x 512 / 256
