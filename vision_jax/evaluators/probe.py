"""Probe evaluator: how good are the encoder's frozen features? Linear probes and kNN.

Embeds a training split (`train_split`, 'train') and a test split (`data.split`,
'test') of its data with the method's prediction function `pred` ('embed_image': pooled
pre-logits features), as padded, masked batches gathered to the host: every example
counts exactly once. Then, on the frozen features:

- **Linear probes**, one per `label_fractions` (default 1%, 10%, all): a class-balanced
  subset of the training split (the same count per class as far as the classes allow, at
  least one each, fixed by `seed`; smaller fractions are subsets of larger ones), features
  standardised with that subset's mean and standard deviation, and multinomial logistic
  regression trained to convergence with full-batch L-BFGS, minimising
  `mean cross-entropy + l2 / 2 * |W|^2` (the bias is not penalised; scikit-learn's
  `C = 1 / (l2 * num_labels)`). `l2` is chosen from `l2_grid` by accuracy on a stratified
  `holdout_fraction` of the subset (ties: the larger l2; with no example to hold out,
  the largest l2), then the probe is refitted on the whole subset. Metrics
  `probe_<x>/accuracy`, `probe_<x>/num_labels` and `probe_<x>/l2`, where `<x>` is `all`
  for 1.0, else the percentage (`1pct`, `10pct`, `0.5pct`).
- **Weighted kNN** (Wu et al. 2018, as in solo-learn): cosine similarity to every training
  example, the `knn_k` nearest vote with weights `exp(similarity / knn_temperature)`.
  Metric `knn/accuracy`. `knn_only` skips the linear probes: cheap enough to run often
  during pretraining.

Also `num_examples` and `num_train_examples` (the sizes embedded). With
`encoder='initial'` the evaluator probes the encoder this run started from, the
state the trainer initialises from `config.seed` before any step, instead of the
trained one: the randomly initialised baseline of the same architecture, computed
once and reported at every evaluation beside the trained encoder's probes.

The solver is JAX's: `optax.lbfgs` in a jitted `while_loop`, one solve per l2 of the
grid from the largest down, each warm-started from the previous solution, then one
refit at the chosen l2 from its selection fit, on the default device (the accelerator
that embedded the features). Each label fraction's selection fits and refit pad their
rows, under zero weights, to the same power of two, so one compile per fraction serves
every evaluation of a run. Everything is deterministic: there is no randomness but `seed`'s subsets.

Both splits go through the evaluator's `pp` (no augmentation). Figure, in
`workdir/<name>/`: `embedding.png`, up to `embedding_points` test features projected to
2D (`embedding_method` 'pca', or 'tsne': scikit-learn's, slower: tens of seconds on a
CPU for a few hundred points), coloured by class. In an experiment config:

  config.evals.probe = config_lib.evaluator_config(type='probe', batch_size=256)
  config.evals.knn = config_lib.evaluator_config(type='probe', knn_only=True,
                                                 every_steps=500)
  config.evals.probe_random_init = config_lib.evaluator_config(
      type='probe', encoder='initial', every_steps=0)
"""

import functools
import logging
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from vision_jax import config_lib, evaluators, parallel, plotting
from vision_jax.data import pipeline
from vision_jax.data.pipeline import MASK_KEY

# L-BFGS stops when the gradient norm of the (mean) objective is below this, or after
# MAX_ITERATIONS; float32 resolves the gradient to about 1e-7.
GRADIENT_TOLERANCE = 1e-5
MAX_ITERATIONS = 1000
# Added to the standard deviation of features (a constant feature stays finite).
STD_EPSILON = 1e-5
# kNN similarities are computed for test chunks of about this many (test, train) pairs.
KNN_CHUNK_ELEMENTS = 1 << 24


def fraction_name(fraction: float) -> str:
  """1.0 -> 'all', 0.1 -> '10pct', 0.01 -> '1pct', 0.005 -> '0.5pct'."""
  return 'all' if fraction == 1 else f'{fraction * 100:g}pct'


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices of `round(fraction * len(labels))` examples (at least one per class present),
  as balanced over the classes as their sizes allow, sorted.

  Classes get equal counts; one too small for its share gives all it has and the rest
  is shared among the others; the remainder of the division goes one each to classes
  chosen by `seed`. The examples of a class are a prefix of a permutation fixed by
  `seed`, so for one seed a smaller fraction's subset lies inside a larger one's.
  """
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction {fraction} is not in (0, 1]')
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
  extra_order = rng.permutation(classes)  # Who gets the remainder: fixed by the seed.
  total = min(len(labels), max(len(classes), round(fraction * len(labels))))
  counts, remaining = {}, total
  by_size = sorted(classes, key=lambda c: len(members[c]))
  for i, c in enumerate(by_size):  # Water-filling: classes too small for a share first.
    share = remaining // (len(by_size) - i)
    if len(members[c]) <= share:
      counts[c] = len(members[c])
      remaining -= counts[c]
      continue
    rest = by_size[i:]  # Each larger than the share: all get it, some one more.
    counts.update({d: share for d in rest})
    remaining -= share * len(rest)
    for d in [d for d in extra_order if d in rest][:remaining]:
      counts[d] += 1
    break
  return np.sort(np.concatenate([members[c][:counts[c]] for c in classes]))


def holdout_split(labels: np.ndarray, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """`(fit, holdout)` indices: `round(fraction * n_c)` of each class's n_c held out, at
  least one of each class kept for fitting."""
  rng = np.random.default_rng(seed)
  fit, holdout = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    held = min(round(fraction * len(members)), len(members) - 1)
    holdout.append(members[:held])
    fit.append(members[held:])
  return np.sort(np.concatenate(fit)), np.sort(np.concatenate(holdout))


def standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
  mean, std = reference.mean(0), reference.std(0) + STD_EPSILON
  return ((x - mean) / std).astype(np.float32)


def _padded_rows(n: int) -> int:
  return 1 << max(3, math.ceil(math.log2(max(n, 1))))


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _fit_logistic(x, labels, weights, l2, start, *, num_classes):
  """Multinomial logistic regression with penalty `l2`, by L-BFGS from `start`
  (`{'w': [D, C], 'b': [C]}`)."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)
  weights = weights / weights.sum()

  def objective(params):
    logits = x @ params['w'] + params['b']
    nll = -jnp.sum(onehot * jax.nn.log_softmax(logits), -1)
    return jnp.sum(weights * nll) + 0.5 * l2 * jnp.sum(params['w'] ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def running(carry):
    _, state = carry
    count = otu.tree_get(state, 'count')
    grad_norm = otu.tree_norm(otu.tree_get(state, 'grad'))
    return (count == 0) | ((count < MAX_ITERATIONS) & (grad_norm >= GRADIENT_TOLERANCE))

  params, state = jax.lax.while_loop(running, step, (start, solver.init(start)))
  return params, otu.tree_get(state, 'count'), otu.tree_norm(otu.tree_get(state, 'grad'))


def fit_logistic(x: np.ndarray, labels: np.ndarray, num_classes: int,
                 l2_values: Sequence[float], *, rows: int | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """`(w [L, D, C], b [L, C])`: the minimisers of `mean cross-entropy + l2/2 |w|^2` on
  `(x, labels)` for each of the L values of `l2_values` (the bias unpenalised).

  The objective is strictly convex, so where L-BFGS starts changes only how fast it
  gets there: the first solve of the largest l2 starts from `start` (default zero),
  and each smaller l2 from the solution of the previous one (a regularisation path,
  as glmnet and scikit-learn's warm starts walk it), which saves most of the
  iterations of the small penalties. The rows are padded (with zero weight) to `rows`,
  by default the next power of two: calls with the same `rows` and feature size share
  one compile."""
  n = len(x)
  size = rows or _padded_rows(n)
  if size < n:
    raise ValueError(f'rows {rows} < {n} examples')
  padded_x = np.zeros((size, x.shape[1]), np.float32)
  padded_x[:n] = x
  padded_labels = np.zeros(size, np.int32)
  padded_labels[:n] = labels
  inputs = (jnp.asarray(padded_x), jnp.asarray(padded_labels),
            jnp.asarray(np.arange(size) < n, np.float32))
  params = ({'w': jnp.zeros((x.shape[1], num_classes), jnp.float32),
             'b': jnp.zeros((num_classes,), jnp.float32)} if start is None else
            {'w': jnp.asarray(start[0], jnp.float32), 'b': jnp.asarray(start[1], jnp.float32)})
  solutions = {}
  for i in sorted(range(len(l2_values)), key=lambda i: -l2_values[i]):
    params, count, norm = _fit_logistic(*inputs, np.float32(l2_values[i]), params,
                                        num_classes=num_classes)
    solutions[i] = jax.device_get(params)
    count, norm = jax.device_get((count, norm))
    if norm >= GRADIENT_TOLERANCE:
      logging.warning('linear probe (l2 %g, %d labels): L-BFGS stopped after %d iterations '
                      'with gradient norm %.2g (tolerance %g)', l2_values[i], n, count, norm,
                      GRADIENT_TOLERANCE)
  return (np.stack([solutions[i]['w'] for i in range(len(l2_values))]),
          np.stack([solutions[i]['b'] for i in range(len(l2_values))]))


def probabilities(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  logits = x.astype(np.float64) @ w + b
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  return p / p.sum(-1, keepdims=True)


def linear_probe(train_x, train_labels, test_x, test_labels, num_classes: int, *,
                 l2_grid: Sequence[float], holdout_fraction: float, seed: int
                 ) -> dict[str, float]:
  """Accuracy on the test set of the probe trained on `(train_x, train_labels)`, with l2
  chosen on a held-out part (see the module docstring)."""
  l2_grid = sorted(l2_grid)
  # The selection fits and the refit share one compile: the same padded rows.
  rows = _padded_rows(len(train_x))
  fit, held = holdout_split(train_labels, holdout_fraction, seed)
  if len(held):
    x_fit = standardise(train_x[fit], train_x[fit])
    x_held = standardise(train_x[held], train_x[fit])
    ws, bs = fit_logistic(x_fit, train_labels[fit], num_classes, l2_grid, rows=rows)
    accuracies = [np.mean((x_held @ w + b).argmax(-1) == train_labels[held])
                  for w, b in zip(ws, bs)]
    # The best; among equals the largest l2, the simplest probe.
    best = max(range(len(l2_grid)), key=lambda i: (accuracies[i], i))
  else:
    best = len(l2_grid) - 1
  l2 = l2_grid[best]
  # The refit starts from the selection fit of the same l2, near its solution.
  start = (ws[best], bs[best]) if len(held) else None
  ws, bs = fit_logistic(standardise(train_x, train_x), train_labels, num_classes, [l2],
                        rows=rows, start=start)
  w, b = ws[0], bs[0]
  predictions = (standardise(test_x, train_x) @ w + b).argmax(-1)
  return {'accuracy': float(np.mean(predictions == test_labels)),
          'num_labels': float(len(train_x)), 'l2': float(l2)}


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def _knn_scores(train_x, train_labels, test_x, temperature, *, num_classes, k):
  """`[T, C]` class scores: the sums of `exp(similarity / temperature)` of the top k."""
  top, index = jax.lax.top_k(test_x @ train_x.T, k)
  rows = jnp.broadcast_to(jnp.arange(len(test_x))[:, None], index.shape)
  return jnp.zeros((len(test_x), num_classes), jnp.float32).at[
      rows, train_labels[index]].add(jnp.exp(top / temperature))


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def knn_predict(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                num_classes: int, *, k: int, temperature: float,
                chunk: int | None = None) -> np.ndarray:
  """Weighted kNN class predictions of `test_x` (cosine similarity of L2-normalised
  features, votes `exp(similarity / temperature)` from the top `k`), in test chunks so
  that the similarity matrix stays bounded."""
  train_x, test_x = _unit_rows(train_x), _unit_rows(test_x)
  k = min(k, len(train_x))
  chunk = chunk or max(1, min(len(test_x), KNN_CHUNK_ELEMENTS // len(train_x)))
  train_device = jnp.asarray(train_x)
  labels_device = jnp.asarray(np.asarray(train_labels, np.int32))
  predictions = []
  for start in range(0, len(test_x), chunk):
    rows = test_x[start:start + chunk]
    padded = np.zeros((chunk, test_x.shape[1]), np.float32)  # One compile for all chunks.
    padded[:len(rows)] = rows
    scores = _knn_scores(train_device, labels_device, jnp.asarray(padded),
                         np.float32(temperature), num_classes=num_classes, k=k)
    predictions.append(np.asarray(scores).argmax(-1)[:len(rows)])
  return np.concatenate(predictions)


@functools.lru_cache(maxsize=None)
def _jitted_features(predict, mesh):
  """`(state, batch) -> (features, labels, mask)`, all gathered (replicated)."""
  def features(state, batch):
    return predict(state, batch), batch['label'], batch[MASK_KEY]
  return jax.jit(parallel.under_mesh(mesh, features), out_shardings=parallel.replicated(mesh))


class Evaluator(evaluators.Evaluator):
  """Options: train_split, label_fractions, l2_grid, holdout_fraction, seed, knn_k,
  knn_temperature, knn_only, embedding_method, embedding_points, encoder ('trained' or
  'initial'; see the module docstring). `pred` defaults to 'embed_image'."""
  OPTIONS = {'pred': 'embed_image', 'train_split': 'train',
             'label_fractions': (0.01, 0.1, 1.0), 'l2_grid': (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
             'holdout_fraction': 0.2, 'seed': 0, 'knn_k': 200, 'knn_temperature': 0.1,
             'knn_only': False, 'embedding_method': 'pca', 'embedding_points': 2000,
             'encoder': 'trained'}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    c, where = self.config, f'evals.{self.name}'
    if not self.data_info.num_classes:
      raise config_lib.ConfigError(
          f'{where}: type probe needs class labels; dataset {self.data_info.name} has no '
          'class label feature `label`')
    pipeline.split_size(self.builder, c.train_split)
    fractions = tuple(float(f) for f in c.label_fractions)
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
      raise config_lib.ConfigError(
          f'{where}.label_fractions: {bad[0]} is not in (0, 1] (1.0 is all the labels)')
    names = [fraction_name(f) for f in fractions]
    if len(set(names)) < len(names):
      raise config_lib.ConfigError(f'{where}.label_fractions: {fractions} repeats a fraction')
    self.fractions = fractions
    if not c.l2_grid or min(c.l2_grid) <= 0:
      raise config_lib.ConfigError(f'{where}.l2_grid: {c.l2_grid} must be positive values')
    if not 0 <= c.holdout_fraction < 1:
      raise config_lib.ConfigError(
          f'{where}.holdout_fraction: {c.holdout_fraction} is not in [0, 1)')
    if c.knn_k < 1 or c.knn_temperature <= 0:
      raise config_lib.ConfigError(
          f'{where}: knn_k ({c.knn_k}) must be >= 1 and knn_temperature '
          f'({c.knn_temperature}) > 0')
    if c.embedding_points < 2:
      raise config_lib.ConfigError(
          f'{where}.embedding_points: {c.embedding_points} is fewer than 2 points')
    if c.embedding_method not in ('pca', 'tsne'):
      raise config_lib.ConfigError(
          f'{where}.embedding_method: unknown method {c.embedding_method!r}; use pca or tsne')
    if c.encoder not in ('trained', 'initial'):
      raise config_lib.ConfigError(
          f'{where}.encoder: unknown encoder {c.encoder!r}; use trained or initial')
    self.num_classes = self.data_info.num_classes
    self.class_names = self.data_info.class_names or tuple(map(str, range(self.num_classes)))
    self._features = _jitted_features(self.predict, self.mesh)
    self._last_test = None  # (step, features, labels) of the last evaluation.
    self._initial = None  # (state, results) of the initial encoder, once computed.

  def _initial_encoder_state(self):
    """The state this run started from (the trainer's `initial_state`); outside the
    trainer, `method.init_state` with the first of `split(key(config.seed))`, as
    `train.make_train_step` initialises it (initialisers do not depend on the batch,
    so the method's made-up example stands in for it)."""
    if self._initial is None:
      if self.initial_state is not None:
        state = self.initial_state()
      else:
        batch = next(self._split_batches(self.config.data.split))
        example = self.method.synthetic_batch(1, batch['image'].shape[1:],
                                              np.random.default_rng(0))
        init_key = jax.random.split(jax.random.key(self.method.config.seed))[0]
        state = jax.jit(self.method.init_state,
                        out_shardings=parallel.replicated(self.mesh))(init_key, example)
      self._initial = (state, None)
    return self._initial[0]

  def _split_batches(self, split):
    local_batch_size = parallel.local_batch_size(self.config.batch_size, self.mesh)
    for batch in pipeline.eval_batches(
        self.builder, split, batch_size=local_batch_size, pp=self.config.pp,
        cache=self.config.cache, skip_undecodable=self.config.skip_undecodable):
      batch.pop(pipeline.HOST_KEY)
      if 'label' not in batch:
        raise config_lib.ConfigError(
            f'evals.{self.name}.pp: {self.config.pp!r} drops the `label` the probe needs')
      yield parallel.to_global(batch, self.mesh)

  def embed(self, state, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`(features [N, D] float32, labels [N])` of every example of `split`, once each."""
    features, labels = [], []
    for batch in self._split_batches(split):
      f, y, mask = parallel.fetch(self._features(state, batch))
      mask = mask.astype(bool)
      features.append(np.asarray(f, np.float32).reshape(len(f), -1)[mask])
      labels.append(y[mask])
    return np.concatenate(features), np.concatenate(labels).astype(np.int32)

  def evaluate(self, state, *, step, rng):
    del rng  # Deterministic: the subsets come from `seed`.
    c = self.config
    if c.encoder == 'initial':
      state = self._initial_encoder_state()
      if self._initial[1] is not None:  # The same encoder as last time.
        return dict(self._initial[1])
    train_x, train_y = self.embed(state, c.train_split)
    test_x, test_y = self.embed(state, c.data.split)
    self._last_test = (step, test_x, test_y)
    results = {'num_examples': float(len(test_x)), 'num_train_examples': float(len(train_x))}
    knn = knn_predict(train_x, train_y, test_x, self.num_classes, k=c.knn_k,
                      temperature=c.knn_temperature)
    results['knn/accuracy'] = float(np.mean(knn == test_y))
    if c.knn_only:
      return results
    for fraction in self.fractions:
      subset = balanced_subset(train_y, fraction, c.seed)
      scores = linear_probe(train_x[subset], train_y[subset], test_x, test_y,
                            self.num_classes, l2_grid=tuple(c.l2_grid),
                            holdout_fraction=c.holdout_fraction, seed=c.seed)
      results.update({f'probe_{fraction_name(fraction)}/{k}': v for k, v in scores.items()})
    if c.encoder == 'initial':
      self._initial = (state, dict(results))
    return results

  def figures(self, state, *, step, rng):
    del rng
    if self.config.encoder == 'initial':
      state = self._initial_encoder_state()
    if self._last_test is not None and self._last_test[0] == step:
      _, features, labels = self._last_test
    else:
      features, labels = self.embed(state, self.config.data.split)
    if jax.process_index() != 0:
      return []
    count = min(self.config.embedding_points, len(features))
    # A fixed random sample of the test set when it is larger.
    keep = np.sort(np.random.default_rng(self.config.seed).permutation(len(features))[:count])
    features, labels = features[keep], labels[keep]
    method = self.config.embedding_method
    if method == 'pca':
      from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
      projection = PCA(n_components=2, random_state=0)
      points = projection.fit_transform(features)
      axes = [f'PC{i + 1} ({100 * r:.0f}% of variance)'
              for i, r in enumerate(projection.explained_variance_ratio_)]
    else:
      from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
      points = TSNE(n_components=2, init='pca', random_state=0,
                    perplexity=min(30.0, max(1.0, (count - 1) / 3))).fit_transform(features)
      axes = ['t-SNE 1', 't-SNE 2']
    path = os.path.join(self.make_outdir(), 'embedding.png')
    plotting.embedding_scatter(
        points, labels, self.class_names, path, axis_labels=axes,
        title=f'{self.name}: {"PCA" if method == "pca" else "t-SNE"} of {self.config.pred} '
              f'features, {self.data_info.name} {self.config.data.split} '
              f'({count} images), ' + ('initial encoder' if self.config.encoder == 'initial'
                                       else f'step {step}'))
    return [path]
