"""The probe evaluator: linear probes against scikit-learn, kNN against a literal loop,
balanced label subsets, and an end-to-end evaluation of a CNN's features on `digits`."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vision_jax import config_lib, parallel, train
from vision_jax.data import pipeline
from vision_jax.evaluators import probe
from vision_jax.methods import classification

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_probe')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


def clusters(rng, n, d, c, spread=1.5):
  labels = rng.integers(0, c, n)
  centers = rng.normal(size=(c, d))
  return centers, (centers[labels] + spread * rng.normal(size=(n, d))), labels


def sklearn_probe(x, labels, l2):
  """The same objective in scikit-learn's convention: C * sum of losses + |W|^2 / 2."""
  return LogisticRegression(C=1 / (l2 * len(x)), solver='lbfgs', max_iter=10_000,
                            tol=1e-10).fit(x.astype(np.float64), labels)


def test_linear_probe_equals_scikit_learn_logistic_regression():
  rng = np.random.default_rng(0)
  centers, x, y = clusters(rng, 200, 8, 3)
  test_y = rng.integers(0, 3, 100)
  test_x = centers[test_y] + 1.5 * rng.normal(size=(100, 8))
  grid = (1e-3, 1e-2, 1e-1)
  xs, test_xs = probe.standardise(x, x), probe.standardise(test_x, x)
  # One solve for the whole grid; each lane is its own l2's minimiser.
  ws, bs = probe.fit_logistic(xs, y, 3, grid)
  for w, b, l2 in zip(ws, bs, grid):
    reference = sklearn_probe(xs, y, l2)
    ours = probe.probabilities(test_xs, w, b)
    np.testing.assert_allclose(ours, reference.predict_proba(test_xs), atol=2e-4)
    assert np.mean(ours.argmax(-1) == test_y) == reference.score(test_xs, test_y)
    np.testing.assert_allclose(w, reference.coef_.T, atol=2e-3)

  # l2 chosen on the stratified holdout as scikit-learn would choose it, then refitted.
  result = probe.linear_probe(x, y, test_x, test_y, 3, l2_grid=grid, holdout_fraction=0.2,
                              seed=0)
  fit, held = probe.holdout_split(y, 0.2, seed=0)
  assert len(held) == 40 and not set(fit) & set(held)
  held_accuracy = [sklearn_probe(probe.standardise(x[fit], x[fit]), y[fit], l2).score(
      probe.standardise(x[held], x[fit]), y[held]) for l2 in grid]
  best = max(range(3), key=lambda i: (held_accuracy[i], i))
  assert result['l2'] == pytest.approx(grid[best])
  assert result['accuracy'] == sklearn_probe(xs, y, grid[best]).score(test_xs, test_y)
  assert result['num_labels'] == 200


def literal_knn(train_x, train_y, test_x, num_classes, k, temperature):
  predictions = []
  for t in test_x:
    similarities = [float(t @ f / (np.linalg.norm(t) * np.linalg.norm(f))) for f in train_x]
    order = sorted(range(len(train_x)), key=lambda j: -similarities[j])[:k]
    scores = [0.0] * num_classes
    for j in order:
      scores[train_y[j]] += np.exp(similarities[j] / temperature)
    predictions.append(int(np.argmax(scores)))
  return np.array(predictions)


@pytest.mark.parametrize('k', [7, 200])  # 200 > the 50 training examples: all vote.
def test_weighted_knn_equals_a_literal_loop(k):
  rng = np.random.default_rng(1)
  train_x, train_y = rng.normal(size=(50, 5)), rng.integers(0, 4, 50)
  test_x = rng.normal(size=(13, 5)) * 3.0  # Norms differ: similarities are cosines.
  expected = {t: literal_knn(train_x, train_y, test_x, 4, k, t) for t in (0.05, 100.0)}
  # The temperature matters here: votes are weighted by similarity, not counted.
  assert not np.array_equal(expected[0.05], expected[100.0])
  for temperature, predictions in expected.items():
    # Chunks of 4 test rows, the last one padded.
    np.testing.assert_array_equal(probe.knn_predict(
        train_x, train_y, test_x, 4, k=k, temperature=temperature, chunk=4), predictions)
  np.testing.assert_array_equal(  # One chunk by default.
      probe.knn_predict(train_x, train_y, test_x, 4, k=k, temperature=0.05), expected[0.05])


def test_balanced_subsets():
  rng = np.random.default_rng(2)
  sizes = np.array([50, 30, 5, 100])
  labels = rng.permutation(np.repeat(np.arange(4), sizes))  # 185 examples.

  def counts(fraction, seed=0):
    return np.bincount(labels[probe.balanced_subset(labels, fraction, seed)], minlength=4)

  # 18 of 185: 4 or 5 of each class.
  assert counts(0.1).sum() == 18 and set(counts(0.1)) <= {4, 5}
  assert list(counts(0.001)) == [1, 1, 1, 1]  # At least one per class.
  # The 5-example class gives all it has; the others share the rest equally.
  assert list(counts(0.5)) == [29, 29, 5, 29]
  np.testing.assert_array_equal(probe.balanced_subset(labels, 1.0, 0), np.arange(185))
  first, again = (probe.balanced_subset(labels, 0.1, 3) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, probe.balanced_subset(labels, 0.1, 4))
  # For one seed a smaller fraction's labels lie inside a larger one's.
  assert set(probe.balanced_subset(labels, 0.1, 3)) <= set(
      probe.balanced_subset(labels, 0.5, 3))
  assert [probe.fraction_name(f) for f in (1.0, 0.1, 0.01, 0.005)] == [
      'all', '10pct', '1pct', '0.5pct']


@pytest.fixture(scope='module')
def cnn(data_dir):
  """A randomly initialised small CNN classifier of digits and its state, on 8 devices."""
  config = config_lib.load_config(CNN_DIGITS + ':local')
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, 'model.features': '(8, 16)',
                                      'model.dense_features': '(32,)'})
  info = pipeline.dataset_info(pipeline.get_builder('digits', data_dir), 'digits')
  method = classification.Method(config, info, total_steps=1, steps_per_epoch=1)
  mesh = parallel.make_mesh(8)
  abstract = {'image': jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.float32),
              'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  _, _, init, _ = train.make_train_step(method, abstract, mesh, 0)
  return config, method, init(), mesh


def make_evaluator(cnn, workdir='/nonexistent', **fields):
  config, method, _, mesh = cnn
  return probe.Evaluator(method, config_lib.evaluator_config(type='probe', **fields),
                         name='probe', workdir=str(workdir), mesh=mesh,
                         train_data=config.data)


def test_probe_evaluation_of_cnn_features(cnn, tmp_path):
  state = cnn[2]
  # 48 divides neither 1437 training nor 360 test images: padded, masked last batches.
  evaluator = make_evaluator(cnn, tmp_path, batch_size=48, label_fractions=(0.1, 1.0),
                             knn_k=20)
  results = evaluator.evaluate(state, step=3, rng=jax.random.key(0))
  assert results['num_examples'] == 360 and results['num_train_examples'] == 1437
  assert results['probe_10pct/num_labels'] == 144 and results['probe_all/num_labels'] == 1437
  for name in ('knn', 'probe_10pct', 'probe_all'):
    assert 0 <= results[f'{name}/accuracy'] <= 1
  for name in ('probe_10pct', 'probe_all'):
    assert results[f'{name}/l2'] in evaluator.config.l2_grid
  # An untrained CNN's features still separate digits far above chance (0.1).
  assert results['knn/accuracy'] > 0.6 and results['probe_all/accuracy'] > 0.6
  assert set(results) == {'num_examples', 'num_train_examples', 'knn/accuracy'} | {
      f'probe_{x}/{m}' for x in ('10pct', 'all') for m in ('accuracy', 'num_labels', 'l2')}
  # Deterministic, and a later evaluation compiles nothing new.
  compiled = probe._fit_logistic._cache_size(), probe._knn_scores._cache_size()
  assert evaluator.evaluate(state, step=4, rng=jax.random.key(1)) == results
  assert (probe._fit_logistic._cache_size(), probe._knn_scores._cache_size()) == compiled

  # Padding rows are not features: unpadded batches give the same rows, once each.
  features, labels = evaluator.embed(state, 'test')
  # The pooled pre-logits features (32 of them), not the 10 class scores.
  assert evaluator.config.pred == 'embed_image' and features.shape == (360, 32)
  whole = make_evaluator(cnn, batch_size=360, knn_only=True, knn_k=20)
  features_whole, labels_whole = whole.embed(state, 'test')
  np.testing.assert_array_equal(labels, labels_whole)
  np.testing.assert_allclose(features, features_whole, rtol=1e-5, atol=1e-6)
  knn_only = whole.evaluate(state, step=3, rng=jax.random.key(0))
  assert set(knn_only) == {'num_examples', 'num_train_examples', 'knn/accuracy'}
  assert knn_only['knn/accuracy'] == results['knn/accuracy']

  paths = evaluator.figures(state, step=4, rng=jax.random.key(0))
  assert paths == [str(tmp_path / 'probe' / 'embedding.png')]
  assert os.path.getsize(paths[0]) > 10_000


def test_probe_config_mistakes_are_config_errors(cnn, monkeypatch):
  for fields, message in [
      (dict(label_fractions=(0.1, 0.0)), r'label_fractions: 0.0 is not in \(0, 1\]'),
      (dict(label_fractions=(1.5,)), r'label_fractions: 1.5 is not in \(0, 1\]'),
      (dict(embedding_method='umap'), "unknown method 'umap'; use pca or tsne"),
      (dict(l2_grid=(0.0, 1.0)), 'l2_grid'),
      (dict(knn_neighbours=5), 'unknown config field evals.probe.knn_neighbours'),
  ]:
    with pytest.raises(config_lib.ConfigError, match=message):
      make_evaluator(cnn, **fields)
  info = pipeline.dataset_info
  monkeypatch.setattr(pipeline, 'dataset_info', lambda builder, name: dataclasses.replace(
      info(builder, name), num_classes=None, class_names=None))
  with pytest.raises(config_lib.ConfigError, match='needs class labels'):
    make_evaluator(cnn)
