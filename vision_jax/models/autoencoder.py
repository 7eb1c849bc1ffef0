"""Convolutional encoder/decoder pairs: the autoencoder family (AE, denoising AE, VAE).

Shaped like flax `examples/vae/models.py`: `setup()` builds an `Encoder` and a
`Decoder`, and the model has the named entry points

  encode(x)    [N, H, W, C] -> the code [N, latent_dim], or for a variational model
               the Gaussian posterior's `(mean, log_variance)`, each [N, latent_dim]
  decode(z)    [N, latent_dim] -> the decoder's outputs [N, H, W, output_channels]
               (float32): logits, means or distribution parameters; what they mean is
               the method's choice (its likelihood)
  __call__(x)  decode(code), with the posterior mean as the code of a variational
               model: the deterministic reconstruction, and what `init` traces

`model.apply(variables, x, method='encode')` calls one. The encoder is `len(features)`
stride-2 stages, each a 'SAME' convolution (then `convs_per_stage - 1` stride-1 ones)
with ReLU, followed by the dense layers `dense_features` and a linear layer to the
code. The decoder mirrors it: the dense layers in reverse order, a dense layer to the
smallest feature map (H / 2**stages, W / 2**stages, features[-1]), then one stride-2
transposed convolution per stage (widths `features` reversed, each followed by
`convs_per_stage - 1` stride-1 convolutions) and a linear 'SAME' convolution to
`output_channels`. A 28x28 image with two stages is encoded through 14x14 and 7x7;
H and W must divide by 2**stages, which is checked with a message naming them.

The model sees images as the method gives them (the methods pass [-1, 1]); it has no
batch statistics, so training and evaluation compute the same function and `train` is
accepted for the common interface only.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import layers

ModuleDef = Any


def _float32_or_wider(x: jax.Array) -> jax.Array:
  # Losses and likelihoods at full precision; a float64 model stays float64.
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class Encoder(nn.Module):
  """Strided convolutions, dense layers, and a linear layer to `outputs` numbers.

  Attributes:
    features: the channels of each stride-2 stage.
    outputs: the size of the output (the code, or mean and log-variance together).
    kernel_size: side of the square kernels.
    convs_per_stage: convolutions per stage: one stride-2, the others stride 1.
    dense_features: widths of the hidden dense layers after flattening.
    dtype: compute dtype; parameters stay float32.
    conv: the convolution layer (`nn.Conv` or a drop-in with its interface).
  """
  features: Sequence[int]
  outputs: int
  kernel_size: int = 3
  convs_per_stage: int = 1
  dense_features: Sequence[int] = ()
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    for stage, width in enumerate(self.features):
      for i in range(self.convs_per_stage):
        x = self.conv(width, k, strides=(2, 2) if i == 0 else (1, 1), padding='SAME',
                      dtype=self.dtype, name=f'down{stage + 1}_conv{i + 1}')(x)
        x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'dense{i + 1}')(x))
    return _float32_or_wider(nn.Dense(self.outputs, dtype=self.dtype, name='code')(x))


class Decoder(nn.Module):
  """Dense layers to the smallest feature map, then transposed convolutions up.

  Attributes:
    features: the channels of the encoder's stages, in the encoder's order (the
      decoder runs through them in reverse).
    bottom_shape: (height, width) of the smallest feature map.
    output_channels: channels of the output.
    kernel_size: side of the square kernels.
    convs_per_stage: per stage, one stride-2 transposed convolution and
      `convs_per_stage - 1` stride-1 convolutions.
    dense_features: the encoder's hidden dense widths (run in reverse).
    dtype: compute dtype; parameters stay float32 and the output is float32.
    conv: the convolution layer.
    conv_transpose: the transposed convolution layer (Flax's, by phases on a CPU).
  """
  features: Sequence[int]
  bottom_shape: tuple[int, int]
  output_channels: int
  kernel_size: int = 3
  convs_per_stage: int = 1
  dense_features: Sequence[int] = ()
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = layers.ConvTranspose

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    x = z
    for i, width in reversed(list(enumerate(self.dense_features))):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'dense{i + 1}')(x))
    height, width = self.bottom_shape
    x = nn.Dense(height * width * self.features[-1], dtype=self.dtype, name='bottom')(x)
    x = nn.relu(x).reshape(x.shape[0], height, width, self.features[-1])
    for stage, channels in reversed(list(enumerate(self.features))):
      # 'SAME' transposed convolutions with stride 2 double H and W exactly.
      x = self.conv_transpose(channels, k, strides=(2, 2), padding='SAME', dtype=self.dtype,
                              name=f'up{stage + 1}_conv1')(x)
      x = nn.relu(x)
      for i in range(1, self.convs_per_stage):
        x = self.conv(channels, k, padding='SAME', dtype=self.dtype,
                      name=f'up{stage + 1}_conv{i + 1}')(x)
        x = nn.relu(x)
    x = self.conv(self.output_channels, k, padding='SAME', dtype=self.dtype, name='output')(x)
    return _float32_or_wider(x)


class Model(nn.Module):
  """A convolutional autoencoder; with `variational`, a VAE's encoder and decoder.

  Attributes:
    image_shape: (H, W, C) of the images; H and W must divide by 2**len(features).
    latent_dim: the size of the code (of the posterior's mean for a VAE).
    features: channels of the encoder's stride-2 stages (the decoder's in reverse).
    kernel_size: side of the square kernels.
    convs_per_stage: convolutions per stage (one strided, the others stride 1).
    dense_features: hidden dense widths between the feature maps and the code.
    variational: the encoder gives a diagonal Gaussian, `(mean, log_variance)`.
    output_channels: channels of the decoder's output; None for the image's C (a
      likelihood with two parameters per pixel asks for 2 C).
    dtype: compute dtype, e.g. jnp.bfloat16; parameters stay float32 and the code
      and outputs are float32.
  """
  image_shape: Sequence[int] = (28, 28, 1)
  latent_dim: int = 32
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  convs_per_stage: int = 1
  dense_features: Sequence[int] = ()
  variational: bool = False
  output_channels: int | None = None
  dtype: Any = jnp.float32

  def setup(self):
    height, width, channels = (int(s) for s in self.image_shape)
    stages = len(self.features)
    if not stages:
      raise ValueError('autoencoder: features needs at least one stage')
    if height % 2 ** stages or width % 2 ** stages:
      raise ValueError(
          f'autoencoder: the image height and width ({height}x{width}) must divide by '
          f'2**{stages} = {2 ** stages} for {stages} stride-2 stages (features='
          f'{tuple(self.features)}); use fewer stages or resize the images')
    outputs = 2 * self.latent_dim if self.variational else self.latent_dim
    self.encoder = Encoder(
        self.features, outputs, kernel_size=self.kernel_size,
        convs_per_stage=self.convs_per_stage, dense_features=self.dense_features,
        dtype=self.dtype)
    self.decoder = Decoder(
        self.features, (height // 2 ** stages, width // 2 ** stages),
        channels if self.output_channels is None else self.output_channels,
        kernel_size=self.kernel_size, convs_per_stage=self.convs_per_stage,
        dense_features=self.dense_features, dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False):
    """The code [N, latent_dim], or `(mean, log_variance)` when variational."""
    del train  # No batch statistics or dropout.
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f'autoencoder: images of shape {tuple(x.shape[1:])}, but the '
                       f'model was built for {tuple(self.image_shape)}')
    out = self.encoder(x)
    if self.variational:
      mean, log_variance = jnp.split(out, 2, axis=-1)
      return mean, log_variance
    return out

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """[N, latent_dim] -> [N, H, W, output_channels] float32 decoder outputs."""
    del train
    return self.decoder(z)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    code = self.encode(x, train=train)
    return self.decode(code[0] if self.variational else code, train=train)
