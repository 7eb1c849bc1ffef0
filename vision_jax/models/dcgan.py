"""DCGAN's generator and discriminator (Radford, Metz & Chintala, ICLR 2016).

The architecture guidelines of the paper (section 3), as they appear here:

  * "Replace any pooling layers with strided convolutions (discriminator) and
    fractional-strided convolutions (generator)": D halves the resolution with
    stride-2 convolutions, G doubles it with stride-2 transposed convolutions
    (4x4 kernels and 'SAME' padding, i.e. PyTorch's kernel 4, stride 2, padding 1;
    `vision_jax.layers.ConvTranspose`, Flax's layer computed by phases on a CPU).
  * "Use batchnorm in both the generator and the discriminator", but not "to the
    generator output layer and the discriminator input layer": G normalises every
    layer but its last, D every layer but its first.
  * "Remove fully connected hidden layers": G's first layer projects z and reshapes
    it into the smallest feature map ("project and reshape", figure 1), D's last
    feature map is flattened into one logit.
  * "Use ReLU activation in generator for all layers except for the output, which
    uses Tanh", and "LeakyReLU activation in the discriminator for all layers"
    (slope 0.2, section 4).
  * "All weights were initialized from a zero-centered Normal distribution with
    standard deviation 0.02" (section 4).

G maps z [N, latent_dim] to images in [-1, 1] (tanh); D returns float32 logits [N]
(the probability that an image is real is their sigmoid, which the losses take with
`log_sigmoid`). The starting resolution of G is the image size divided by 2**stages,
with one stage per entry of `generator_features`: (128, 64) gives 7 -> 14 -> 28 for
28x28 images, (256, 128, 64) gives 4 -> 8 -> 16 -> 32 for 32x32 ones; a size that
2**stages does not divide is an error that says so.

Class conditioning (`num_classes` set): G concatenates a learned label embedding to z
(as in Mirza & Osindero's conditional GAN); D is a projection discriminator (Miyato &
Koyama, ICLR 2018, eq. 3): logit = psi(phi(x)) + embed(y) . phi(x), with phi(x) the
flattened last feature map, psi the unconditional linear head and embed(y) a learned
vector per class.

A gradient penalty (R1, WGAN-GP) is a per-example quantity, which batch statistics
couple across the batch; Gulrajani et al. (2017, section 4) replace D's BatchNorm by
layer normalisation, `discriminator_norm='layer'` here.

`Model` holds both players as the submodules 'generator' and 'discriminator', so their
params and batch statistics are separate subtrees, and applies one of them with
`model.apply(vars, z, labels, method='generate')` or `method='discriminate'` (only that
player's variables are needed). `TINY` is the variant for tests.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import layers

# Section 4 of the paper: weights from N(0, 0.02).
weight_init = nn.initializers.normal(0.02)
NORMS = ('batch', 'layer', 'none')

# The `config.model` fields of a tiny variant (milliseconds per step), for tests.
TINY = dict(name='dcgan', latent_dim=8, generator_features=(8, 4),
            discriminator_features=(4, 8), label_features=4)


def start_resolution(image_size: Sequence[int], stages: int) -> tuple[int, int]:
  """G's first feature map (height, width): the image size over 2**stages."""
  factor = 2 ** stages
  if any(s % factor for s in image_size) or any(s < factor for s in image_size):
    raise ValueError(
        f'the generator doubles the resolution {stages} times (one stage per entry of '
        f'generator_features), so the image height and width must be multiples of '
        f'2**{stages} = {factor}; got {tuple(image_size)}. Change the number of '
        'generator_features or resize the images')
  return tuple(s // factor for s in image_size)


def batch_norm(train: bool, dtype: Any, name: str) -> nn.Module:
  # PyTorch's defaults (its momentum 0.1 weighs the new batch, Flax's the average).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class Generator(nn.Module):
  """G(z, y): project and reshape, stride-2 transposed convolutions, tanh.

  Attributes:
    image_shape: (height, width, channels) of the generated images.
    features: channels of G's feature maps, from the projected one (at the image size
      over 2**len(features)) to the last before the output layer; each is followed by
      a stride-2 transposed convolution to the next (the last one to `channels`).
    kernel_size: side of the transposed convolutions' kernels.
    num_classes: the class count of a conditional G, None for an unconditional one.
    label_features: size of the label embedding concatenated to z.
    dtype: compute dtype; parameters stay float32.
  """
  image_shape: Sequence[int]
  features: Sequence[int] = (128, 64)
  kernel_size: int = 4
  num_classes: int | None = None
  label_features: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    height, width, channels = self.image_shape
    h, w = start_resolution((height, width), len(self.features))
    if self.num_classes is not None:
      if labels is None:
        raise ValueError('a conditional generator needs labels')
      embedding = nn.Embed(self.num_classes, self.label_features, dtype=self.dtype,
                           name='label_embedding')(labels)
      z = jnp.concatenate([z.astype(embedding.dtype), embedding], axis=-1)
    # BatchNorm's offset makes the biases before it redundant.
    x = nn.Dense(h * w * self.features[0], use_bias=False, kernel_init=weight_init,
                 dtype=self.dtype, name='project')(z)
    x = x.reshape(x.shape[0], h, w, self.features[0])
    x = nn.relu(batch_norm(train, self.dtype, 'project_bn')(x))
    kernel = (self.kernel_size, self.kernel_size)
    for i, features in enumerate(self.features[1:]):
      x = layers.ConvTranspose(features, kernel, strides=(2, 2), padding='SAME',
                                   use_bias=False, kernel_init=weight_init, dtype=self.dtype,
                               name=f'up{i + 1}')(x)
      x = nn.relu(batch_norm(train, self.dtype, f'up{i + 1}_bn')(x))
    x = layers.ConvTranspose(channels, kernel, strides=(2, 2), padding='SAME',
                             kernel_init=weight_init, dtype=self.dtype,
                             name=f'up{len(self.features)}')(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  """D(x, y): stride-2 convolutions with LeakyReLU, one logit per image.

  Attributes:
    features: channels of each stride-2 convolution.
    kernel_size: side of the convolutions' kernels.
    norm: 'batch' (DCGAN), 'layer' (for gradient penalties) or 'none', after every
      convolution but the first.
    negative_slope: of the LeakyReLUs.
    num_classes: the class count of a projection discriminator, None for an
      unconditional one.
    dtype: compute dtype; parameters stay float32 and the logits are float32.
  """
  features: Sequence[int] = (64, 128)
  kernel_size: int = 4
  norm: str = 'batch'
  negative_slope: float = 0.2
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f'discriminator norm must be one of {NORMS}, got {self.norm!r}')
    kernel = (self.kernel_size, self.kernel_size)
    for i, features in enumerate(self.features):
      normalised = i > 0 and self.norm != 'none'  # Not on D's input layer.
      x = nn.Conv(features, kernel, strides=(2, 2), padding='SAME',
                  use_bias=not normalised, kernel_init=weight_init, dtype=self.dtype,
                  name=f'down{i + 1}')(x)
      if normalised and self.norm == 'batch':
        x = batch_norm(train, self.dtype, f'down{i + 1}_bn')(x)
      elif normalised:
        # Per image over all its maps, so that examples stay independent.
        x = nn.LayerNorm(reduction_axes=(-3, -2, -1), epsilon=1e-5, dtype=self.dtype,
                         name=f'down{i + 1}_ln')(x)
      x = nn.leaky_relu(x, self.negative_slope)
    phi = x.reshape(x.shape[0], -1)
    logits = nn.Dense(1, kernel_init=weight_init, dtype=self.dtype, name='head')(phi)[:, 0]
    if self.num_classes is not None:
      if labels is None:
        raise ValueError('a projection discriminator needs labels')
      embedding = nn.Embed(self.num_classes, phi.shape[-1], embedding_init=weight_init,
                           dtype=self.dtype, name='projection')(labels)
      logits = logits + jnp.sum(embedding * phi, axis=-1)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class Model(nn.Module):
  """Both players of a DCGAN: the submodules 'generator' and 'discriminator'.

  Attributes:
    image_shape: (height, width, channels) of the images, in [-1, 1].
    latent_dim: size of the noise z ~ N(0, I) that G maps to an image.
    generator_features: G's `features` (see `Generator`).
    discriminator_features: D's `features` (see `Discriminator`).
    kernel_size: side of every convolution kernel, in G and D.
    discriminator_norm: D's `norm`: 'batch', 'layer' or 'none'.
    num_classes: the class count of a class-conditional GAN, None for an
      unconditional one.
    label_features: size of G's label embedding.
    dtype: compute dtype; parameters stay float32.
  """
  image_shape: Sequence[int]
  latent_dim: int = 100
  generator_features: Sequence[int] = (128, 64)
  discriminator_features: Sequence[int] = (64, 128)
  kernel_size: int = 4
  discriminator_norm: str = 'batch'
  num_classes: int | None = None
  label_features: int = 32
  dtype: Any = jnp.float32

  def setup(self):
    self.generator = Generator(
        tuple(self.image_shape), self.generator_features, self.kernel_size,
        self.num_classes, self.label_features, self.dtype)
    self.discriminator = Discriminator(
        self.discriminator_features, self.kernel_size, self.discriminator_norm,
        num_classes=self.num_classes, dtype=self.dtype)

  def __call__(self, images: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """`(D's logits of images, G's images of zero noise)`: one call that creates
    both players' variables in `init`."""
    z = jnp.zeros((images.shape[0], self.latent_dim), self.dtype)
    return (self.discriminate(images, labels, train=train),
            self.generate(z, labels, train=train))

  def generate(self, z: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """G(z, y): images [N, *image_shape] in [-1, 1]."""
    return self.generator(z, labels, train=train)

  def discriminate(self, images: jax.Array, labels: jax.Array | None = None, *,
                   train: bool = False) -> jax.Array:
    """D's float32 logits [N] of images in [-1, 1]."""
    return self.discriminator(images, labels, train=train)
