"""Generative evaluator: test likelihoods or losses, FID in a trained classifier's
feature space, and the pictures that show what a generative model has learnt.

Works for every method of `vision_jax.methods.generative` through its capabilities
(see that module): what a method lacks is skipped.

Metrics, at each evaluation, over `data.split` (the test split by default):
- the method's `test_metrics` averaged over the examples (AE reconstruction loss; VAE
  negative ELBO and IWAE bound in nats; diffusion's simple loss), with fixed randomness;
- with `fid_classifier` (the workdir of a classification run trained on the same data
  and preprocessing, e.g. `experiments/classification/cnn_mnist.py`): the Frechet
  distance between Gaussian fits of that classifier's pooled features of `fid_samples`
  samples and of the `fid_reference_split` (train) images, `fid_classifier`; the same
  distance of the test images, `fid_classifier_floor`, which is what a perfect model
  would score with this many test images; the improved precision and recall of the
  samples (Kynkaanniemi et al. 2019, k = `fid_neighbours`); the fractions of samples the
  classifier assigns to each class, summarised as `sample_class_entropy` (1 = balanced);
  and for a conditional model, `sample_label_accuracy`, how often a sample drawn for
  class k is classified as k. This is not Inception FID: its numbers compare runs scored
  by the same classifier only.

Figures, in `workdir/<name>/`, from fixed noise so that progress shows across
evaluations: `samples.png` (one row per class when conditional), `reconstructions.png`
(inputs, the clean images for a denoiser, reconstructions), `interpolations.png` and, for
diffusion, `trajectory.png` (noise to image). `sample_options` (e.g.
`dict(sampler='ddim', steps=50)`) go to the method's `generate`.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision_jax import config_lib, evaluators, inference, metrics, parallel, plotting
from vision_jax.data import pipeline
from vision_jax.data.pipeline import MASK_KEY
from vision_jax.methods import generative

# The evaluator's noise is the same at every evaluation: fold_in(key(seed), FIXED_SALT).
FIXED_SALT = 0x6E4


class Evaluator(evaluators.Evaluator):
  """Options: grid_samples, sample_options, reconstruction_images, interpolation_pairs,
  interpolation_points, trajectory_samples, trajectory_frames, fid_classifier,
  fid_samples, fid_reference_split, fid_neighbours (see the module docstring)."""
  OPTIONS = {'grid_samples': 64, 'reconstruction_images': 8, 'interpolation_pairs': 4,
             'interpolation_points': 8, 'trajectory_samples': 4, 'trajectory_frames': 10,
             'fid_classifier': '', 'fid_samples': 1000, 'fid_reference_split': 'train',
             'fid_neighbours': 3}

  # The method's own options, checked by the method, not completed as the evaluator's.
  FREE_FORM_OPTIONS = ('sample_options',)

  def __init__(self, method, config, **kwargs):
    # `sample_options` is free-form (the method's own options): checked by the method.
    config = ml_collections.ConfigDict(dict(config or {}))
    sample_options = dict(config.get('sample_options') or {})
    if 'sample_options' in config:
      del config['sample_options']
    config.pred = ''  # It calls the method's capabilities, not a prediction function.
    super().__init__(method, config, **kwargs)
    if not isinstance(method, generative.Method):
      raise config_lib.ConfigError(
          f'evals.{self.name}: type generative needs a generative method, not '
          f'{method.config.method}')
    self.sample_options = method.sample_options(sample_options)
    self.fixed_key = jax.random.fold_in(jax.random.key(method.config.seed), FIXED_SALT)
    self.class_names = method.data_info.class_names or ()
    self._fid_reference = None  # (mu, sigma, count) of the reference split, computed once.
    self._floor = None
    self.classifier = None
    if self.config.fid_classifier:
      self._load_classifier(self.config.fid_classifier)

  # Compiled functions, each built once.

  def _replicated_jit(self, fn, **kwargs):
    return jax.jit(parallel.under_mesh(self.mesh, fn), out_shardings=parallel.replicated(
        self.mesh), **kwargs)

  @functools.cached_property
  def _generate(self):
    method, options = self.method, self.sample_options
    return self._replicated_jit(lambda state, rng, labels: method.generate(
        method.eval_state(state), rng, labels, **options))

  @functools.cached_property
  def _test_sums(self):
    method = self.method

    def sums(state, batch, rng):
      values = method.test_metrics(method.eval_state(state), batch, rng)
      mask = batch[MASK_KEY].astype(jnp.float32)
      out = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in values.items()}
      out['count'] = mask.sum()
      return out
    return self._replicated_jit(sums)

  @functools.cached_property
  def _replicate(self):
    return self._replicated_jit(lambda x: x)

  def _method_function(self, capability, *static):
    cache = self.__dict__.setdefault('_method_functions', {})
    if capability not in cache:
      method, fn = self.method, getattr(self.method, capability)
      # The trajectory is the sampler's chain: it takes the sampling options too.
      options = self.sample_options if capability == 'trajectory' else {}
      cache[capability] = self._replicated_jit(
          lambda state, *args: fn(method.eval_state(state), *args, **options),
          static_argnums=static)
    return cache[capability]

  # FID's classifier.

  def _load_classifier(self, workdir):
    try:
      _, classifier, state = inference.load_run(
          workdir, input_shape=self.method.image_shape, mesh=self.mesh)
    except (inference.RunError, config_lib.ConfigError) as e:
      raise config_lib.ConfigError(f'evals.{self.name}.fid_classifier: {e}') from None
    missing = {'embed_image', 'predict'} - set(classifier.PREDICTIONS)
    if missing:
      raise config_lib.ConfigError(
          f'evals.{self.name}.fid_classifier: the run in {workdir} ({classifier.config.method}) '
          f'has no {sorted(missing)[0]} prediction; train a classification config')
    self.classifier, self._classifier_state = classifier, state
    embed, predict = (classifier.prediction_function(n) for n in ('embed_image', 'predict'))
    self._classify = self._replicated_jit(
        lambda state, images: (embed(state, {'image': images}),
                               predict(state, {'image': images})))

  def _classified(self, images):
    features, logits = parallel.fetch(self._classify(self._classifier_state, images))
    return features, logits.argmax(-1)

  def _real_features(self, split):
    """The classifier's features of a whole split of this evaluator's data."""
    local_batch_size = parallel.local_batch_size(self.config.batch_size, self.mesh)
    features = []
    for batch in pipeline.eval_batches(self.builder, split, batch_size=local_batch_size,
                                       pp=self.config.pp, cache=self.config.cache):
      batch.pop(pipeline.HOST_KEY)
      batch = parallel.to_global(batch, self.mesh)
      mask = parallel.fetch(self._replicate(batch[MASK_KEY])).astype(bool)
      features.append(self._classified(batch['image'])[0][mask])
    return np.concatenate(features)

  # Sampling.

  def _labels(self, count: int) -> np.ndarray:
    """Balanced labels 0, 1, ..., K-1, 0, ... (zeros without classes)."""
    return (np.arange(count) % self.method.num_classes if self.method.num_classes
            else np.zeros(count)).astype(np.int32)

  def sample(self, state, count: int, labels: np.ndarray | None = None, *, salt: int = 0
             ) -> np.ndarray:
    """`count` samples as [count, H, W, C] floats in [0, 1], from fixed noise, drawn in
    batches of `batch_size` (the last one padded, so there is one compile)."""
    labels = self._labels(count) if labels is None else np.asarray(labels, np.int32)
    size, chunks = self.config.batch_size, []
    for start in range(0, count, size):
      chunk = np.zeros(size, np.int32)
      chunk[:len(labels[start:start + size])] = labels[start:start + size]
      rng = jax.random.fold_in(jax.random.fold_in(self.fixed_key, salt), start // size)
      images = self._generate(state, rng, jax.device_put(chunk, parallel.replicated(self.mesh)))
      chunks.append(parallel.fetch(images)[:count - start])
    return np.concatenate(chunks)

  # Metrics.

  def evaluate(self, state, *, step, rng):
    del step, rng  # Fixed randomness: evaluations compare across steps.
    results = {}
    if self.method.has('test_metrics'):
      totals = None
      for index, (batch, _) in enumerate(self.batches()):
        sums = parallel.fetch(self._test_sums(
            state, batch, jax.random.fold_in(self.fixed_key, index)))
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
      count = totals.pop('count')
      results.update({k: float(v / count) for k, v in totals.items()})
      results['num_examples'] = float(count)
    if self.classifier is not None and self.method.has('generate'):
      results.update(self._sample_quality(state))
    return results

  def _sample_quality(self, state):
    if self._fid_reference is None:
      reference = self._real_features(self.config.fid_reference_split)
      test = self._real_features(self.config.data.split)
      self._fid_reference = (*metrics.gaussian_fit(reference), len(reference))
      self._reference_features = reference
      self._floor = metrics.frechet_distance(*metrics.gaussian_fit(test),
                                             *self._fid_reference[:2])
    count = self.config.fid_samples
    labels = self._labels(count)
    features, predicted = [], []
    samples = self.sample(state, count, labels, salt=1)
    for start in range(0, count, self.config.batch_size):
      f, p = self._classified(jnp.asarray(samples[start:start + self.config.batch_size]))
      features.append(f)
      predicted.append(p)
    features, predicted = np.concatenate(features), np.concatenate(predicted)
    precision, recall = metrics.precision_recall(
        self._reference_features, features, self.config.fid_neighbours)
    num_classes = self.classifier.data_info.num_classes
    fractions = np.bincount(predicted, minlength=num_classes) / len(predicted)
    nonzero = fractions[fractions > 0]
    results = {
        'fid_classifier': metrics.frechet_distance(*metrics.gaussian_fit(features),
                                                   *self._fid_reference[:2]),
        'fid_classifier_floor': self._floor,
        'precision_classifier': precision,
        'recall_classifier': recall,
        'sample_class_entropy': float(-np.sum(nonzero * np.log(nonzero)) / np.log(num_classes)),
        'fid_num_samples': float(count),
        'fid_num_reference': float(self._fid_reference[2]),
    }
    if self.method.conditional:
      results['sample_label_accuracy'] = float(np.mean(predicted == labels))
    return results

  # Figures.

  def figures(self, state, *, step, rng):
    del rng
    method, paths = self.method, []
    batch, _ = next(self.batches())
    local = {k: parallel.local_rows(v) for k, v in batch.items()}
    keep = local[MASK_KEY].astype(bool)
    local = {k: v[keep] for k, v in local.items()}
    figures = {}
    if method.has('generate'):
      figures['samples.png'] = self._sample_grid(state, step)
    small = lambda n: {k: jax.device_put(v[:n], parallel.replicated(self.mesh))  # noqa: E731
                       for k, v in local.items() if k != MASK_KEY}
    if method.has('reconstruct'):
      count = min(self.config.reconstruction_images, len(local['image']))
      out = parallel.fetch(self._method_function('reconstruct')(
          state, small(count), self.fixed_key))
      names = [n for n in ('input', 'clean', 'reconstruction') if n in out]
      labels = {'input': 'corrupted input' if 'clean' in out else 'input'}
      figures['reconstructions.png'] = (
          [out[n] for n in names], [labels.get(n, n) for n in names], (),
          f'{self.name}: reconstructions of {self.data_info.name} {self.config.data.split} '
          f'images, step {step}')
    if method.has('interpolate'):
      pairs = min(self.config.interpolation_pairs, len(local['image']) // 2)
      points = self.config.interpolation_points
      out = parallel.fetch(self._method_function('interpolate', 3)(
          state, small(2 * pairs), self.fixed_key, points))
      figures['interpolations.png'] = (
          list(out), [f'pair {i + 1}' for i in range(len(out))],
          [f'{i / (points - 1):.2f}' for i in range(points)],
          f'{self.name}: latent interpolations, step {step}')
    if method.has('trajectory'):
      count, frames = self.config.trajectory_samples, self.config.trajectory_frames
      labels = jax.device_put(self._labels(count), parallel.replicated(self.mesh))
      out = parallel.fetch(self._method_function('trajectory', 3)(
          state, self.fixed_key, labels, frames))
      names = self._label_names(self._labels(count)) if method.conditional else ()
      figures['trajectory.png'] = (
          list(out), names, ['noise'] + [''] * (frames - 2) + ['image'],
          f'{self.name}: denoising trajectories (noise to image), step {step}')
    if jax.process_index() != 0:
      return []
    outdir = self.make_outdir()
    for filename, (rows, row_labels, column_labels, title) in figures.items():
      path = os.path.join(outdir, filename)
      plotting.image_rows(rows, path, row_labels=row_labels, column_labels=column_labels,
                          title=title)
      paths.append(path)
    return paths

  def _label_names(self, labels):
    return [self.class_names[k] if k < len(self.class_names) else str(k) for k in labels]

  def _sample_grid(self, state, step):
    method, count = self.method, self.config.grid_samples
    if method.conditional:
      classes = method.num_classes
      per_class = max(1, count // classes)
      labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
      images = self.sample(state, len(labels), labels)
      rows = [images[k * per_class:(k + 1) * per_class] for k in range(classes)]
      row_labels = self._label_names(range(classes))
    else:
      images = self.sample(state, count)
      columns = 8
      rows = [images[i:i + columns] for i in range(0, count, columns)]
      row_labels = ()
    return (rows, row_labels, (), f'{self.name}: samples from fixed noise, step {step}')
