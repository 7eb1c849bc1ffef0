"""Metrics against scikit-learn; the loss against a direct transcription of its formula."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from vision_jax import losses, metrics


@pytest.mark.parametrize('k', [1, 3, 5])
def test_topk_matches_sklearn(k):
  rng = np.random.default_rng(k)
  logits = rng.normal(size=(200, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 200)
  ours = np.asarray(metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k)).mean()
  assert ours == pytest.approx(sk_metrics.top_k_accuracy_score(labels, logits, k=k,
                                                               labels=range(10)))


def test_confusion_matrix_matches_sklearn_under_a_mask():
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
  mask = rng.random(300) < 0.7
  ours = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), 7,
                                  jnp.asarray(mask))
  expected = sk_metrics.confusion_matrix(labels[mask], predictions[mask], labels=range(7))
  np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_cross_entropy_is_the_formula(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(16, 5))
  labels = rng.integers(0, 5, 16)
  # -Σ_k q_k log softmax(z)_k with q = (1-ε)·onehot + ε/K.
  q = np.full((16, 5), smoothing / 5) + (1 - smoothing) * np.eye(5)[labels]
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(q * log_softmax).sum(-1)
  ours = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
