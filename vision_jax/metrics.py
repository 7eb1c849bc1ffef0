"""Masked metric sums: each metric is a (sum, count) pair accumulated over batches.

Sums are taken over the global batch inside jit, so they are already reduced across
devices and processes; the division happens once, at the end. The sample-quality
measures at the end (FID, precision and recall) are host-side numpy on feature arrays.
"""

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k highest logits (ties broken by index)."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank of the true class: classes with a strictly higher logit, or equal and earlier.
  higher = (logits > label_logit) | ((logits == label_logit) &
                                     (jnp.arange(logits.shape[-1]) < labels[:, None]))
  return (jnp.sum(higher, axis=-1) < k).astype(jnp.float32)


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     mask: jax.Array) -> jax.Array:
  """Counts[true, predicted] over the unmasked examples."""
  index = labels * num_classes + predictions
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(mask.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


# Sample quality in a feature space (host-side numpy, float64).

def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of `[N, D]` features, in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

  Tr (sigma1 sigma2)^(1/2) is computed as Tr (s sigma2 s)^(1/2) with s = sigma1^(1/2):
  the same eigenvalues, but of a symmetric PSD matrix, so it is real and stable where
  `scipy.linalg.sqrtm(sigma1 @ sigma2)` returns complex noise for singular covariances
  (fewer samples than feature dimensions).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'the two Gaussians differ in dimension: {mu1.shape} vs {mu2.shape}')
  root = _psd_sqrt(sigma1)
  eigenvalues = np.linalg.eigvalsh(root @ sigma2 @ root)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
  return float(max(distance, 0.0))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
  return np.clip(d, 0, None)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3
                     ) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of `[N, D]` features.

  Each set's manifold is the union of balls around its points reaching their k-th
  nearest neighbour in the set. Precision is the fraction of generated points inside
  the real manifold (samples that look real); recall, the fraction of real points
  inside the generated manifold (how much of the data the samples cover).
  """
  real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
  if min(len(real), len(generated)) <= k:
    raise ValueError(f'precision_recall needs more than k = {k} points in each set')

  def radii(points):  # Distance to the k-th neighbour, the point itself excluded.
    return np.sort(_squared_distances(points, points), axis=1)[:, k]

  def covered(points, centres):
    return np.mean(np.any(_squared_distances(points, centres) <= radii(centres)[None, :],
                          axis=1))

  return float(covered(generated, real)), float(covered(real, generated))
