"""Semantic segmentation: the loss against its formula with ignored pixels, the metrics
against scikit-learn, every pixel counted once with padded batches on 8 devices, both
models under grad, jvp and vmap, and the scenes experiment end to end."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score

from vision_jax import config_lib, evaluators, parallel, train
from vision_jax.data import pipeline, scenes
from vision_jax.data.pipeline import MASK_KEY
from vision_jax.dataset_info import DatasetInfo
from vision_jax.evaluators import segmentation as seg_eval
from vision_jax.methods import segmentation as seg_method
from vision_jax.models import resnet
from vision_jax.models import segmentation as seg_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENT_SCENES = os.path.join(REPO, 'experiments/dense/segment_scenes.py')
SEGMENT_VOC = os.path.join(REPO, 'experiments/dense/segment_voc.py')
ARCHS = ('fcn', 'unet')
K = len(scenes.SEGMENTATION_CLASSES)
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def make_method(arch, **options):
  config = config_lib.load_config(f'{SEGMENT_SCENES}:arch={arch},local')
  with config.unlocked():
    config.segmentation.update(options)
  info = DatasetInfo('scenes/multi', {'train': 16}, 40, None)
  return seg_method.Method(config, info, total_steps=2, steps_per_epoch=1)


def random_batch(count, size=8, seed=0, ignored=0.0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, K, (count, size, size, 1))
  labels[rng.random(labels.shape) < ignored] = 255
  return {'image': jnp.asarray(rng.random((count, size, size, 3), np.float32)),
          'segmentation': jnp.asarray(labels.astype(np.uint8))}


def numpy_loss(logits, labels, ignore_label=255):
  """The mean over non-ignored pixels of -log softmax(logits)[label], in float64."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).reshape(logits.shape[:-1])
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  total, count = 0.0, 0
  for index in np.ndindex(*labels.shape):
    if labels[index] != ignore_label:
      total -= log_probs[index][labels[index]]
      count += 1
  return total / count


@functools.cache
def unet_step():
  """A tiny U-Net method on a batch of 16 8x8 images with uneven ignored pixels, and its
  jitted `value_and_grad(loss)` and train-mode logits, shared by the tests below."""
  method = make_method('unet')
  batch = random_batch(16, seed=1, ignored=0.1)
  labels = np.array(batch['segmentation'])
  labels[:2, :, 1:] = 255  # the first device's two examples: mostly ignored
  batch['segmentation'] = jnp.asarray(labels)
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params = variables.pop('params')
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  logits_fn = jit(lambda params, x: method.model.apply(
      {'params': params, **variables}, x, train=True, mutable=['batch_stats'])[0])
  return method, batch, params, variables, grad_fn, logits_fn


def test_the_loss_is_the_mean_cross_entropy_of_the_pixels_not_ignored():
  _, batch, params, model_state, grad_fn, logits_fn = unet_step()
  (loss, (metrics, _)), _ = grad_fn(params, model_state, batch, jax.random.key(1))
  logits = logits_fn(params, batch['image'])
  np.testing.assert_allclose(loss, numpy_loss(logits, batch['segmentation']), rtol=1e-5)
  labels = np.asarray(batch['segmentation'])[..., 0]
  valid = labels != 255
  assert metrics['num_pixels'] == valid.sum() < labels.size  # some were ignored
  np.testing.assert_allclose(metrics['pixel_accuracy'],
                             (np.argmax(logits, -1) == labels)[valid].mean(), rtol=1e-6)
  # Whatever an ignored pixel's logits are, they add nothing.
  noisy = logits + 100.0 * (~valid)[..., None] * np.random.default_rng(1).random(logits.shape)
  total, count = seg_method.pixel_cross_entropy(noisy, jnp.asarray(labels), 255)
  np.testing.assert_allclose(total / count, loss, rtol=1e-5)
  # A batch with every pixel ignored has loss 0, not NaN, and no gradient.
  all_ignored = dict(batch, segmentation=jnp.full_like(batch['segmentation'], 255))
  (loss, _), grads = grad_fn(params, model_state, all_ignored, jax.random.key(1))
  assert loss == 0.0 and all(np.all(g == 0) for g in jax.tree.leaves(grads))


def random_confusion_case(seed, num_classes=5, size=2000):
  """True and predicted labels where class num_classes - 1 never occurs, and class 2 only
  in the predictions."""
  rng = np.random.default_rng(seed)
  true = rng.choice([0, 1, 3], size, p=[0.6, 0.3, 0.1])
  predicted = np.where(rng.random(size) < 0.7, true, rng.integers(0, num_classes - 1, size))
  return true, predicted


@pytest.mark.parametrize('seed', [0, 1])
def test_mean_iou_and_accuracies_match_scikit_learn(seed):
  true, predicted = random_confusion_case(seed)
  found = seg_eval.scores(confusion_matrix(true, predicted, labels=range(5)))
  present = [0, 1, 2, 3]  # 4 is in neither: no IoU, not in the mean
  np.testing.assert_array_equal(found['present'], [True] * 4 + [False])
  assert np.isnan(found['iou'][4])
  np.testing.assert_allclose(found['iou'][:4], jaccard_score(
      true, predicted, labels=present, average=None), rtol=1e-12)
  np.testing.assert_allclose(found['mean_iou'], jaccard_score(
      true, predicted, labels=present, average='macro'), rtol=1e-12)
  assert found['iou'][2] == 0.0  # predicted, never true: IoU 0, and it counts in the mean
  np.testing.assert_allclose(found['pixel_accuracy'], accuracy_score(true, predicted))
  recall = [np.mean(predicted[true == k] == k) for k in (0, 1, 3)]
  np.testing.assert_allclose(found['mean_class_accuracy'], np.mean(recall))


def test_the_confusion_matrix_counts_each_labelled_pixel_of_padded_batches_once():
  """Batches sharded over 8 devices, the last ones padded: only real, labelled pixels."""
  mesh = parallel.make_mesh(8)
  rng = np.random.default_rng(0)
  num_real, batch_size = 21, 8  # batches of 8, 8 and 5 real examples + 3 padding rows
  labels = rng.integers(0, K, (num_real, 6, 6, 1)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = 255
  predictions = rng.integers(0, K, (num_real, 6, 6))

  def predict(state, batch):
    del state
    return jax.nn.one_hot(batch['predicted'], K) * 3.0

  sums_fn = seg_eval._jitted_sums(jax.jit(predict), K, 255, mesh)
  confusion = np.zeros((K, K), np.int64)
  examples = 0
  for start in range(0, 24, batch_size):
    rows = slice(start, min(start + batch_size, num_real))
    n = rows.stop - rows.start
    pad = lambda x: np.concatenate([x, np.full((batch_size - n, *x.shape[1:]), 1, x.dtype)])
    batch = {'segmentation': pad(labels[rows]), 'predicted': pad(predictions[rows]),
             'image': np.zeros((batch_size, 6, 6, 3), np.float32),
             MASK_KEY: np.arange(batch_size) < n}
    sums = parallel.fetch(sums_fn(None, parallel.to_global(batch, mesh))[0])
    confusion += sums['confusion']
    examples += int(sums['num_examples'])
  keep = labels[..., 0] != 255
  np.testing.assert_array_equal(confusion, confusion_matrix(
      labels[..., 0][keep], predictions[keep], labels=range(K)))
  assert examples == num_real and confusion.sum() == keep.sum()


@pytest.mark.parametrize('arch', ARCHS)
def test_models_give_pixel_logits_under_grad_jvp_and_vmap(arch):
  model = seg_models.Model(num_classes=K, **seg_models.TINY_FCN if arch == 'fcn'
                           else seg_models.TINY_UNET)
  x = jax.random.normal(jax.random.key(0), (2, 16, 8, 3))
  u = jax.random.normal(jax.random.key(2), x.shape)
  v = jax.random.normal(jax.random.key(3), (2, 16, 8, K))
  variables = jit(model.init)(jax.random.key(1), x)

  @jit
  def transformed(variables, x, u, v):  # One compile for every transformation.
    apply = lambda x: model.apply(variables, x)
    logits, ju = jax.jvp(apply, (x,), (u,))
    jtv = jax.vjp(apply, x)[1](v)[0]
    vmapped = jax.vmap(apply)(jnp.stack([x, 2 * x]))

    def train_loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.mean(logits ** 2)
    return logits, ju, jtv, vmapped, jax.grad(train_loss)(variables['params'])

  logits, ju, jtv, vmapped, grads = transformed(variables, x, u, v)
  chex.assert_shape(logits, (2, 16, 8, K))
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))
  # Forward and reverse mode agree: <v, J u> = <J^T v, u>.
  np.testing.assert_allclose(jnp.vdot(v, ju), jnp.vdot(jtv, u), rtol=1e-4)
  # vmap over an extra leading axis is the model applied to each slice.
  np.testing.assert_allclose(vmapped[0], logits, rtol=1e-5, atol=1e-6)
  assert not np.allclose(vmapped[1], logits)


def test_a_step_on_8_devices_equals_1_device():
  """The loss is a mean over the global batch's labelled pixels, not of device means:
  ignored pixels are uneven across the shards."""
  _, batch, params, model_state, grad_fn, logits_fn = unet_step()
  (loss1, (metrics1, stats1)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (metrics8, stats8)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(metrics8, metrics1, rtol=1e-5)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-6)
  # Not vacuous: the mean of the devices' own means is another number.
  logits, labels = logits_fn(params, batch['image']), batch['segmentation']
  device_means = [numpy_loss(logits[i:i + 2], labels[i:i + 2]) for i in range(0, 16, 2)]
  assert abs(np.mean(device_means) - loss1) > 1e-3


def local_config(data_dir, arch, spec=SEGMENT_SCENES, **overrides):
  config = config_lib.load_config(f'{spec}:arch={arch},local')
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, **overrides})
  return config


@pytest.mark.parametrize('arch', ARCHS)
def test_local_mode_trains_and_evaluates_every_test_pixel_once(tmp_path, scenes_data_dir,
                                                               arch):
  # 24 test scenes in batches of 16: the second is padded.
  config = local_config(scenes_data_dir, arch, **{'evals.test.batch_size': '16'})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test/num_examples'] == 24
  assert results['test/num_pixels'] == 24 * 32 * 32
  assert 0 <= results['test/mean_iou'] <= 1 and 0 <= results['test/pixel_accuracy'] <= 1
  assert np.isfinite(results['test/loss'])
  with open(tmp_path / 'test' / 'per_class_iou.json') as f:
    written = json.load(f)
  assert set(written['per_class_iou']) == set(scenes.SEGMENTATION_CLASSES)
  present = {k: v for k, v in written['per_class_iou'].items() if v is not None}
  np.testing.assert_allclose(np.mean(list(present.values())), results['test/mean_iou'])
  assert results['test/num_classes_absent'] == K - len(present)
  for name in ('segmentations.png', 'confusion_matrix.png'):
    assert os.path.getsize(tmp_path / 'test' / name) > 0


class RuleMethod(seg_method.Method):
  """Predictions by a fixed rule of the pixels, so the expected metrics can be computed
  from the dataset alone."""
  PREDICTIONS = ('predict', 'brightest_channel')

  def brightest_channel(self, state, batch):
    del state
    return jax.nn.one_hot(rule(batch['image']), self.num_classes)


def rule(images):
  """Class 0 for dark pixels, else 1 + the brightest channel (so classes 4, 5 never)."""
  xp = jnp if isinstance(images, jax.Array) else np
  return xp.where(images.mean(-1) < 0.45, 0, 1 + xp.argmax(images, -1))


@pytest.mark.parametrize('batch_size', [16, 40])
def test_the_evaluator_on_scenes_matches_scikit_learn(tmp_path, scenes_data_dir, batch_size):
  config = local_config(scenes_data_dir, 'fcn')
  with config.unlocked():  # A seventh class that neither the data nor the rule has.
    config.segmentation.class_names = scenes.SEGMENTATION_CLASSES + ('unused',)
  info = DatasetInfo('scenes/multi', {'train': 96}, 40, None)
  method = RuleMethod(config, info, total_steps=1, steps_per_epoch=1)
  evaluator = evaluators.get_evaluator(
      method, config_lib.evaluator_config(
          type='segmentation', pred='brightest_channel', batch_size=batch_size,
          pp=config.evals.test.pp, num_figure_images=3),
      name='rule', workdir=str(tmp_path), mesh=parallel.make_mesh(8), train_data=config.data)
  results = evaluator.evaluate(None, step=0, rng=None)
  builder = pipeline.get_builder('scenes/multi', scenes_data_dir)
  examples = list(tfds.as_numpy(builder.as_dataset(split='test')))
  true = np.concatenate([ex['segmentation'].ravel() for ex in examples])
  predicted = np.concatenate([rule(ex['image'] / 255.0).ravel() for ex in examples])
  present = sorted(set(true) | set(predicted))
  assert 6 not in present  # 'unused' is absent and must stay out of the mean
  assert results['num_classes_absent'] == K + 1 - len(present)
  assert 'iou_unused' not in results
  np.testing.assert_allclose(results['mean_iou'], jaccard_score(
      true, predicted, labels=present, average='macro'), rtol=1e-6)
  np.testing.assert_allclose(results['pixel_accuracy'], accuracy_score(true, predicted))
  per_class = jaccard_score(true, predicted, labels=present, average=None)
  for k, iou in zip(present, per_class):
    np.testing.assert_allclose(results[f'iou_{method.class_names[k]}'], iou,
                               rtol=1e-6)
  assert results['num_pixels'] == true.size and results['num_examples'] == len(examples)
  if batch_size == 16:
    paths = evaluator.figures(None, step=0, rng=None)
    assert all(os.path.getsize(p) > 0 for p in paths)


def test_out_of_range_labels_and_bad_options_are_errors(tmp_path, scenes_data_dir):
  with pytest.raises(config_lib.ConfigError, match='ignore_label 3 is one of the 6'):
    make_method('fcn', ignore_label=3)
  with pytest.raises(config_lib.ConfigError, match='model.arch must be one of'):
    seg_models.Model(arch='deeplab', num_classes=2)
  with pytest.raises(config_lib.ConfigError, match='model.skips is not an attribute'):
    seg_models.Model(arch='unet', num_classes=2, skips=('stage2',))
  with pytest.raises(config_lib.ConfigError, match='arch must be one of'):
    config_lib.load_config(f'{SEGMENT_SCENES}:arch=deeplab')
  # Four classes for data with six: the evaluator names the problem.
  config = local_config(scenes_data_dir, 'unet')
  with config.unlocked():
    config.segmentation.class_names = ('background', 'circle', 'square', 'triangle')
  info = DatasetInfo('scenes/multi', {'train': 96}, 40, None)
  method = RuleMethod(config, info, total_steps=1, steps_per_epoch=1)
  evaluator = evaluators.get_evaluator(
      method, config_lib.evaluator_config(type='segmentation', pred='brightest_channel',
                                          pp=config.evals.test.pp),
      name='rule', workdir=str(tmp_path), mesh=parallel.make_mesh(1), train_data=config.data)
  with pytest.raises(ValueError, match='class outside 0..3'):
    evaluator.evaluate(None, step=0, rng=None)


def test_voc_recipe_reads_a_tfds_dataset_stored_from_numpy(tmp_path):
  """The docstring's route for a VOC folder: TFDS's ad hoc builder, then data.name."""
  rng = np.random.default_rng(0)

  def examples(count):  # VOC-like: images of several sizes, 255 at the boundaries
    for i in range(count):
      labels = rng.integers(0, 21, (60 + 7 * i, 80, 1)).astype(np.uint8)
      labels[::5] = 255
      yield i, {'image': rng.integers(0, 255, (60 + 7 * i, 80, 3), np.uint8),
                'segmentation': labels}
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'segmentation': tfds.features.Image(shape=(None, None, 1), use_colormap=True)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='voc_like', version='1.0.0', features=features, data_dir=str(tmp_path),
      split_datasets={'train': list(examples(3)), 'val': list(examples(2))})
  config = config_lib.load_config(f'{SEGMENT_VOC}:arch=fcn')
  builder = pipeline.get_builder('voc_like', str(tmp_path))
  for split, pp in (('train', config.data.pp_train), ('val', config.evals.val.pp)):
    batch = next(iter(pipeline.eval_batches(builder, split, batch_size=2, pp=pp)))
    assert batch['image'].shape[1:] == tuple(config.data.input_shape) == (320, 320, 3)
    assert batch['segmentation'].shape[1:] == (320, 320, 1)
    # Nearest-neighbour maps: still labels, the boundary label among them.
    assert set(np.unique(batch['segmentation'])) <= set(range(21)) | {255}
    assert 255 in batch['segmentation']


def _leaf_paths(tree, root=''):
  node = tree
  for part in filter(None, root.split('/')):
    node = node[part]
  return {'/'.join(filter(None, [root] + [str(k.key) for k in path]))
          for path, _ in jax.tree_util.tree_leaves_with_path(node)}


@pytest.mark.parametrize('depth', [18, 50])
def test_voc_recipe_copies_every_backbone_layer_of_a_resnet_classifier(depth):
  """`init_from.subtrees` of the recipe against the trees a ResNet run saves and the
  FCN's state holds (shapes only: nothing is compiled)."""
  config = config_lib.load_config(f'{SEGMENT_VOC}:arch=fcn' + (',local' if depth == 18 else ''))
  assert config.model.depth == depth
  x = jnp.zeros((1, 32, 32, 3))

  def state(model):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return {'params': variables['params'],
            'model_state': {'batch_stats': variables['batch_stats']}}
  source = state(resnet.Model(depth=depth, num_classes=10, num_filters=4,
                              stem=config.model.stem))
  attributes = {k: v for k, v in config.model.to_dict().items()
                if k not in ('name', 'cpu_kernels')}
  target = state(seg_models.Model(**{**attributes, 'num_filters': 4}, num_classes=21))
  copied_source, copied_target = set(), set()
  for pair in config.init_from.subtrees:
    src, dst = pair.split(':')
    assert ({p[len(src):] for p in _leaf_paths(source, src)}
            == {p[len(dst):] for p in _leaf_paths(target, dst)})
    copied_source |= _leaf_paths(source, src)
    copied_target |= _leaf_paths(target, dst)
  # Everything but the classifier's head, into every layer of the backbone.
  assert _leaf_paths(source) - copied_source == {'params/head/kernel', 'params/head/bias'}
  assert {p for p in _leaf_paths(target) if '/backbone/' in p} == copied_target


@pytest.mark.parametrize('arch', ARCHS)
def test_voc_recipe_local_mode_reads_the_scenes(scenes_data_dir, arch):
  config = local_config(scenes_data_dir, arch, spec=SEGMENT_VOC)
  assert config.data.name == 'scenes/multi'
  assert tuple(config.segmentation.class_names) == scenes.SEGMENTATION_CLASSES
  builder = pipeline.get_builder(config.data.name, scenes_data_dir)
  for split, pp in (('train', config.data.pp_train), ('test', config.evals.val.pp)):
    batch = next(iter(pipeline.eval_batches(builder, split, batch_size=2, pp=pp)))
    assert batch['image'].shape[1:] == tuple(config.data.input_shape) == (32, 32, 3)
    assert batch['segmentation'].shape[1:] == (32, 32, 1)


def test_an_evaluator_without_label_maps_says_so(tmp_path, scenes_data_dir):
  config = local_config(scenes_data_dir, 'unet')
  method = RuleMethod(config, DatasetInfo('scenes/multi', {'train': 96}, 40, None),
                      total_steps=1, steps_per_epoch=1)
  evaluator = evaluators.get_evaluator(
      method, config_lib.evaluator_config(type='segmentation', pred='brightest_channel',
                                          pp="decode|value_range(0, 1)|keep('image')"),
      name='rule', workdir=str(tmp_path), mesh=parallel.make_mesh(1), train_data=config.data)
  with pytest.raises(config_lib.ConfigError, match='needs a `segmentation` label map'):
    evaluator.evaluate(None, step=0, rng=None)
