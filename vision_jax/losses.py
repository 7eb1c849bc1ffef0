"""Losses as pure functions of arrays."""

import jax
import jax.numpy as jnp


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy with integer labels and optional label smoothing.

  The smoothed target puts 1 - ε + ε/K on the true class and ε/K elsewhere
  (Szegedy et al. 2016, section 7).
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.sum(targets * log_probs, axis=-1)


def nt_xent(z: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's NT-Xent loss (Chen et al. 2020, Algorithm 1), a scalar.

  `z` is [2N, D], its rows 2k and 2k + 1 (0-based) the projections of the two views of
  image k. With s_ij the cosine similarity of rows i and j,
  l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau), and the loss is
  1/(2N) sum_k [l(2k, 2k+1) + l(2k+1, 2k)]: every other row of the batch is a
  negative. Under `jax.jit` with `z` sharded over devices, the similarity matrix is
  global, so the negatives are the whole global batch.
  """
  if z.ndim != 2 or z.shape[0] % 2:
    raise ValueError(f'nt_xent needs z of shape [2N, D] (two views per image), got {z.shape}')
  z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
  # Cosine similarity; the floor only guards an all-zero projection.
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))
  logits = z @ z.T / temperature
  rows = jnp.arange(z.shape[0])
  logits = jnp.where(rows[:, None] == rows[None, :], -jnp.inf, logits)  # k != i
  positives = logits[rows, rows ^ 1]  # the other view: 2k <-> 2k + 1
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positives)
