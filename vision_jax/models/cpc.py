r"""Contrastive Predictive Coding on images (Oord et al. 2018; Henaff et al. 2019).

An image is cut into an overlapping grid of p x p patches (`extract_patches`), each
patch goes through the encoder alone, z[i, j] = f(x[i, j]) (a headless encoder from
any family: [B, p, p, C] -> [B, D]), and a context network that sees only the rows
above and including row i summarises them, c[i, j] = g(z[<= i, :]) (masked
convolutions: `ContextNetwork`). For each step k = 1..K a bias-free linear map W_k
predicts the patch k rows below, z^[i + k, j] = W_k c[i, j]; the InfoNCE loss
(`vision_jax.methods.cpc.info_nce_loss`) scores z^ against every patch of the batch.

`__call__` returns `(z, predictions)`; `embed` returns the patch features mean-pooled
over the grid, h = mean_ij z[i, j] (Henaff et al.'s "spatially mean-pooled" features),
which the probes read.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def grid_size(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
  """(Gh, Gw), the patches per column and row: G = (side - p) // stride + 1."""
  if patch_size < 1 or stride < 1:
    raise ValueError(f'patch_size and stride must be >= 1, got {patch_size} and {stride}')
  if height < patch_size or width < patch_size:
    raise ValueError(f'{patch_size}x{patch_size} patches do not fit in {height}x{width} '
                     'images')
  return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def extract_patches(images: jax.Array, patch_size: int, stride: int) -> jax.Array:
  """[N, H, W, C] -> [N, Gh, Gw, p, p, C]: patch (i, j) is
  `images[:, i*stride : i*stride + p, j*stride : j*stride + p]`.

  Rows that no patch reaches at the bottom and right are left out. Static slices, so
  the gradient is pads and adds (no gather or scatter).
  """
  if images.ndim != 4:
    raise ValueError(f'extract_patches needs images [N, H, W, C], got {images.shape}')
  gh, gw = grid_size(images.shape[1], images.shape[2], patch_size, stride)
  rows = jnp.stack([images[:, i * stride:i * stride + patch_size] for i in range(gh)],
                   axis=1)  # [N, Gh, p, W, C]
  return jnp.stack([rows[:, :, :, j * stride:j * stride + patch_size] for j in range(gw)],
                   axis=2)  # [N, Gh, Gw, p, p, C]


class ContextNetwork(nn.Module):
  """Convolutions over the grid of patch features, causal in rows.

  Each convolution pads the top by kernel_size - 1 rows and the bottom by none ('SAME'
  in width), so its output at row i reads rows i - kernel_size + 1 .. i of its input,
  and the stack's output at row i depends on z at rows <= i only: c[i] never sees the
  rows it is asked to predict. ReLU between the layers; the last layer is linear.

  Attributes:
    features: the width of every layer, and so of c.
    num_layers: the number of convolutions.
    kernel_size: the side of the square kernels (e.g. 3).
    dtype: compute dtype.
  """
  features: int = 64
  num_layers: int = 2
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """z [N, Gh, Gw, D] -> c [N, Gh, Gw, features]."""
    k = self.kernel_size
    padding = ((k - 1, 0), ((k - 1) // 2, k // 2))
    x = z
    for i in range(self.num_layers):
      if i:
        x = nn.relu(x)
      x = nn.Conv(self.features, (k, k), padding=padding, dtype=self.dtype,
                  name=f'conv{i + 1}')(x)
    return x


class CPC(nn.Module):
  """The patch encoder, the causal context network and the K linear predictors.

  Variables: `encoder` (the encoder's, in every collection), `context` and
  `predictor1` .. `predictorK`.

  Attributes:
    encoder: a headless encoder mapping [B, p, p, C] patches to [B, D] features; it is
      applied to all N Gh Gw patches of a batch in one call. BatchNorm in it would share
      statistics between the patches of a batch (a shortcut for the contrastive task;
      Henaff et al. use layer norm instead), so prefer an encoder without it.
    patch_size: the side p of the square patches.
    patch_stride: the step between patches (p / 2 in Henaff et al.: they overlap).
    context_features: the width of the context network.
    context_layers: its number of masked convolutions.
    kernel_size: the side of their kernels.
    prediction_steps: K, how many rows ahead the predictors reach.
    dtype: compute dtype of the context network and the predictors.
  """
  encoder: nn.Module
  patch_size: int = 8
  patch_stride: int = 4
  context_features: int = 64
  context_layers: int = 2
  kernel_size: int = 3
  prediction_steps: int = 2
  dtype: Any = jnp.float32

  def patch_features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """z [N, Gh, Gw, D], the encoder's features of every patch of `images` [N, H, W, C]."""
    patches = extract_patches(images, self.patch_size, self.patch_stride)
    n, gh, gw = patches.shape[:3]
    z = self.encoder(patches.reshape(n * gh * gw, *patches.shape[3:]), train=train)
    return z.reshape(n, gh, gw, z.shape[-1])

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    """`(z [N, Gh, Gw, D], predictions [K, N, Gh, Gw, D])`.

    predictions[k - 1][:, i, j] = W_k c[:, i, j] predicts z[:, i + k, j]; those at rows
    i >= Gh - k have no target (the loss skips them; the full grid keeps shapes static).
    """
    z = self.patch_features(images, train=train)
    if self.prediction_steps < 1 or self.prediction_steps >= z.shape[1]:
      raise ValueError(f'prediction_steps must be in 1 .. {z.shape[1] - 1} (the grid has '
                       f'{z.shape[1]} rows), got {self.prediction_steps}')
    c = ContextNetwork(self.context_features, self.context_layers, self.kernel_size,
                       dtype=self.dtype, name='context')(z)
    predictions = jnp.stack([
        nn.Dense(z.shape[-1], use_bias=False, dtype=self.dtype, name=f'predictor{k}')(c)
        for k in range(1, self.prediction_steps + 1)])
    return z, predictions

  def embed(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """h [N, D]: the patch features mean-pooled over the grid."""
    return self.patch_features(images, train=train).mean(axis=(1, 2))
