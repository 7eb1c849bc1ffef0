"""The generative evaluator and the sample-quality metrics, on a closed-form model.

The model is a per-pixel Gaussian fitted by maximum likelihood (the training mean and
standard deviation, per class when conditional): simple enough that its test negative
log-likelihood is checked against numpy, and a real generative model for the
evaluator's figures and FID.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from vision_jax import config_lib, metrics, parallel, train
from vision_jax.data import pipeline
from vision_jax.evaluators import generative as generative_evaluator
from vision_jax.methods import generative

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP = 'decode|value_range(0, 1)'


class PixelGaussian(generative.Method):
  """x ~ N(mean_c, diag(std_c^2)) per class c (one class when unconditional)."""
  name = 'pixel_gaussian'
  OPTIONS = {'conditional': False}
  CAPABILITIES = ('generate', 'reconstruct', 'interpolate', 'trajectory', 'test_metrics')

  def make_optimizer(self, key='optimizer', schedule_key='schedule'):
    import optax  # pylint: disable=g-import-not-at-top
    return optax.constant_schedule(0.0), optax.identity()

  def init_variables(self, rng, batch):
    del rng
    self.check_images(batch['image'])
    classes = self.num_classes if self.conditional else 1
    shape = (classes, *self.image_shape)
    return {'params': {'mean': jnp.zeros(shape), 'log_std': jnp.zeros(shape)}}

  def _index(self, labels):
    return labels if self.conditional else jnp.zeros_like(labels)

  def generate(self, state, rng, labels):
    index = self._index(labels)
    mean, std = state.params['mean'][index], jnp.exp(state.params['log_std'][index])
    return jnp.clip(mean + std * jax.random.normal(rng, mean.shape), 0, 1)

  def reconstruct(self, state, batch, rng):
    del rng
    return {'input': batch['image'],
            'reconstruction': state.params['mean'][self._index(batch['label'])]}

  def interpolate(self, state, batch, rng, num_points):
    del state, rng
    x = batch['image']
    weights = jnp.linspace(0, 1, num_points)[None, :, None, None, None]
    return (1 - weights) * x[0::2][:, None] + weights * x[1::2][:, None]

  def trajectory(self, state, rng, labels, num_frames):
    final = self.generate(state, rng, labels)
    noise = jax.random.uniform(jax.random.fold_in(rng, 1), final.shape)
    weights = jnp.linspace(0, 1, num_frames)[None, :, None, None, None]
    return (1 - weights) * noise[:, None] + weights * final[:, None]

  def test_metrics(self, state, batch, rng):
    del rng
    index = self._index(batch['label'])
    mean, log_std = state.params['mean'][index], state.params['log_std'][index]
    x = batch['image']
    nll = 0.5 * ((x - mean) / jnp.exp(log_std)) ** 2 + log_std + 0.5 * jnp.log(2 * jnp.pi)
    return {'nll': nll.reshape(len(x), -1).sum(1)}


def split_arrays(data_dir, split):
  builder = pipeline.get_builder('digits', data_dir)
  size = pipeline.split_size(builder, split)
  batch = next(pipeline.eval_batches(builder, split, batch_size=size, pp=PP))
  return batch['image'], batch['label']


def fitted(data_dir, mesh, *, conditional):
  """The method and its maximum-likelihood state on the digits' training split."""
  config = config_lib.base_config()
  config.method = 'pixel_gaussian'
  config.data.name = 'digits'
  config.data.data_dir = data_dir
  config.data.pp_train = PP
  config.data.input_shape = (8, 8, 1)
  config.pixel_gaussian = ml_collections.ConfigDict({'conditional': conditional})
  info = pipeline.dataset_info(pipeline.get_builder('digits', data_dir), 'digits')
  method = PixelGaussian(config, info, total_steps=1, steps_per_epoch=1)
  images, labels = split_arrays(data_dir, 'train')
  groups = [images[labels == k] for k in range(10)] if conditional else [images]
  mean = np.stack([g.mean(0) for g in groups])
  log_std = np.log(np.stack([g.std(0) for g in groups]) + 0.05)
  abstract = {'image': jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.float32),
              'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  _, _, init, _ = train.make_train_step(method, abstract, mesh, 0)
  state = init()
  state = state.replace(params=jax.device_put(
      {'mean': mean.astype(np.float32), 'log_std': log_std.astype(np.float32)},
      parallel.replicated(mesh)))
  return config, method, state


def make_evaluator(method, config, workdir, mesh, **fields):
  eval_config = config_lib.evaluator_config(type='generative', data=dict(split='test'),
                                            pp=PP, **fields)
  return generative_evaluator.Evaluator(method, eval_config, name='eval', workdir=workdir,
                                        mesh=mesh, train_data=config.data)


def test_frechet_distance_equals_the_formula_with_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.5
  (mu1, s1), (mu2, s2) = metrics.gaussian_fit(a), metrics.gaussian_fit(b)
  np.testing.assert_allclose(s1, np.cov(a.T))
  formula = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), formula, rtol=1e-9)
  assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
  # Fewer samples than dimensions: a singular covariance, still a finite distance of 0.
  few = rng.normal(size=(5, 20))
  assert metrics.frechet_distance(*metrics.gaussian_fit(few), *metrics.gaussian_fit(few)) \
      == pytest.approx(0, abs=1e-8)


def test_precision_and_recall_of_point_sets():
  rng = np.random.default_rng(1)
  real = rng.normal(size=(200, 4))
  assert metrics.precision_recall(real, real) == (1.0, 1.0)
  far = real + 100.0
  assert metrics.precision_recall(real, far) == (0.0, 0.0)
  # Samples on a small part of the data: precise, but covering little of it.
  part = real[np.linalg.norm(real, axis=1) < 0.8]
  precision, recall = metrics.precision_recall(real, part)
  assert precision == 1.0 and recall < 0.5


def test_metrics_and_figures_on_eight_devices(tmp_path, data_dir):
  mesh = parallel.make_mesh(8)
  config, method, state = fitted(data_dir, mesh, conditional=True)
  # 360 test images in batches of 64: the last batch is padded and masked.
  evaluator = make_evaluator(method, config, str(tmp_path), mesh, batch_size=64,
                             grid_samples=20, interpolation_pairs=3, interpolation_points=5,
                             trajectory_samples=3, trajectory_frames=4)
  results = evaluator.evaluate(state, step=1, rng=jax.random.key(0))
  images, labels = split_arrays(data_dir, 'test')
  mean, log_std = (np.asarray(state.params[k])[labels] for k in ('mean', 'log_std'))
  nll = (0.5 * ((images - mean) / np.exp(log_std)) ** 2 + log_std
         + 0.5 * np.log(2 * np.pi)).reshape(len(images), -1).sum(1)
  assert results['num_examples'] == 360
  np.testing.assert_allclose(results['nll'], nll.mean(), rtol=1e-5)

  paths = evaluator.figures(state, step=1, rng=jax.random.key(0))
  assert sorted(os.path.basename(p) for p in paths) == [
      'interpolations.png', 'reconstructions.png', 'samples.png', 'trajectory.png']
  assert all(os.path.getsize(p) > 1000 for p in paths)
  # Fixed noise: the same samples at every evaluation; class k's samples near mean k.
  first, again = evaluator.sample(state, 20), evaluator.sample(state, 20)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (20, 8, 8, 1) and 0 <= first.min() and first.max() <= 1
  distances = ((first[:, None] - np.asarray(state.params['mean'])[None]) ** 2).sum((2, 3, 4))
  assert np.mean(distances.argmin(1) == np.arange(20) % 10) > 0.8


def test_fid_in_a_trained_classifiers_feature_space(tmp_path, data_dir):
  classifier_dir = str(tmp_path / 'classifier')
  classifier_config = config_lib.load_config(
      os.path.join(REPO, 'experiments/classification/cnn_digits.py:local'))
  config_lib.apply_overrides(classifier_config, {'data.data_dir': data_dir})
  train.train_and_evaluate(classifier_config, classifier_dir, num_devices=1)

  mesh = parallel.make_mesh(2)
  config, method, state = fitted(data_dir, mesh, conditional=True)
  evaluator = make_evaluator(method, config, str(tmp_path / 'gen'), mesh, batch_size=100,
                             fid_classifier=classifier_dir, fid_samples=300)
  results = evaluator.evaluate(state, step=1, rng=jax.random.key(0))
  assert results['fid_num_samples'] == 300 and results['fid_num_reference'] == 1437
  # Pixel-independent noise is far from real digits; the test set is close to the train set.
  assert 0 < results['fid_classifier_floor'] < results['fid_classifier']
  assert 0 <= results['precision_classifier'] <= 1 and 0 <= results['recall_classifier'] <= 1
  assert 0 < results['sample_class_entropy'] <= 1
  assert 0 <= results['sample_label_accuracy'] <= 1

  with pytest.raises(config_lib.ConfigError, match='fid_classifier.*no config.json'):
    make_evaluator(method, config, str(tmp_path / 'gen'), mesh,
                   fid_classifier=str(tmp_path / 'nothing'))


def test_a_non_generative_method_is_a_config_error(tmp_path, data_dir):
  config = config_lib.load_config(
      os.path.join(REPO, 'experiments/classification/cnn_digits.py:local'))
  config_lib.apply_overrides(config, {'data.data_dir': data_dir})
  info = pipeline.dataset_info(pipeline.get_builder('digits', data_dir), 'digits')
  from vision_jax.methods import classification  # pylint: disable=g-import-not-at-top
  method = classification.Method(config, info, total_steps=1, steps_per_epoch=1)
  with pytest.raises(config_lib.ConfigError, match='needs a generative method'):
    make_evaluator(method, config, str(tmp_path), parallel.make_mesh(1))
