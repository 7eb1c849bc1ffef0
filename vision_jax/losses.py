"""Losses as pure functions of arrays."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / |x| along `axis`; the floor only guards an all-zero row, which stays zero."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


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
  z = l2_normalize(z)  # cosine similarity
  logits = z @ z.T / temperature
  rows = jnp.arange(z.shape[0])
  logits = jnp.where(rows[:, None] == rows[None, :], -jnp.inf, logits)  # k != i
  positives = logits[rows, rows ^ 1]  # the other view: 2k <-> 2k + 1
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positives)


MAX_LOGIT_SCALE = 100.0


def clip_loss(image_embeddings: jax.Array, text_embeddings: jax.Array,
              logit_scale: jax.Array, negative_text_embeddings: jax.Array | None = None,
              negative_mask: jax.Array | None = None) -> jax.Array:
  """CLIP's symmetric cross-entropy (Radford et al. 2021, figure 3), a scalar.

  Row i of `image_embeddings` [N, D] and of `text_embeddings` [N, D] are a matching
  pair; both are L2-normalised here (a no-op on CLIP's normalised embeddings). With
  `logit_scale` t the log inverse temperature, the logits are
  min(exp(t), 100) I_e T_e^T [N, N], and the loss is the mean of the cross-entropy of
  each image over the texts (rows) and of each text over the images (columns), the
  diagonal being the target. Under `jax.jit` with the embeddings sharded over
  devices the matrix is global: the negatives are the whole global batch of every
  device and process, and the loss (so the gradient) is that of one device holding
  the global batch.

  `negative_text_embeddings` [M, D] are extra texts that match no image (NegCLIP's hard
  negatives, Yuksekgonul et al. 2023: captions with a word swapped): they join every
  image's softmax over texts, as M more columns, and not the texts' softmax over
  images. `negative_mask` [M] (True: use) leaves out those that equal a true caption.
  """
  if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
    raise ValueError('clip_loss needs image and text embeddings of one shape [N, D], got '
                     f'{image_embeddings.shape} and {text_embeddings.shape}')
  dtype = jnp.promote_types(image_embeddings.dtype, jnp.float32)
  images = l2_normalize(image_embeddings.astype(dtype))
  texts = l2_normalize(text_embeddings.astype(dtype))
  # Clipping the scale, not the parameter: above ln(100) its gradient is zero, so it
  # stops climbing (OpenAI clamps the parameter after each step to the same effect).
  scale = jnp.minimum(jnp.exp(logit_scale.astype(dtype)), MAX_LOGIT_SCALE)
  logits = scale * images @ texts.T
  diagonal = jnp.diagonal(logits)
  image_to_text = jax.nn.logsumexp(logits, axis=1)
  if negative_text_embeddings is not None:
    if negative_text_embeddings.ndim != 2 or negative_text_embeddings.shape[1] != texts.shape[1]:
      raise ValueError('clip_loss needs negative text embeddings [M, D] with D = '
                       f'{texts.shape[1]}, got {negative_text_embeddings.shape}')
    negatives = scale * images @ l2_normalize(negative_text_embeddings.astype(dtype)).T
    if negative_mask is not None:
      negatives = jnp.where(negative_mask[None, :], negatives, -jnp.inf)
    image_to_text = jnp.logaddexp(image_to_text, jax.nn.logsumexp(negatives, axis=1))
  image_to_text = image_to_text - diagonal
  text_to_image = jax.nn.logsumexp(logits, axis=0) - diagonal
  return (jnp.mean(image_to_text) + jnp.mean(text_to_image)) / 2
