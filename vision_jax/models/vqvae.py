"""VQ-VAE (van den Oord et al., 2017) with an EMA codebook: the discrete autoencoder that
turns an image into a grid of tokens for the DALL-E route to text-to-image.

A convolutional encoder maps an image [B, H, W, C] to latents z [B, h, w, D] with
h = H / 2**downsample_steps; each latent vector is replaced by its nearest code of a
codebook e [K, D], and a convolutional decoder maps the quantised grid back to an
image. The quantiser follows big_vision's `models/proj/uvim/vit.py`:

  k*      = argmin_k |z - e_k|^2,  z_q = e_{k*}
  output  = z + stop_gradient(z_q - z)        (straight-through: d output / d z = I)
  commitment_loss = beta * mean |z - stop_gradient(z_q)|^2

The codebook is not trained by gradients but by exponential moving averages of the
assignments (Appendix A.1 of the paper): with n_k the batch's vectors assigned to code
k and s_k their sum,

  N_k <- gamma N_k + (1 - gamma) n_k,   m_k <- gamma m_k + (1 - gamma) s_k,
  e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (n + K eps) * n,   n = sum_k N_k

(Laplace smoothing keeps a rarely used code away from a division by zero). A code whose
EMA count N_k falls below `dead_code_threshold` is dead: it is re-initialised from an
encoder output of the batch drawn at random, with a count of one. The statistics live in
the non-trained collection 'vq_stats' (codebook, cluster_size, codebook_sum); they
change only when `train=True` and the collection is mutable, e.g.

  out, state = model.apply(variables, x, train=True, mutable=['vq_stats'],
                           rngs={'dropout': key})

(the revival draws from the 'dropout' stream, the one a trainer passes to every
training apply). Under a sharded jit the counts and sums run over the global batch.

Entry points (`model.apply(variables, x, method='encode')`):
  encode(x)            [B, H, W, C] -> the token grid [B, h, w] int32
  decode_indices(idx)  [B, h, w] -> the reconstruction [B, H, W, C] float32
  __call__(x)          dict(reconstruction, indices, commitment_loss, perplexity,
                       codebook_usage)
  encode_latents(x) and decode_latents(z) are the two halves around the quantiser.

Images come in [-1, 1]; the reconstruction is the decoder's linear output on that scale
(no squashing), and the reconstruction loss (e.g. the mean squared error) is the
method's. `perplexity` is exp(entropy) of the batch's code frequencies (K when every
code is used equally, 1 when one code takes everything) and `codebook_usage` the
fraction of codes used at least once in the batch. `TINY` is the variant for tests.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import layers

ModuleDef = Any

# The `config.model` fields of a tiny variant (milliseconds per step), for tests.
TINY = dict(name='vqvae', features=16, residual_blocks=1, downsample_steps=2,
            num_codes=16, code_dim=8, channels=3)


def _float32_or_wider(x: jax.Array) -> jax.Array:
  # Distances, losses and EMA statistics at full precision; float64 stays float64.
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class VectorQuantizer(nn.Module):
  """Nearest-code quantisation with a straight-through gradient and an EMA codebook.

  `__call__(z, *, train=False)` takes latents [..., code_dim] and returns a dict with
  'quantized' (z + sg(z_q - z), the shape of z), 'indices' (int32, z's shape without
  the last axis), 'commitment_loss', 'perplexity' and 'codebook_usage' (scalars).

  Attributes:
    num_codes: K, the codebook size.
    code_dim: D, the width of each code.
    commitment_cost: beta, the weight of the commitment loss.
    decay: gamma, the EMA decay of the counts and sums.
    epsilon: the Laplace smoothing of the counts.
    dead_code_threshold: an EMA count below it marks a code as dead (revived from the
      batch); 0 turns revival off.
  """
  num_codes: int
  code_dim: int
  commitment_cost: float = 0.25
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 1.0

  def setup(self):
    shape = (self.num_codes, self.code_dim)
    self.codebook = self.variable(
        'vq_stats', 'codebook',
        lambda: nn.initializers.normal(1.0)(self.make_rng('params'), shape, jnp.float32))
    # A pseudo-count of one per code with m_k = e_k, so that the first update blends
    # the initial codes with the batch instead of dividing a small sum by a small count.
    self.cluster_size = self.variable(
        'vq_stats', 'cluster_size', lambda: jnp.ones((self.num_codes,), jnp.float32))
    self.codebook_sum = self.variable('vq_stats', 'codebook_sum',
                                      lambda: jnp.asarray(self.codebook.value))

  def lookup(self, indices: jax.Array) -> jax.Array:
    """The codes e[indices], [..., code_dim]."""
    return jnp.take(self.codebook.value, indices, axis=0)

  def nearest(self, z: jax.Array) -> jax.Array:
    """argmin_k |z - e_k|^2 for each vector of z [..., code_dim], int32."""
    if z.shape[-1] != self.code_dim:
      raise ValueError(f'vqvae: latents of width {z.shape[-1]}, but the codebook has '
                       f'code_dim {self.code_dim}')
    z = _float32_or_wider(z)
    codebook = self.codebook.value.astype(z.dtype)
    # |z|^2 does not change the argmin; -2 z.e + |e|^2 is one matrix product.
    distances = (jnp.sum(codebook ** 2, axis=-1)
                 - 2 * jnp.einsum('...d,kd->...k', z, codebook))
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)

  def __call__(self, z: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    z = _float32_or_wider(z)
    indices = self.nearest(z)
    z_q = self.lookup(indices).astype(z.dtype)
    quantized = z + jax.lax.stop_gradient(z_q - z)
    commitment = self.commitment_cost * jnp.mean(
        (z - jax.lax.stop_gradient(z_q)) ** 2)

    flat = z.reshape(-1, self.code_dim)
    one_hot = jax.nn.one_hot(indices.reshape(-1), self.num_codes, dtype=z.dtype)
    counts = one_hot.sum(axis=0)  # n_k
    frequencies = counts / flat.shape[0]
    entropy = -jnp.sum(jnp.where(counts > 0, frequencies * jnp.log(
        jnp.where(counts > 0, frequencies, 1.0)), 0.0))

    if train and self.is_mutable_collection('vq_stats') and not self.is_initializing():
      self._update_codebook(jax.lax.stop_gradient(flat), one_hot, counts)
    return dict(quantized=quantized, indices=indices, commitment_loss=commitment,
                perplexity=jnp.exp(entropy),
                codebook_usage=jnp.mean((counts > 0).astype(z.dtype)))

  def _update_codebook(self, flat: jax.Array, one_hot: jax.Array, counts: jax.Array):
    """One EMA step of the counts, sums and codes, then the revival of dead codes."""
    gamma = self.decay
    cluster_size = gamma * self.cluster_size.value + (1 - gamma) * counts
    codebook_sum = gamma * self.codebook_sum.value + (1 - gamma) * (one_hot.T @ flat)
    total = jnp.sum(cluster_size)
    smoothed = ((cluster_size + self.epsilon)
                / (total + self.num_codes * self.epsilon) * total)
    codebook = codebook_sum / smoothed[:, None]

    if self.dead_code_threshold > 0:
      dead = cluster_size < self.dead_code_threshold
      rows = flat.shape[0]
      # Distinct batch vectors where the batch has enough of them, so that two dead
      # codes do not come back as the same code.
      picks = jax.random.choice(self.make_rng('dropout'), rows, (self.num_codes,),
                                replace=rows < self.num_codes)
      revived = flat[picks]
      codebook = jnp.where(dead[:, None], revived, codebook)
      codebook_sum = jnp.where(dead[:, None], revived, codebook_sum)  # count 1: m = e
      cluster_size = jnp.where(dead, 1.0, cluster_size)
    self.cluster_size.value = cluster_size.astype(self.cluster_size.value.dtype)
    self.codebook_sum.value = codebook_sum.astype(self.codebook_sum.value.dtype)
    self.codebook.value = codebook.astype(self.codebook.value.dtype)


class ResidualStack(nn.Module):
  """The paper's residual blocks, x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU.

  Attributes:
    blocks: the number of residual blocks.
    hidden_features: the width inside each block.
    dtype: compute dtype; parameters stay float32.
  """
  blocks: int
  hidden_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.blocks):
      y = nn.Conv(self.hidden_features, (3, 3), padding='SAME', dtype=self.dtype,
                  name=f'res{i + 1}_conv1')(nn.relu(x))
      y = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name=f'res{i + 1}_conv2')(
          nn.relu(y))
      x = x + y
    return nn.relu(x)


class Encoder(nn.Module):
  """Stride-2 4x4 convolutions, a 3x3 convolution, residual blocks, and a 1x1
  convolution to the latents [B, H / 2**steps, W / 2**steps, code_dim].

  Attributes:
    features: channels of the convolutions (the first stride-2 one has half).
    downsample_steps: the number of stride-2 convolutions.
    residual_blocks: residual blocks at the lowest resolution.
    code_dim: channels of the latents.
    dtype: compute dtype; parameters stay float32.
  """
  features: int
  downsample_steps: int
  residual_blocks: int
  code_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for step in range(self.downsample_steps):
      width = self.features // 2 if step < self.downsample_steps - 1 else self.features
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding='SAME', dtype=self.dtype,
                  name=f'down{step + 1}')(x)
      x = nn.relu(x)
    x = nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype, name='conv')(x)
    x = ResidualStack(self.residual_blocks, self.features, self.dtype, name='residual')(x)
    return nn.Conv(self.code_dim, (1, 1), dtype=self.dtype, name='to_latents')(x)


class Decoder(nn.Module):
  """A 3x3 convolution, residual blocks, then stride-2 4x4 transposed convolutions up to
  the image [B, H, W, channels] (linear output, float32): the encoder in reverse.

  Attributes:
    features: channels of the convolutions (the transposed ones but the last have half).
    upsample_steps: the number of stride-2 transposed convolutions.
    residual_blocks: residual blocks at the lowest resolution.
    channels: channels of the image.
    dtype: compute dtype; parameters stay float32.
    conv_transpose: the transposed convolution layer (Flax's, by phases on a CPU).
  """
  features: int
  upsample_steps: int
  residual_blocks: int
  channels: int
  dtype: Any = jnp.float32
  conv_transpose: ModuleDef = layers.ConvTranspose

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype, name='conv')(z)
    x = ResidualStack(self.residual_blocks, self.features, self.dtype, name='residual')(x)
    for step in range(self.upsample_steps):
      last = step == self.upsample_steps - 1
      # 'SAME' transposed convolutions with stride 2 double H and W exactly.
      x = self.conv_transpose(self.channels if last else self.features // 2, (4, 4),
                              strides=(2, 2), padding='SAME', dtype=self.dtype,
                              name=f'up{step + 1}')(x)
      if not last:
        x = nn.relu(x)
    if not self.upsample_steps:
      x = nn.Conv(self.channels, (3, 3), padding='SAME', dtype=self.dtype, name='output')(x)
    return _float32_or_wider(x)


class Model(nn.Module):
  """A VQ-VAE with an EMA codebook (see the module docstring).

  Attributes:
    features: channels of the encoder's and decoder's convolutions.
    num_codes: K, the codebook size (the image vocabulary of the prior).
    code_dim: D, the width of the latents and codes.
    downsample_steps: stride-2 steps: a 32x32 image with 2 becomes an 8x8 token grid.
    residual_blocks: residual blocks at the lowest resolution, in each of the
      encoder and decoder.
    channels: channels of the images (and of the reconstruction).
    commitment_cost: beta, the weight of the commitment loss.
    ema_decay: gamma, the decay of the codebook's moving averages.
    epsilon: the Laplace smoothing of the EMA counts.
    dead_code_threshold: EMA count under which a code is revived (0: never).
    dtype: compute dtype of the convolutions; parameters, the quantiser and the
      outputs stay float32 (or float64).
  """
  features: int = 128
  num_codes: int = 512
  code_dim: int = 64
  downsample_steps: int = 2
  residual_blocks: int = 2
  channels: int = 3
  commitment_cost: float = 0.25
  ema_decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.downsample_steps < 0:
      raise ValueError(f'vqvae: downsample_steps must be >= 0, got {self.downsample_steps}')
    self.encoder = Encoder(self.features, self.downsample_steps, self.residual_blocks,
                           self.code_dim, self.dtype)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.commitment_cost,
                                     self.ema_decay, self.epsilon, self.dead_code_threshold)
    self.decoder = Decoder(self.features, self.downsample_steps, self.residual_blocks,
                           self.channels, self.dtype)

  def encode_latents(self, x: jax.Array) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1] -> continuous latents [B, h, w, code_dim]."""
    factor = 2 ** self.downsample_steps
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f'vqvae: images must be [B, H, W, {self.channels}], got shape '
                       f'{tuple(x.shape)}')
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f'vqvae: the image height and width ({x.shape[1]}x{x.shape[2]}) must divide by '
          f'2**downsample_steps = {factor}')
    return _float32_or_wider(self.encoder(x))

  def decode_latents(self, z: jax.Array) -> jax.Array:
    """Latents [B, h, w, code_dim] (quantised or not) -> images [B, H, W, C]."""
    return self.decoder(z)

  def encode(self, x: jax.Array) -> jax.Array:
    """Images [B, H, W, C] -> the token grid [B, h, w] (int32 code indices)."""
    return self.quantizer.nearest(self.encode_latents(x))

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Token grids [B, h, w] -> reconstructions [B, H, W, C] (float32, [-1, 1] scale)."""
    return self.decode_latents(self.quantizer.lookup(indices))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    quantized = self.quantizer(self.encode_latents(x), train=train)
    return dict(reconstruction=self.decode_latents(quantized['quantized']),
                indices=quantized['indices'],
                commitment_loss=quantized['commitment_loss'],
                perplexity=quantized['perplexity'],
                codebook_usage=quantized['codebook_usage'])
