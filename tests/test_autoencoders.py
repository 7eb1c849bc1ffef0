"""Autoencoder, denoising autoencoder and VAE: their losses against literal numpy
transcriptions of the papers' formulas, the corruptions' statistics, the IWAE bound,
8 devices equal 1, and the `:local` experiments end to end (the family's derivatives
under every transformation: tests/models/test_autodiff.py)."""

import functools
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import tensorflow as tf

from vision_jax import config_lib, models, parallel, train
from vision_jax.data import preprocess
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import autoencoder, base, vae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AE_MNIST = os.path.join(REPO, 'experiments/generative/ae_mnist.py')
VAE_MNIST = os.path.join(REPO, 'experiments/generative/vae_mnist.py')
INFO = DatasetInfo(name='toy', num_examples={'train': 16}, num_classes=10,
                   class_names=tuple('0123456789'))
SHAPE = (8, 8, 1)  # Two stride-2 stages: 8 -> 4 -> 2.

# Tiny networks; XLA's optimising compile is what costs (as in tests/models).
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def make_method(spec, **overrides):
  """The `:local` experiment's method on 8x8 images, with config overrides."""
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, {'data.input_shape': str(SHAPE),
                                      **{k: str(v) for k, v in overrides.items()}})
  cls = vae.Method if config.method == 'vae' else autoencoder.Method
  return cls(config, INFO, total_steps=4, steps_per_epoch=2)


def binary_images(n, seed=0):
  return (np.random.default_rng(seed).uniform(size=(n, *SHAPE)) > 0.6).astype(np.float32)


def init_params(method, n=4):
  return jit(method.init_variables)(jax.random.key(0), {'image': jnp.zeros((n, *SHAPE))}
                                    )['params']


# ----------------------------------------------------------------------------- binarize op


def test_binarize_op_thresholds_on_the_unit_range():
  op = preprocess.parse('value_range(0, 1)|binarize(0.5)')
  image = tf.constant(np.array([0, 100, 127, 128, 200, 255], np.uint8).reshape(1, 6, 1))
  out = op({'image': image, preprocess.RNG_KEY: tf.constant([0, 0], tf.int64)})['image']
  assert out.dtype == tf.float32
  # 127/255 = 0.498 is below the threshold, 128/255 = 0.502 above (pixel > threshold).
  np.testing.assert_array_equal(out.numpy().ravel(), [0, 0, 0, 1, 1, 1])
  out = preprocess.parse('binarize(0.1)')({'image': tf.constant([[[0.1], [0.2]]])})
  np.testing.assert_array_equal(out['image'].numpy().ravel(), [0, 1])


# ----------------------------------------------------------------------------- the model


def test_the_stage_divisibility_error_names_the_sizes():
  bad = models.get_model(dict(name='autoencoder', features=(2, 3, 4)), image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match=r'28x28\) must divide by 2\*\*3 = 8'):
    bad.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def perturbed(params, seed=1):
  """Params away from their initialisation (zero biases), so no derivative vanishes."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p * (1 + 0.1 * rng.standard_normal(p.shape))
                      + 0.05 * rng.standard_normal(p.shape), params)


# ----------------------------------------------------------------------------- autoencoder


def test_reconstruction_losses_are_the_formulas():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, *SHAPE)) * 3
  x = rng.uniform(size=(3, *SHAPE))
  p = 1 / (1 + np.exp(-logits))
  cross_entropy = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
  np.testing.assert_allclose(autoencoder.reconstruction_loss('bernoulli', logits, x),
                             cross_entropy, rtol=1e-5)
  np.testing.assert_allclose(autoencoder.reconstruction_loss('mse', logits, x),
                             np.sum((p - x) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  # From logits with log_sigmoid: finite where sigmoid rounds to 0 or 1.
  assert np.isfinite(autoencoder.bernoulli_cross_entropy(jnp.full((1, 4), 200.0),
                                                         jnp.zeros((1, 4)))).all()


def test_corruption_statistics():
  n = 64
  shape = (n, 10, 10, 2)  # D = 200 values per image.
  ones, grey = jnp.ones(shape), jnp.full(shape, 0.5)
  key = jax.random.key(3)
  masked = autoencoder.corrupt(key, ones, 'mask', mask_fraction=0.25)
  counts = np.sum(np.asarray(masked) == 0, axis=(1, 2, 3))
  np.testing.assert_array_equal(counts, 50)  # Exactly 25% of each image's values.
  assert set(np.unique(masked)) == {0.0, 1.0}
  assert len({tuple(np.flatnonzero(m)) for m in np.asarray(masked)}) == n  # per image
  assert 0.2 < np.mean(np.asarray(masked)[..., 0] == 0) < 0.3  # over positions too

  salted = np.asarray(autoencoder.corrupt(key, grey, 'salt_pepper',
                                          salt_pepper_fraction=0.1))
  changed = salted != 0.5
  np.testing.assert_array_equal(changed.sum(axis=(1, 2, 3)), 20)
  assert set(np.unique(salted[changed])) == {0.0, 1.0}
  assert 0.4 < np.mean(salted[changed]) < 0.6  # Salt or pepper with probability 1/2.

  noisy = np.asarray(autoencoder.corrupt(key, grey, 'gaussian', noise_std=0.1))
  assert np.std(noisy - 0.5) == pytest.approx(0.1, rel=0.03)
  assert abs(np.mean(noisy - 0.5)) < 0.005
  strong = autoencoder.corrupt(key, grey, 'gaussian', noise_std=2.0)
  assert float(strong.min()) == 0.0 and float(strong.max()) == 1.0  # Clipped to [0, 1].
  assert autoencoder.corrupt(key, grey, 'none') is grey
  # A different step key, a different corruption.
  other = autoencoder.corrupt(jax.random.key(4), ones, 'mask', mask_fraction=0.25)
  assert not np.array_equal(other, masked)


def test_denoising_loss_targets_the_clean_image():
  method = make_method(AE_MNIST + ':local', **{'autoencoder.noise': 'mask'})
  params = perturbed(init_params(method))
  clean = jnp.asarray(np.random.default_rng(1).uniform(0.2, 0.8, (4, *SHAPE)))
  rng = jax.random.key(7)
  loss, (metrics, _) = jit(method.loss)(params, {}, {'image': clean}, rng)
  noisy = jit(method.corrupt)(rng, clean)
  assert float(jnp.abs(noisy - clean).max()) > 0.1
  logits = np.asarray(jit(method.model.apply)({'params': params}, 2 * noisy - 1), np.float64)
  p, x = 1 / (1 + np.exp(-logits)), np.asarray(clean, np.float64)
  against_clean = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3)).mean()
  xn = np.asarray(noisy, np.float64)
  against_noisy = -np.sum(xn * np.log(p) + (1 - xn) * np.log(1 - p), axis=(1, 2, 3)).mean()
  np.testing.assert_allclose(loss, against_clean, rtol=1e-5)
  # The check above fails if the corrupted image were the target: far beyond its rtol.
  assert abs(against_clean - against_noisy) > 20 * 1e-5 * against_clean
  assert metrics['reconstruction_loss'] == loss
  state = base.TrainState(step=0, params=params, opt_state=None, model_state={})
  out = jit(method.reconstruct)(state, {'image': clean}, rng)
  np.testing.assert_array_equal(out['clean'], clean)
  np.testing.assert_array_equal(out['input'], noisy)
  np.testing.assert_allclose(out['reconstruction'], p, rtol=1e-5)


# ----------------------------------------------------------------------------- VAE formulas


def test_gaussian_kl_is_the_closed_form():
  rng = np.random.default_rng(0)
  mean, log_variance = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
  # Kingma & Welling, appendix B: -KL = 1/2 sum (1 + log sigma^2 - mu^2 - sigma^2).
  kw = -0.5 * np.sum(1 + log_variance - mean ** 2 - np.exp(log_variance), axis=-1)
  # The general KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) /
  # (2 s2^2) - 1/2, per dimension, with m2 = 0, s2 = 1.
  s1, m2, s2 = np.exp(0.5 * log_variance), 0.0, 1.0
  general = np.sum(np.log(s2 / s1) + (s1 ** 2 + (mean - m2) ** 2) / (2 * s2 ** 2) - 0.5,
                   axis=-1)
  np.testing.assert_allclose(vae.gaussian_kl(mean, log_variance), kw, rtol=1e-5)
  np.testing.assert_allclose(vae.gaussian_kl(mean, log_variance), general, rtol=1e-5)
  np.testing.assert_allclose(vae.gaussian_kl(np.zeros((1, 3)), np.zeros((1, 3))), [0.0])
  z = rng.standard_normal((5, 7))
  np.testing.assert_allclose(
      vae.log_normal(z, mean, log_variance),
      scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * log_variance)).sum(-1), rtol=1e-5)


def test_decoder_likelihoods():
  rng = np.random.default_rng(0)
  mean = rng.uniform(size=(2, 4, 4, 3))
  x = np.round(rng.uniform(size=(2, 4, 4, 3)) * 255) / 255
  np.testing.assert_allclose(
      vae.gaussian_log_likelihood(mean, x, 0.1),
      scipy.stats.norm.logpdf(x, mean, 0.1).sum(axis=(1, 2, 3)), rtol=1e-5)
  # The discretised logistic is a distribution over the 256 levels: the masses of all
  # levels sum to 1, and an inner level's mass is the difference of the CDFs.
  levels = jnp.arange(256.0)[:, None] / 255
  for m, log_s in ((0.3, -3.0), (0.0, -5.0), (1.0, -1.0), (0.5, -7.5)):
    log_p = vae.discretized_logistic_log_likelihood(
        jnp.full((256, 1), m), jnp.full((256, 1), log_s), levels)
    assert float(jnp.sum(jnp.exp(log_p))) == pytest.approx(1.0, abs=1e-4)
  k, m, s = 100, 0.4, math.exp(-3.0)
  cdf = lambda v: scipy.special.expit((v - m) / s)  # noqa: E731
  mass = cdf((k + 0.5) / 255) - cdf((k - 0.5) / 255)
  got = vae.discretized_logistic_log_likelihood(
      jnp.full((1, 1), m), jnp.full((1, 1), -3.0), jnp.full((1, 1), k / 255))
  np.testing.assert_allclose(got, [np.log(mass)], rtol=1e-4)


class VaeCase:
  """The `:local` VAE on 8x8 images with perturbed params, binary images and a key,
  with its functions compiled once for the tests that share them."""

  def __init__(self, **overrides):
    self.method = method = make_method(VAE_MNIST + ':local', **overrides)
    params = perturbed(init_params(method), 1)
    self.state = base.TrainState(step=0, params=params, opt_state=None, model_state={})
    self.x = jnp.asarray(binary_images(16, seed=2))
    self.rng = jax.random.key(9)
    self.encode, self.decode = jit(method.encode), jit(method.decode)
    self.test_metrics = jit(method.test_metrics)
    self.log_weights = jit(method.log_weights, static_argnums=3)
    self.iwae_bound = jit(method.iwae_bound, static_argnums=3)

  def transcription(self):
    """The per-image negative ELBO of Kingma & Welling in numpy: one reparameterised
    draw (eps of sample 0), Bernoulli log-likelihood and analytic KL, both summed per
    image; and log p(z) - log q(z | x) of that draw."""
    params = self.state.params
    mean, log_variance = (np.asarray(a, np.float64) for a in self.encode(params, self.x))
    eps = np.asarray(jax.random.normal(jax.random.fold_in(self.rng, 0), mean.shape),
                     np.float64)
    z = mean + np.exp(0.5 * log_variance) * eps
    logits = np.asarray(self.decode(params, jnp.asarray(z, jnp.float32)), np.float64)
    p = scipy.special.expit(logits)
    xs = np.asarray(self.x, np.float64)
    nll = -np.sum(xs * np.log(p) + (1 - xs) * np.log(1 - p), axis=(1, 2, 3))
    kl = 0.5 * np.sum(np.exp(log_variance) + mean ** 2 - 1 - log_variance, axis=-1)
    log_q = scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * log_variance)).sum(-1)
    log_prior = scipy.stats.norm.logpdf(z).sum(-1)
    return nll, kl, log_prior - log_q


@functools.cache
def vae_case():
  return VaeCase(**{'vae.iwae_chunk': 7, 'vae.beta': 2.0})


def test_negative_elbo_is_the_transcription():
  c = vae_case()
  nll, kl, _ = c.transcription()
  assert kl.min() > 0.1  # Both terms matter.
  terms = c.test_metrics(c.state, {'image': c.x}, c.rng)
  np.testing.assert_allclose(terms['reconstruction_nll'], nll, rtol=1e-5)
  np.testing.assert_allclose(terms['kl'], kl, rtol=1e-4)
  np.testing.assert_allclose(terms['negative_elbo'], nll + kl, rtol=1e-5)
  np.testing.assert_array_equal(terms['nonbinary_pixels'], 0.0)
  # Training: both terms summed per image, beta (2) on the KL, averaged over the batch.
  loss, (metrics, _) = jit(c.method.loss)(c.state.params, {}, {'image': c.x}, c.rng)
  np.testing.assert_allclose(loss, np.mean(nll + 2.0 * kl), rtol=1e-5)
  np.testing.assert_allclose(metrics['negative_elbo'], np.mean(nll + kl), rtol=1e-5)
  # A mean-reduced reconstruction term next to the summed KL is another number.
  assert abs(np.mean(nll / np.prod(SHAPE) + 2.0 * kl) - loss) > 1.0
  grey = np.asarray(c.x).copy()
  grey[:, 0, :4] = 0.5
  np.testing.assert_allclose(
      c.test_metrics(c.state, {'image': jnp.asarray(grey)}, c.rng)['nonbinary_pixels'],
      4 / 64)


def test_iwae_bound_one_sample_is_the_elbo_draw_and_more_samples_tighten_it():
  c = vae_case()
  nll, kl, log_prior_minus_q = c.transcription()
  params, x, rng = c.state.params, c.x, c.rng
  # 200 samples in chunks of 7 (the last one short); sample i from fold_in(rng, i).
  log_w = np.asarray(c.log_weights(params, x, rng, 200), np.float64)
  # k = 1: the log weight of the ELBO's own draw, the one-sample Monte-Carlo ELBO.
  np.testing.assert_allclose(log_w[0], -nll + log_prior_minus_q, rtol=1e-5)
  # L_k = logsumexp of the first k log weights minus log k, whatever the chunking
  # (20 is 2 chunks of 7 and one of 6; 200 is 28 of 7 and one of 4).
  k = 20
  np.testing.assert_allclose(c.iwae_bound(params, x, rng, k),
                             scipy.special.logsumexp(log_w[:k], axis=0) - np.log(k),
                             rtol=1e-5)
  # Tighter with more samples, on average over images: L_1 (the mean of 200 one-sample
  # bounds) < L_20 (the mean over 10 disjoint groups) < L_200; and L_20 above the
  # analytic ELBO.
  l_1 = np.mean(log_w)
  l_20 = np.mean(scipy.special.logsumexp(log_w.reshape(10, 20, -1), axis=1) - np.log(20))
  l_200 = np.mean(scipy.special.logsumexp(log_w, axis=0) - np.log(200))
  assert l_1 < l_20 < l_200, (l_1, l_20, l_200)
  assert np.mean(-(nll + kl)) < l_20
  assert l_200 - l_1 > 0.05  # The gap these checks see is not rounding.
  # The test metric is -L_k with k = vae.iwae_samples (4 in :local).
  np.testing.assert_allclose(
      c.test_metrics(c.state, {'image': x}, rng)['iwae_nll'],
      -(scipy.special.logsumexp(log_w[:4], axis=0) - np.log(4)), rtol=1e-5)


def test_vae_capabilities_return_images_in_the_unit_range():
  c = vae_case()
  method, state, x = c.method, c.state, c.x[:6]
  generate = jit(method.generate)
  samples = generate(state, jax.random.key(0), jnp.zeros(5, jnp.int32))
  chex.assert_shape(samples, (5, *SHAPE))
  at_zero = generate(state, jax.random.key(0), jnp.zeros(5, jnp.int32), temperature=0.0)
  z = jnp.zeros((5, method.latent_dim))
  np.testing.assert_allclose(at_zero, jax.nn.sigmoid(c.decode(state.params, z)), rtol=1e-6)
  out = jit(method.reconstruct)(state, {'image': x}, None)
  mean, _ = c.encode(state.params, x)
  np.testing.assert_allclose(out['reconstruction'],
                             jax.nn.sigmoid(c.decode(state.params, mean)), rtol=1e-6)
  path = jit(method.interpolate, static_argnums=3)(state, {'image': x}, None, 4)
  chex.assert_shape(path, (3, 4, *SHAPE))
  # The ends are the decoded posterior means of images 0 and 1 (pair 0).
  np.testing.assert_allclose(path[0, 0], out['reconstruction'][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(path[0, -1], out['reconstruction'][1], rtol=1e-5, atol=1e-6)
  for images in (samples, out['reconstruction'], path):
    assert images.dtype == jnp.float32 and 0 <= images.min() and images.max() <= 1


def test_colour_vae_with_the_discretised_logistic_on_32x32x3():
  method = make_method(VAE_MNIST + ':local', **{'vae.likelihood': 'logistic',
                                                'data.input_shape': '(32, 32, 3)'})
  x = jnp.round(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)) * 255) / 255
  params = jit(method.init_variables)(jax.random.key(0), {'image': x})['params']
  assert params['decoder']['output']['kernel'].shape[-1] == 6  # mean and log-scale
  state = base.TrainState(step=0, params=params, opt_state=None, model_state={})
  terms = jit(method.test_metrics)(state, {'image': x}, jax.random.key(2))
  chex.assert_shape(list(terms.values()), (2,))
  assert 'nonbinary_pixels' not in terms
  # Positive, and within a few nats of log(256) per value for a spread-out logistic.
  assert 0 < float(terms['reconstruction_nll'].min())
  assert float(terms['negative_elbo'].max()) < 32 * 32 * 3 * math.log(256) * 2
  samples = jit(method.generate)(state, jax.random.key(3), jnp.zeros(2, jnp.int32))
  chex.assert_shape(samples, (2, 32, 32, 3))
  assert 0 <= float(samples.min()) and float(samples.max()) <= 1


# ----------------------------------------------------------------------------- the trainer


def one_step(method, images, num_devices, initial_state=None):
  """`(initial state, params after one train step, its metrics)` on `num_devices`."""
  mesh = parallel.make_mesh(num_devices)
  abstract = {'image': jax.ShapeDtypeStruct(images.shape, jnp.float32)}
  _, state_sharding, init, train_step = train.make_train_step(method, abstract, mesh, seed=0)
  # One init compile for both meshes: the 8-device run starts from the 1-device state.
  state = init() if initial_state is None else jax.device_put(initial_state, state_sharding)
  initial = jax.device_get(state)
  state, metrics = train_step(state, parallel.to_global({'image': images}, mesh))
  return initial, jax.device_get((state.params, metrics))


@pytest.mark.parametrize('spec', [AE_MNIST + ':noise=salt_pepper,local', VAE_MNIST + ':local'],
                         ids=['dae', 'vae'])
def test_eight_devices_equal_one_device(spec):
  # Plain SGD at a constant rate, so that the new params show the gradient itself.
  method = make_method(spec, **{'optimizer.name': 'sgd', 'optimizer.momentum': 0.0,
                                'schedule.name': 'constant', 'schedule.warmup_steps': 'None',
                                'lr': 0.1})
  images = binary_images(16, seed=4)
  initial, (params_one, metrics_one) = one_step(method, images, 1)
  _, (params_eight, metrics_eight) = one_step(method, images, 8, initial)
  chex.assert_trees_all_close(params_eight, params_one, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(metrics_eight, metrics_one, rtol=1e-5)
  assert metrics_one['grad_norm'] > 1.0  # The step moved the params.


@pytest.mark.parametrize('spec', [AE_MNIST + ':noise=mask,local', VAE_MNIST + ':local'],
                         ids=['dae', 'vae'])
def test_local_experiment_trains_and_evaluates(tmp_path, data_dir, spec):
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, {'data.data_dir': data_dir})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/num_examples'] == 360  # digits' test split
  if config.method == 'vae':
    names = ('negative_elbo', 'reconstruction_nll', 'kl', 'iwae_nll')
    figures = ('samples.png', 'reconstructions.png', 'interpolations.png')
    assert results['eval/nonbinary_pixels'] == 0.0  # binarize(0.5) in the pp.
    np.testing.assert_allclose(results['eval/negative_elbo'], results['eval/kl']
                               + results['eval/reconstruction_nll'], rtol=1e-5)
  else:
    names = ('reconstruction_loss', 'reconstruction_loss_clean_input')
    figures = ('reconstructions.png', 'interpolations.png')
  for name in names:
    assert np.isfinite(results[f'eval/{name}']) and results[f'eval/{name}'] > 0, name
  for figure in figures:
    assert (tmp_path / 'eval' / figure).stat().st_size > 1000, figure
  assert not (tmp_path / 'eval' / 'samples.png').exists() or config.method == 'vae'


def test_experiment_arguments():
  config = config_lib.load_config(AE_MNIST + ':noise=gaussian')
  assert (config.autoencoder.noise, config.data.name, config.data.fallback) == (
      'gaussian', 'mnist', 'digits')
  assert config_lib.load_config(VAE_MNIST).vae.iwae_samples == 1000
  for spec, error in ((AE_MNIST + ':noise=blur', 'noise must be one of'),
                      (AE_MNIST + ':lcoal', 'unknown arguments'),
                      (VAE_MNIST + ':noise=mask', 'unknown arguments')):
    with pytest.raises(config_lib.ConfigError, match=error):
      config_lib.load_config(spec)

