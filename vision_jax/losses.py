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
