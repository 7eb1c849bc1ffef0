"""Masked metric sums: each metric is a (sum, count) pair accumulated over batches.

Sums are taken over the global batch inside jit, so they are already reduced across
devices and processes; the division happens once, at the end.
"""

import jax
import jax.numpy as jnp


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
