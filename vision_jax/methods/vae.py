r"""Variational autoencoder (Kingma & Welling 2014) with the importance-weighted bound
(Burda et al. 2016) as the test log-likelihood estimate.

Model (`vision_jax.models.autoencoder` with `variational=True`; images in [0, 1] are
mapped to [-1, 1] for the encoder):

  prior          p(z) = N(z; 0, I), z of `model.latent_dim` numbers
  encoder        q(z | x) = N(z; mu(x), diag(sigma^2(x))), the network giving mu and
                 log sigma^2 (K&W appendix C.2)
  decoder        p(x | z), by `vae.likelihood`, independent over the D = H W C values:
    'bernoulli'  log p(x | z) = sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d),
                 l = decoder logits (K&W appendix C.1), computed with log_sigmoid.
                 A likelihood of BINARY data: x must be 0 or 1 (binarise, e.g. with the
                 `binarize(0.5)` preprocessing op); on grey values it is not a
                 normalised distribution and its numbers are not nats of anything.
                 The method warns when `data.pp_train` has no `binarize`, and logs the
                 fraction of values that are neither 0 nor 1 as `nonbinary_pixels`.
    'gaussian'   log N(x_d; m_d, s^2) with the decoder's means m and a FIXED standard
                 deviation s = `vae.gaussian_std` (not learned): a density on the
                 continuous values, so its nats are not comparable to discrete ones.
    'logistic'   the discretised logistic of PixelCNN++ (Salimans et al. 2017) for
                 8-bit colour images: x_d = k / 255 has the mass of a logistic with the
                 decoder's mean m_d and log-scale log s_d (2 C output channels) on the
                 bin [x_d - 1/510, x_d + 1/510], the end bins reaching to -inf and +inf;
                 a proper probability, so nats per image (and bits per dimension).

Reparameterisation (K&W section 2.4): z = mu + sigma * eps, eps ~ N(0, I).

Objective: the negative ELBO per image,

  -ELBO(x) = E_q[-log p(x | z)] + KL(q(z | x) || p(z)),
  KL = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)     (K&W appendix B),

with the reconstruction term from one draw of eps per image, both terms SUMMED over
their dimensions (pixels, latents) for each image and then averaged over the batch.
Training minimises E[-log p(x | z)] + beta KL (`vae.beta`; 1 is the ELBO, beta > 1 the
beta-VAE of Higgins et al. 2017); the metrics report the beta = 1 bound in nats per
image: `negative_elbo`, `reconstruction_nll`, `kl`.

Importance-weighted bound (Burda et al. 2016, eq. 8), with k = `vae.iwae_samples`:

  log p(x) >= L_k = log (1/k) sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x),
  log w_i = log p(x | z_i) + log N(z_i; 0, I) - log N(z_i; mu, sigma^2),

computed with logsumexp; L_1 is the one-sample ELBO, L_k is non-decreasing in k on
average and tends to log p(x). `iwae_nll` = -L_k. The k decodes run in chunks of
`vae.iwae_chunk` samples (`lax.map`), so k = 1000 needs chunk times a batch's memory,
not k times. Sample i uses the key fold_in(rng, i); sample 0 is the draw of the ELBO.

Test metrics (per image): `negative_elbo`, `reconstruction_nll`, `kl`, `iwae_nll` (and
`nonbinary_pixels` with the Bernoulli likelihood). Capabilities: `generate` (decodes
z ~ N(0, temperature^2 I) and shows the decoder's mean, e.g. sigmoid(logits), as the
image), `reconstruct` (decoded posterior means), `interpolate` (linear between the
posterior means of image pairs (0, 1), (2, 3), ...) and `test_metrics`.
"""

import logging
import math

import jax
import jax.numpy as jnp

from vision_jax import config_lib, models
from vision_jax.methods import autoencoder, generative

LIKELIHOODS = ('bernoulli', 'gaussian', 'logistic')
LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on the logistic's log-scale.


def _sum_per_example(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).sum(-1)


def gaussian_kl(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(log_variance))) || N(0, I)), summed over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(log_variance) + mean ** 2 - 1 - log_variance, axis=-1)


def log_normal(z: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(log_variance))), summed over the last axis."""
  return -0.5 * jnp.sum(LOG_2PI + log_variance + (z - mean) ** 2 * jnp.exp(-log_variance),
                        axis=-1)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
  """sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d) per image, [N]."""
  return -autoencoder.bernoulli_cross_entropy(logits, x)


def gaussian_log_likelihood(mean: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """sum_d log N(x_d; mean_d, std^2) per image, [N]."""
  return _sum_per_example(-0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * LOG_2PI)


def discretized_logistic_log_likelihood(mean: jax.Array, log_scale: jax.Array,
                                        x: jax.Array, bins: int = 256) -> jax.Array:
  """log P(x) per image, [N], for x_d = k / (bins - 1) in [0, 1] (see module doc).

  As in PixelCNN++: the log of the difference of sigmoids inside, log sigmoid at the
  ends, and where the bin's mass is below 1e-5 (a very sharp logistic) the log
  density at the bin centre times the bin width, which is its limit there.
  """
  half = 0.5 / (bins - 1)
  log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
  inv_scale = jnp.exp(-log_scale)
  centred = x - mean
  plus, minus = inv_scale * (centred + half), inv_scale * (centred - half)
  log_cdf_plus = jax.nn.log_sigmoid(plus)  # log P(X <= x + half)
  log_survival_minus = jax.nn.log_sigmoid(-minus)  # log P(X > x - half)
  mass = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
  mid = inv_scale * centred
  log_density_mid = mid - log_scale - 2 * jax.nn.softplus(mid)
  log_mass = jnp.where(mass > 1e-5, jnp.log(jnp.maximum(mass, 1e-12)),
                       log_density_mid + math.log(2 * half))
  log_p = jnp.where(x < half, log_cdf_plus,
                    jnp.where(x > 1 - half, log_survival_minus, log_mass))
  return _sum_per_example(log_p)


class Method(generative.Method):
  """A convolutional VAE; see the module docstring.

  Config: `model` (name 'autoencoder' and its fields; `variational` and
  `output_channels` are set by the method), `vae.likelihood`, `vae.beta`,
  `vae.gaussian_std`, `vae.iwae_samples`, `vae.iwae_chunk`, and the optimizer fields.

  Attributes:
    model: the `vision_jax.models.autoencoder.Model`, variational.
    latent_dim: the size of z.
  """
  name = 'vae'
  OPTIONS = {'likelihood': 'bernoulli', 'beta': 1.0, 'gaussian_std': 0.1,
             'iwae_samples': 100, 'iwae_chunk': 10}
  CAPABILITIES = ('generate', 'reconstruct', 'interpolate', 'test_metrics')
  SAMPLE_OPTIONS = {'temperature': 1.0}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    o = self.options
    if o.likelihood not in LIKELIHOODS:
      raise config_lib.ConfigError(
          f'vae.likelihood must be one of {", ".join(LIKELIHOODS)}, got {o.likelihood!r}')
    if o.beta < 0:
      raise config_lib.ConfigError(f'vae.beta must be >= 0, got {o.beta}')
    if o.gaussian_std <= 0:
      raise config_lib.ConfigError(f'vae.gaussian_std must be > 0, got {o.gaussian_std}')
    if o.iwae_samples < 1 or o.iwae_chunk < 1:
      raise config_lib.ConfigError(
          f'vae.iwae_samples and vae.iwae_chunk must be >= 1, got {o.iwae_samples} and '
          f'{o.iwae_chunk}')
    if o.likelihood == 'bernoulli' and 'binarize' not in config.data.pp_train:
      logging.warning('vision_jax: vae.likelihood=bernoulli is a likelihood of binary '
                      'images, but data.pp_train (%r) has no binarize op; its nats are '
                      'not a likelihood of grey images', config.data.pp_train)
    channels = self.image_shape[-1]
    self.model = models.get_model(
        config.model, image_shape=self.image_shape, variational=True,
        output_channels=2 * channels if o.likelihood == 'logistic' else channels,
        dtype=self.compute_dtype)
    self.latent_dim = self.model.latent_dim

  # The model's pieces on [0, 1] images.

  def encode(self, params, images):
    """`(mean, log_variance)` of q(z | x), each [N, latent_dim]."""
    return self.model.apply({'params': params}, 2 * images - 1, method='encode')

  def decode(self, params, z):
    return self.model.apply({'params': params}, z, method='decode')

  def log_likelihood(self, outputs, images):
    """log p(x | z) per image [N] from the decoder's outputs."""
    o = self.options
    if o.likelihood == 'bernoulli':
      return bernoulli_log_likelihood(outputs, images)
    if o.likelihood == 'gaussian':
      return gaussian_log_likelihood(outputs, images, o.gaussian_std)
    mean, log_scale = jnp.split(outputs, 2, axis=-1)
    return discretized_logistic_log_likelihood(mean, log_scale, images)

  def mean_image(self, outputs):
    """The decoder distribution's mean as an image in [0, 1] (the logistic's and the
    Gaussian's means clipped to the range)."""
    if self.options.likelihood == 'bernoulli':
      return jax.nn.sigmoid(outputs)
    channels = self.image_shape[-1]
    return jnp.clip(outputs[..., :channels], 0, 1)

  @staticmethod
  def noise(rng, index, shape):
    """eps of sample `index` (0 is the ELBO's): normal(fold_in(rng, index))."""
    return jax.random.normal(jax.random.fold_in(rng, index), shape)

  def elbo_terms(self, params, images, rng):
    """Per image [N]: `reconstruction_nll` (-log p(x | z), one draw), `kl` (analytic)
    and `negative_elbo` (their sum), with `mean` and `log_variance` of q."""
    mean, log_variance = self.encode(params, images)
    z = mean + jnp.exp(0.5 * log_variance) * self.noise(rng, 0, mean.shape)
    nll = -self.log_likelihood(self.decode(params, z), images)
    kl = gaussian_kl(mean, log_variance)
    return {'reconstruction_nll': nll, 'kl': kl, 'negative_elbo': nll + kl,
            'mean': mean, 'log_variance': log_variance}

  def log_weights(self, params, images, rng, samples: int, mean=None, log_variance=None):
    """[samples, N] log p(x, z_i) - log q(z_i | x), decoded `iwae_chunk` at a time."""
    if mean is None:
      mean, log_variance = self.encode(params, images)
    std = jnp.exp(0.5 * log_variance)

    def one(index):
      eps = self.noise(rng, index, mean.shape)
      z = mean + std * eps
      log_q = log_normal(z, mean, log_variance)
      log_prior = log_normal(z, jnp.zeros_like(z), jnp.zeros_like(z))
      return self.log_likelihood(self.decode(params, z), images) + log_prior - log_q

    return jax.lax.map(one, jnp.arange(samples),
                       batch_size=min(int(self.options.iwae_chunk), samples))

  def iwae_bound(self, params, images, rng, samples: int | None = None, **posterior):
    """L_k per image [N] (nats), k = `samples` (default `vae.iwae_samples`)."""
    k = int(samples or self.options.iwae_samples)
    log_w = self.log_weights(params, images, rng, k, **posterior)
    return jax.nn.logsumexp(log_w, axis=0) - math.log(k)

  def _nonbinary(self, images):
    return _sum_per_example((images != 0) & (images != 1)) / math.prod(self.image_shape)

  # The trainer's interface.

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    return self.model.init(rng, 2 * batch['image'] - 1)

  def loss(self, params, model_state, batch, rng):
    terms = self.elbo_terms(params, batch['image'], rng)
    loss = jnp.mean(terms['reconstruction_nll'] + self.options.beta * terms['kl'])
    metrics = {k: terms[k].mean() for k in ('reconstruction_nll', 'kl', 'negative_elbo')}
    if self.options.likelihood == 'bernoulli':
      metrics['nonbinary_pixels'] = self._nonbinary(batch['image']).mean()
    return loss, (metrics, model_state)

  # Capabilities.

  def test_metrics(self, state, batch, rng):
    images = batch['image']
    terms = self.elbo_terms(state.params, images, rng)
    out = {k: terms[k] for k in ('negative_elbo', 'reconstruction_nll', 'kl')}
    out['iwae_nll'] = -self.iwae_bound(state.params, images, rng, mean=terms['mean'],
                                       log_variance=terms['log_variance'])
    if self.options.likelihood == 'bernoulli':
      out['nonbinary_pixels'] = self._nonbinary(images)
    return out

  def generate(self, state, rng, labels, temperature=1.0):
    z = temperature * jax.random.normal(rng, (labels.shape[0], self.latent_dim))
    return self.mean_image(self.decode(state.params, z)).astype(jnp.float32)

  def reconstruct(self, state, batch, rng):
    del rng  # The posterior mean: a deterministic reconstruction.
    images = batch['image']
    mean, _ = self.encode(state.params, images)
    return {'input': images,
            'reconstruction': self.mean_image(self.decode(state.params, mean))}

  def interpolate(self, state, batch, rng, num_points):
    del rng
    return autoencoder.interpolate_codes(
        lambda x: self.encode(state.params, x)[0],
        lambda z: self.mean_image(self.decode(state.params, z)), batch['image'], num_points)
