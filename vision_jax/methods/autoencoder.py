r"""Autoencoder and denoising autoencoder (Vincent et al. 2008, 2010).

An encoder f maps an image x in [0, 1] to a code h = f(x) of `model.latent_dim`
numbers (the bottleneck); a decoder g maps it back to per-pixel logits l = g(h), and
the reconstruction is x_hat = sigmoid(l), in [0, 1]. The model is
`vision_jax.models.autoencoder` and sees the images mapped to [-1, 1].

Reconstruction loss (`autoencoder.loss`), summed over the D = H W C pixel values of
an image and averaged over the batch:

  'bernoulli'  L(x, l) = -sum_d [x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d)]
               (the cross-entropy of Vincent et al. 2010, eq. 2, from logits with
               log_sigmoid; for grey values x_d in (0, 1) it is a loss, not a
               likelihood, and its minimum over l is the entropy of x_d, not 0)
  'mse'        L(x, l) = sum_d (sigmoid(l_d) - x_d)^2

Denoising (`autoencoder.noise`): each step draws a corruption x~ ~ q(x~ | x) from the
step's key and minimises L(x, g(f(x~))): the reconstruction of the CORRUPTED input
is compared with the CLEAN input (Vincent et al. 2010, section 3.2). The corruptions
are those of section 4.2, on each of the D values of an image (pixels times channels):

  'gaussian'     x~ = clip(x + N(0, noise_std^2), 0, 1)  (isotropic Gaussian noise,
                 clipped back to the image range)
  'mask'         a fraction `mask_fraction` of the values, chosen at random for each
                 image, is set to 0 (masking noise)
  'salt_pepper'  a fraction `salt_pepper_fraction`, chosen at random for each image,
                 is set to 0 or 1 with probability 1/2 each
  'none'         x~ = x: the plain autoencoder

As in the paper, the masked and salt-and-pepper fractions are exact per image:
round(fraction * D) values, chosen uniformly without replacement.

Test metrics (per image, averaged by the `generative` evaluator): `reconstruction_loss`,
the training objective L(x, g(f(x~))) with a fixed corruption; for a denoiser also
`reconstruction_loss_clean_input`, L(x, g(f(x))). Capabilities: `reconstruct` (with
'clean' and the corrupted 'input' for a denoiser), `interpolate` (linear in code space
between the codes of the clean images of pairs (0, 1), (2, 3), ...) and `test_metrics`.
An autoencoder has no prior over codes, so it has no `generate`.
"""

import jax
import jax.numpy as jnp

from vision_jax import config_lib, models
from vision_jax.methods import generative

LOSSES = ('bernoulli', 'mse')
NOISES = ('none', 'gaussian', 'mask', 'salt_pepper')


def bernoulli_cross_entropy(logits: jax.Array, x: jax.Array) -> jax.Array:
  """-sum_d [x log sigmoid(l) + (1 - x) log sigmoid(-l)] per image: [N, ...] -> [N]."""
  per_value = x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
  return -per_value.reshape(per_value.shape[0], -1).sum(-1)


def squared_error(logits: jax.Array, x: jax.Array) -> jax.Array:
  """sum_d (sigmoid(l) - x)^2 per image: [N, ...] -> [N]."""
  error = (jax.nn.sigmoid(logits) - x) ** 2
  return error.reshape(error.shape[0], -1).sum(-1)


def reconstruction_loss(name: str, logits: jax.Array, x: jax.Array) -> jax.Array:
  """The per-image reconstruction loss `name` ('bernoulli' or 'mse'), [N]."""
  if name == 'bernoulli':
    return bernoulli_cross_entropy(logits, x)
  if name == 'mse':
    return squared_error(logits, x)
  raise ValueError(f'unknown reconstruction loss {name!r}; known: {", ".join(LOSSES)}')


def _exact_fraction(rng: jax.Array, shape, fraction: float) -> jax.Array:
  """A boolean [N, ...] mask with round(fraction * D) True values in each row, placed
  uniformly at random: the ranks of uniform draws below that count."""
  n, size = shape[0], 1
  for s in shape[1:]:
    size *= s
  count = int(round(fraction * size))
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (n, size)), axis=-1), axis=-1)
  return (ranks < count).reshape(shape)


def corrupt(rng: jax.Array, x: jax.Array, noise: str, *, noise_std: float = 0.0,
            mask_fraction: float = 0.0, salt_pepper_fraction: float = 0.0) -> jax.Array:
  """A draw of the corruption `noise` of the images `x` [N, ...] in [0, 1] (see the
  module docstring); the result is in [0, 1]."""
  if noise == 'none':
    return x
  if noise == 'gaussian':
    return jnp.clip(x + noise_std * jax.random.normal(rng, x.shape, x.dtype), 0, 1)
  if noise == 'mask':
    return jnp.where(_exact_fraction(rng, x.shape, mask_fraction), 0, x).astype(x.dtype)
  if noise == 'salt_pepper':
    where_key, value_key = jax.random.split(rng)
    salt = jax.random.bernoulli(value_key, 0.5, x.shape).astype(x.dtype)
    return jnp.where(_exact_fraction(where_key, x.shape, salt_pepper_fraction), salt, x)
  raise ValueError(f'unknown noise {noise!r}; known: {", ".join(NOISES)}')


class Method(generative.Method):
  """A (denoising) convolutional autoencoder; see the module docstring.

  Config: `model` (name 'autoencoder' and its fields), `autoencoder.loss`,
  `autoencoder.noise` and its strength (`noise_std`, `mask_fraction`,
  `salt_pepper_fraction`), and the shared optimizer fields.

  Attributes:
    model: the `vision_jax.models.autoencoder.Model`.
    denoising: whether inputs are corrupted (`noise` other than 'none').
  """
  name = 'autoencoder'
  # Moderate strengths, of the kind Vincent et al. (2010) search over for MNIST
  # (fractions of some tens of percent; a Gaussian std of a fraction of the range).
  OPTIONS = {'loss': 'bernoulli', 'noise': 'none', 'noise_std': 0.3,
             'mask_fraction': 0.25, 'salt_pepper_fraction': 0.2}
  CAPABILITIES = ('reconstruct', 'interpolate', 'test_metrics')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    o = self.options
    if o.loss not in LOSSES:
      raise config_lib.ConfigError(
          f'autoencoder.loss must be one of {", ".join(LOSSES)}, got {o.loss!r}')
    if o.noise not in NOISES:
      raise config_lib.ConfigError(
          f'autoencoder.noise must be one of {", ".join(NOISES)}, got {o.noise!r}')
    for field in ('mask_fraction', 'salt_pepper_fraction'):
      if not 0 <= o[field] <= 1:
        raise config_lib.ConfigError(f'autoencoder.{field} must be in [0, 1], got {o[field]}')
    if o.noise_std < 0:
      raise config_lib.ConfigError(f'autoencoder.noise_std must be >= 0, got {o.noise_std}')
    self.denoising = o.noise != 'none'
    self.model = models.get_model(config.model, image_shape=self.image_shape,
                                  variational=False, dtype=self.compute_dtype)

  # The model on [0, 1] images.

  def _apply(self, params, images, method=None):
    return self.model.apply({'params': params}, 2 * images - 1, method=method)

  def encode(self, params, images):
    return self._apply(params, images, 'encode')

  def decode(self, params, code):
    return self.model.apply({'params': params}, code, method='decode')

  def corrupt(self, rng, images):
    o = self.options
    return corrupt(rng, images, o.noise, noise_std=o.noise_std, mask_fraction=o.mask_fraction,
                   salt_pepper_fraction=o.salt_pepper_fraction)

  def per_example_losses(self, params, images, rng):
    """`(loss [N], corrupted inputs)`: L(x, g(f(x~))) for a draw x~ from `rng`."""
    noisy = self.corrupt(rng, images)
    logits = self._apply(params, noisy)
    return reconstruction_loss(self.options.loss, logits, images), noisy

  # The trainer's interface.

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    return self.model.init(rng, 2 * batch['image'] - 1)

  def loss(self, params, model_state, batch, rng):
    per_example, _ = self.per_example_losses(params, batch['image'], rng)
    loss = per_example.mean()
    return loss, ({'reconstruction_loss': loss}, model_state)

  # Capabilities.

  def test_metrics(self, state, batch, rng):
    images = batch['image']
    per_example, _ = self.per_example_losses(state.params, images, rng)
    out = {'reconstruction_loss': per_example}
    if self.denoising:
      out['reconstruction_loss_clean_input'] = reconstruction_loss(
          self.options.loss, self._apply(state.params, images), images)
    return out

  def reconstruct(self, state, batch, rng):
    images = batch['image']
    noisy = self.corrupt(rng, images)
    out = {'input': noisy,
           'reconstruction': jax.nn.sigmoid(self._apply(state.params, noisy))}
    if self.denoising:
      out['clean'] = images
    return out

  def interpolate(self, state, batch, rng, num_points):
    del rng
    return interpolate_codes(lambda x: self.encode(state.params, x),
                             lambda z: jax.nn.sigmoid(self.decode(state.params, z)),
                             batch['image'], num_points)


def interpolate_codes(encode, decode, images, num_points: int) -> jax.Array:
  """Decoded points on the segments between the codes of images (0, 1), (2, 3), ...:
  [P, num_points, ...] with P = N // 2, from the first image's code to the second's."""
  pairs = images.shape[0] // 2
  codes = encode(images[:2 * pairs])
  start, end = codes[0::2], codes[1::2]
  t = jnp.linspace(0.0, 1.0, num_points, dtype=codes.dtype)[None, :, None]
  path = (1 - t) * start[:, None] + t * end[:, None]  # [P, num_points, latent]
  decoded = decode(path.reshape(pairs * num_points, -1))
  return decoded.reshape(pairs, num_points, *decoded.shape[1:]).astype(jnp.float32)
