"""FCOS detection: target assignment against a transcription of its rule on hand-made boxes,
the focal loss against the paper's formula, empty images, the evaluator's AP against
pycocotools on the files it writes, a step on 8 devices against 1, the model under grad,
jvp and vmap, and the scenes experiment end to end (train, evaluate, detect CLI, resume)."""

import functools
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from vision_jax import checkpointing, config_lib, detect, evaluators, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.data import pipeline, scenes
from vision_jax.methods import detection
from vision_jax.models import fcos

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_detection')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECT_SCENES = os.path.join(REPO, 'experiments/dense/detect_scenes.py')
DETECT_COCO = os.path.join(REPO, 'experiments/dense/detect_coco.py')
K = len(scenes.SHAPES)
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def local_config(data_dir=None, **overrides):
  config = config_lib.load_config(f'{DETECT_SCENES}:arch=fcos,local')
  if data_dir:
    overrides = {'data.data_dir': data_dir, **overrides}
  config_lib.apply_overrides(config, overrides)
  return config


def make_method(**options):
  config = local_config()
  with config.unlocked():
    config.detection.update(options)
  info = DatasetInfo('scenes/multi', {'train': 16}, 40, None)
  return detection.Method(config, info, total_steps=2, steps_per_epoch=1)


# ------------------------------------------------------------------ target assignment

def reference_targets(locations, strides, lower, upper, boxes, classes, valid, radius):
  """The assignment rule location by location, box by box, in float64."""
  out = {'positive': [], 'box_index': [], 'classes': [], 'ltrb': [], 'centerness': []}
  for (y, x), s, lo, hi in zip(np.asarray(locations, np.float64), strides, lower, upper):
    best, best_area = -1, np.inf
    for g, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, np.float64)):
      if not valid[g]:
        continue
      l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
      if radius > 0:
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        sy0, sx0 = max(cy - radius * s, y0), max(cx - radius * s, x0)
        sy1, sx1 = min(cy + radius * s, y1), min(cx + radius * s, x1)
        inside = min(x - sx0, y - sy0, sx1 - x, sy1 - y) > 0
      else:
        inside = min(l, t, r, b) > 0
      area = (y1 - y0) * (x1 - x0)
      if inside and lo <= max(l, t, r, b) <= hi and area < best_area:
        best, best_area = g, area
    out['positive'].append(best >= 0)
    out['box_index'].append(best)
    out['classes'].append(classes[best] if best >= 0 else -1)
    if best >= 0:
      y0, x0, y1, x1 = boxes[best]
      l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
      out['ltrb'].append((l, t, r, b))
      out['centerness'].append(np.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)))
    else:
      out['ltrb'].append((1, 1, 1, 1))
      out['centerness'].append(0.0)
  return {k: np.array(v) for k, v in out.items()}


# A 16x16 image, levels at strides 2 (8x8 locations at 1, 3, ..., 15) and 4 (4x4 at 2, 6,
# 10, 14), split at max(l, t, r, b) = 6 pixels. Box 0 (class 1) is the top-left quarter,
# box 1 (class 2) the whole image, box 2 (class 3, area 16, inside both) is padding.
BOXES = np.array([[0, 0, 8, 8], [0, 0, 16, 16], [2, 2, 6, 6]], np.float32)
CLASSES = np.array([1, 2, 3])
VALID = np.array([True, True, False])


def hand_geometry():
  locations, strides, levels = fcos.geometry(16, 16, (2, 4))
  lower, upper = detection.level_ranges(strides, levels, (6.0,))
  return locations, strides, lower, upper, levels


def at(locations, levels, level, y, x):
  return int(np.flatnonzero((levels == level) & (locations[:, 0] == y)
                            & (locations[:, 1] == x))[0])


@pytest.mark.parametrize('radius', [0.0, 1.5])
def test_targets_follow_the_rule_on_hand_made_boxes(radius):
  locations, strides, lower, upper, levels = hand_geometry()
  assign = jit(functools.partial(detection.assign_targets, center_sampling_radius=radius))
  found = jax.tree.map(np.asarray, assign(locations, strides, lower, upper, BOXES, CLASSES,
                                          VALID))
  expected = reference_targets(locations, strides, lower, upper, BOXES, CLASSES, VALID,
                               radius)
  for key in ('positive', 'box_index', 'classes'):
    np.testing.assert_array_equal(found[key], expected[key], err_msg=key)
  np.testing.assert_allclose(found['ltrb'], expected['ltrb'], rtol=1e-6)
  np.testing.assert_allclose(found['centerness'], expected['centerness'], rtol=1e-6)

  loc = functools.partial(at, locations, levels)
  # (3, 3) at stride 2: inside box 0 with l, t, r, b = 3, 3, 5, 5 (max 5 in [0, 6]);
  # box 1 reaches 13 > 6. Centerness sqrt(3/5 * 3/5).
  i = loc(0, 3, 3)
  assert found['box_index'][i] == 0 and found['classes'][i] == 1
  np.testing.assert_allclose(found['ltrb'][i], [3, 3, 5, 5])
  np.testing.assert_allclose(found['centerness'][i], 0.6, rtol=1e-6)
  # (6, 6) at stride 4: both boxes in range (max 6 and 10): the smaller, box 0, wins.
  i = loc(1, 6, 6)
  assert found['box_index'][i] == 0
  np.testing.assert_allclose(found['ltrb'][i], [6, 6, 2, 2])
  # (10, 10) at stride 4: outside box 0, so box 1 (class 2), distances 10, 10, 6, 6.
  i = loc(1, 10, 10)
  assert found['box_index'][i] == 1 and found['classes'][i] == 2
  np.testing.assert_allclose(found['ltrb'][i], [10, 10, 6, 6])
  # (5, 5) at stride 2 lies in the padded box 2, the smallest: never assigned to it.
  assert found['box_index'][loc(0, 5, 5)] == 0
  assert not np.any(found['box_index'] == 2)
  # (15, 15) at stride 2: only box 1 contains it, and its max distance 15 is over 6.
  assert not found['positive'][loc(0, 15, 15)]
  # Negatives: class -1, neutral distances, centerness 0.
  negatives = ~found['positive']
  assert negatives.any() and np.all(found['classes'][negatives] == -1)
  assert np.all(found['centerness'][negatives] == 0)
  if radius:  # Centre sampling: (1, 1) lies inside box 0 but not in its 3-pixel centre.
    assert not found['positive'][loc(0, 1, 1)] and found['positive'][loc(0, 3, 3)]
  # Not vacuous: made real, the padded box takes the locations it covers.
  valid = np.ones(3, bool)
  assert assign(locations, strides, lower, upper, BOXES, CLASSES, valid)['box_index'][
      loc(0, 5, 5)] == 2


def test_level_ranges_default_to_eight_strides_and_reject_bad_bounds():
  _, strides, levels = fcos.geometry(64, 64, (8, 16, 32))
  lower, upper = detection.level_ranges(strides, levels)
  assert {(float(a), float(b)) for a, b in zip(lower, upper)} == {
      (0.0, 64.0), (64.0, 128.0), (128.0, np.inf)}
  with pytest.raises(config_lib.ConfigError, match='2 increasing boundaries'):
    detection.level_ranges(strides, levels, (64.0,))
  with pytest.raises(config_lib.ConfigError, match='increasing'):
    detection.level_ranges(strides, levels, (128.0, 64.0))


# ------------------------------------------------------------------ losses

def numpy_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), Lin et al. (2017) eq. 5, in float64."""
  x = np.asarray(logits, np.float64)
  y = np.asarray(targets, np.float64)
  p = 1 / (1 + np.exp(-x))
  p_t = np.where(y == 1, p, 1 - p)
  alpha_t = np.where(y == 1, alpha, 1 - alpha)
  return -alpha_t * (1 - p_t) ** gamma * np.log(p_t)


def test_focal_loss_is_the_papers_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (7, 11)).astype(np.float32)
  targets = (rng.random((7, 11)) < 0.3).astype(np.float32)
  found = detection.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(found, numpy_focal_loss(logits, targets), rtol=1e-5, atol=1e-7)
  found = detection.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets), alpha=0.5,
                                       gamma=0.0)
  np.testing.assert_allclose(found, numpy_focal_loss(logits, targets, 0.5, 0.0), rtol=1e-5)
  # Confidently wrong logits stay finite where sigmoid underflows: alpha_t * |x|.
  far = detection.sigmoid_focal_loss(jnp.array([-60.0, 60.0]), jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(far, [0.25 * 60, 0.75 * 60], rtol=1e-6)


def scene_batch(count, seed=0, objects=4, size=32):
  """Images with 0..objects random boxes each (pixel-aligned, 4 to 16 pixels)."""
  rng = np.random.default_rng(seed)
  corner = rng.integers(0, size - 16, (count, objects, 2))
  side = rng.integers(4, 16, (count, objects, 2))
  boxes = np.concatenate([corner, corner + side], -1) / size
  return {'image': rng.random((count, size, size, 3), np.float32),
          'objects/bbox': boxes.astype(np.float32),
          'objects/label': rng.integers(0, K, (count, objects)).astype(np.int32),
          'objects_mask': rng.random((count, objects)) < 0.7}


def test_an_image_without_objects_has_a_finite_loss_and_gradients():
  method = make_method()
  batch = scene_batch(2)
  batch['objects_mask'][:] = False
  batch['image'][1] = 0.0  # as an eval padding row
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params = variables.pop('params')
  (loss, (metrics, _)), grads = jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, variables, batch, jax.random.key(1))
  assert np.isfinite(loss) and metrics['num_positives'] == 0
  assert metrics['giou_loss'] == 0 and metrics['centerness_loss'] == 0
  assert metrics['focal_loss'] > 0  # every location is a negative
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


def test_a_step_on_8_devices_equals_1_device():
  """Every term is normalised over the global batch: positives are uneven across the
  shards (the first device's two images have no objects)."""
  method = make_method()
  batch = scene_batch(16, seed=1)
  batch['objects_mask'][:2] = False
  batch['objects_mask'][2:, 0] = True
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss1, (metrics1, stats1)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (metrics8, stats8)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(metrics8, metrics1, rtol=1e-5)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-6)
  # The focal term is the sum over every location and class over the global positives.
  outputs, _ = method.model.apply({'params': params, **model_state}, batch['image'],
                                  train=True, mutable=['batch_stats'])
  targets = jax.tree.map(np.asarray, method.targets(batch))
  one_hot = np.eye(K)[np.maximum(targets['classes'], 0)] * targets['positive'][..., None]
  per_image = numpy_focal_loss(outputs['class_logits'], one_hot).sum((1, 2))
  positives = targets['positive'].sum(1)
  np.testing.assert_allclose(metrics1['focal_loss'], per_image.sum() / positives.sum(),
                             rtol=1e-5)
  assert metrics1['num_positives'] == positives.sum() > 0 and positives[:2].sum() == 0
  # Not vacuous: the mean of the devices' own normalised sums is another number.
  device = [per_image[i:i + 2].sum() / max(positives[i:i + 2].sum(), 1) for i in range(0, 16, 2)]
  assert abs(np.mean(device) - metrics1['focal_loss']) > 1e-2


def test_model_outputs_under_grad_jvp_and_vmap():
  model = fcos.Model(num_classes=K, **fcos.TINY)
  x = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
  variables = jit(model.init)(jax.random.key(1), x)
  out = jit(model.apply)(variables, x)
  locations, strides, _ = fcos.geometry(16, 24, model.strides())
  num = len(strides)
  assert model.strides() == (2, 4, 8) and num == 8 * 12 + 4 * 6 + 2 * 3
  chex.assert_shape([out['class_logits'], out['ltrb'], out['centerness_logits']],
                    [(2, num, K), (2, num, 4), (2, num)])
  np.testing.assert_array_equal(out['locations'], locations)
  np.testing.assert_array_equal(out['strides'], strides)
  assert np.all(out['ltrb'] >= 0)
  # The focal-loss prior: every class starts near probability 0.01.
  np.testing.assert_allclose(jax.nn.sigmoid(out['class_logits']).mean(), 0.01, rtol=0.2)
  apply = lambda x: model.apply(variables, x)['ltrb']

  def train_loss(params, x):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.mean(out['ltrb']) + jnp.mean(out['class_logits'] ** 2)
  grads = jit(jax.grad(train_loss))(variables['params'], x)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(grads['scale_0'] != 0)
  u = jax.random.normal(jax.random.key(2), x.shape)
  v = jax.random.normal(jax.random.key(3), (2, num, 4))
  _, ju = jit(lambda x, u: jax.jvp(apply, (x,), (u,)))(x, u)
  jtv = jit(lambda x, v: jax.vjp(apply, x)[1](v)[0])(x, v)
  np.testing.assert_allclose(jnp.vdot(v, ju), jnp.vdot(jtv, u), rtol=1e-3)
  stacked = jnp.stack([x, 2 * x])
  np.testing.assert_allclose(jit(jax.vmap(apply))(stacked)[1], jit(apply)(2 * x),
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the evaluator

class HandMadeMethod(detection.Method):
  """Detections made from the ground truth by a fixed rule, so the AP is known."""
  PREDICTIONS = ('detect', 'perfect', 'perfect_masks', 'hand_made')

  def perfect(self, state, batch):
    del state
    mask = batch['objects_mask']
    return {'boxes': batch['objects/bbox'], 'scores': mask.astype(jnp.float32),
            'classes': jnp.where(mask, batch['objects/label'], -1), 'valid': mask}

  def perfect_masks(self, state, batch):
    """The true boxes with the true masks (from the instance map) as probabilities."""
    detections = self.perfect(state, batch)
    ids = jnp.arange(1, batch['objects_mask'].shape[1] + 1)[None, :, None, None]
    detections['masks'] = (batch['instances'][None, ..., 0].swapaxes(0, 1) == ids) * 0.9
    return detections

  def hand_made(self, state, batch):
    """Each true box shifted by 0..3 pixels (object g by g pixels), class 0 for every
    third image's first object, plus a false positive per image."""
    del state
    mask = batch['objects_mask']
    count, num = mask.shape
    shift = jnp.arange(num, dtype=jnp.float32)[None, :, None] / 32
    boxes = jnp.clip(batch['objects/bbox'] + shift * jnp.array([1, 1, 1, 1]), 0, 1)
    image = jnp.arange(count)[:, None]
    classes = jnp.where((image % 3 == 0) & (jnp.arange(num) == 0), 0, batch['objects/label'])
    scores = 0.9 - 0.1 * jnp.arange(num, dtype=jnp.float32)[None] * jnp.ones((count, 1))
    false = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.3, 0.3]), (count, 1, 4))
    return {'boxes': jnp.concatenate([boxes, false], 1),
            'scores': jnp.concatenate([scores, jnp.full((count, 1), 0.95)], 1),
            'classes': jnp.concatenate([jnp.where(mask, classes, -1),
                                        jnp.full((count, 1), 4)], 1),
            'valid': jnp.concatenate([mask, jnp.ones((count, 1), bool)], 1)}


def rule_evaluator(scenes_data_dir, tmp_path, pred, batch_size=16):
  config = local_config(scenes_data_dir)
  info = DatasetInfo('scenes/multi', {'train': 96}, 40, None)
  method = HandMadeMethod(config, info, total_steps=1, steps_per_epoch=1)
  eval_config = config.evals.test.copy_and_resolve_references()
  eval_config.pred, eval_config.batch_size = pred, batch_size
  if pred == 'perfect_masks':  # the instance map too
    eval_config.pp = eval_config.pp.replace("'objects_mask')", "'objects_mask', 'instances')")
  return evaluators.get_evaluator(method, eval_config, name=pred, workdir=str(tmp_path),
                                  mesh=parallel.make_mesh(8), train_data=config.data)


def pycocotools_stats(gt_path, det_path):
  ground_truth = coco_api.COCO(gt_path)
  results = ground_truth.loadRes(det_path)
  evaluation = cocoeval.COCOeval(ground_truth, results, 'bbox')
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  return evaluation.stats


def test_the_evaluators_ap_is_pycocotools_on_the_files_it_writes(scenes_data_dir, tmp_path):
  # 24 test scenes in batches of 16 over 8 devices: the second batch is padded.
  perfect = rule_evaluator(scenes_data_dir, tmp_path, 'perfect').evaluate(
      None, step=0, rng=None)
  assert perfect['AP'] == perfect['AP50'] == perfect['AR100'] == 1.0
  assert 'segm/AP' not in perfect
  # The masks hook: a detector that also returns masks is scored on them too.
  masks = rule_evaluator(scenes_data_dir, tmp_path, 'perfect_masks').evaluate(
      None, step=0, rng=None)
  assert masks['AP'] == masks['segm/AP'] == masks['segm/AP50'] == 1.0
  evaluator = rule_evaluator(scenes_data_dir, tmp_path, 'hand_made')
  results = evaluator.evaluate(None, step=0, rng=None)
  outdir = tmp_path / 'hand_made'
  builder = pipeline.get_builder('scenes/multi', scenes_data_dir)
  objects = [len(ex['objects']['bbox'])
             for ex in builder.as_dataset(split='test').as_numpy_iterator()]
  ground_truth = json.loads((outdir / 'instances_test.json').read_text())
  assert len(ground_truth['images']) == results['num_examples'] == 24
  assert len(ground_truth['annotations']) == results['num_objects'] == sum(objects)
  assert [c['name'] for c in ground_truth['categories']] == list(scenes.SHAPES)
  detections = json.loads((outdir / 'detections_test.json').read_text())
  assert len(detections) == results['num_detections'] == sum(objects) + 24
  stats = pycocotools_stats(str(outdir / 'instances_test.json'),
                            str(outdir / 'detections_test.json'))
  for name, index in [('AP', 0), ('AP50', 1), ('AP75', 2), ('AP_small', 3),
                      ('AP_medium', 4), ('AP_large', 5), ('AR100', 8)]:
    assert results[name] == pytest.approx(stats[index], abs=1e-12), name
  assert 0.2 < results['AP'] < results['AP50'] < 1  # shifted boxes, wrong classes
  assert results['AP_medium'] == results['AP_large'] == -1  # 32x32: all objects small
  paths = evaluator.figures(None, step=0, rng=None)
  assert [os.path.basename(p) for p in paths] == ['detections.png']
  assert os.path.getsize(paths[0]) > 0


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope='module')
def trained(scenes_data_dir, tmp_path_factory):
  """The local experiment trained once (4 steps, checkpoints at 2 and 4)."""
  root = tmp_path_factory.mktemp('detect_scenes')
  config = local_config(scenes_data_dir)
  results = train.train_and_evaluate(config, str(root / 'run'))
  return config, root, results


def test_local_mode_trains_evaluates_and_writes_coco_files(trained):
  _, root, results = trained
  assert results['test/num_examples'] == 24
  for name in ('AP', 'AP50', 'AP75', 'AP_small', 'AR100'):
    assert 0 <= results[f'test/{name}'] <= 1, name
  assert results['test/AP_medium'] == results['test/AP_large'] == -1
  outdir = root / 'run' / 'test'
  assert len(json.loads((outdir / 'instances_test.json').read_text())['images']) == 24
  assert isinstance(json.loads((outdir / 'detections_test.json').read_text()), list)
  assert os.path.getsize(outdir / 'detections.png') > 0
  with open(root / 'run' / 'metrics.jsonl') as f:
    logged = [m for m in map(json.loads, f) if 'train/num_positives' in m]
  assert logged and all(m['train/num_positives'] > 0 for m in logged)


def test_the_detect_command_draws_the_users_images(trained, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  _, root, _ = trained
  paths = []
  for i, image in enumerate(np.asarray(jax.random.uniform(jax.random.key(0), (2, 40, 48, 3)))):
    paths.append(str(tmp_path / f'photo{i}.png'))
    Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
  out = tmp_path / 'drawn'
  assert detect.main(['--workdir', str(root / 'run'), '--image', *paths, '--out', str(out),
                      '--score_threshold', '0']) == 0
  printed = capsys.readouterr().out
  assert all(f'{path}: ' in printed for path in paths)
  assert (out / 'photo0.png').exists() and (out / 'photo1.png').exists()
  listed = json.loads((out / 'detections.json').read_text())
  for path in paths:  # boxes in the original image's pixels
    for d in listed[path]:
      assert d['class'] in scenes.SHAPES and 0 <= d['box'][2] <= 40 and 0 <= d['box'][3] <= 48
  assert detect.main(['--workdir', str(root / 'run'), '--image', str(tmp_path / 'gone.png'),
                      '--out', str(out)]) == 2
  assert 'gone.png does not exist' in capsys.readouterr().err
  assert detect.main(['--workdir', str(tmp_path / 'nowhere'), '--image', paths[0],
                      '--out', str(out)]) == 2
  assert 'nowhere does not exist' in capsys.readouterr().err


def test_a_run_resumed_from_its_checkpoint_ends_with_the_same_weights(trained):
  """Interrupted after its step-2 checkpoint: the run's own checkpoint alone in a fresh
  workdir is that interruption; the resumed run skips the evaluation."""
  config, root, _ = trained
  resumed = str(root / 'resumed')
  shutil.copytree(root / 'run' / 'checkpoints' / '2', os.path.join(resumed, 'checkpoints', '2'))
  assert checkpointing.saved_steps(resumed) == [2]
  config = config.copy_and_resolve_references()
  config.evals = {}
  train.train_and_evaluate(config, resumed)
  chex.assert_trees_all_close(checkpointing.read_latest(resumed)['params'],
                              checkpointing.read_latest(str(root / 'run'))['params'],
                              rtol=1e-5, atol=1e-6)


def test_bad_arguments_and_options_are_named():
  with pytest.raises(config_lib.ConfigError, match='arch must be one of'):
    config_lib.load_config(f'{DETECT_SCENES}:arch=yolo')
  with pytest.raises(config_lib.ConfigError, match='unknown arguments'):
    config_lib.load_config(f'{DETECT_SCENES}:arhc=fcos')
  with pytest.raises(config_lib.ConfigError, match='unknown config field detection.radius'):
    make_method(radius=1.0)
  with pytest.raises(config_lib.ConfigError, match='2 class_names but num_classes 3'):
    make_method(class_names=('a', 'b'), num_classes=3)
  with pytest.raises(config_lib.ConfigError, match='model.levels'):
    fcos.level_strides('cifar', ('stage3', 'stage2'))


def test_coco_recipe_reads_like_the_scenes_one():
  config = config_lib.load_config(DETECT_COCO)
  assert config.data.name == 'coco/2017' and config.detection.num_classes == 80
  assert config.model.stem == 'imagenet' and config.model.extra_levels == 2
  assert fcos.level_strides(config.model.stem, config.model.levels,
                            config.model.extra_levels) == (8, 16, 32, 64, 128)
  assert 'pad_sequence(100' in config.data.pp_train
  assert config.evals.val.crowd_key == 'objects/is_crowd'
  user = config_lib.load_config(f'{DETECT_COCO}:train=coco_json:/data/train.json,'
                                'val=coco_json:/data/val.json')
  assert user.data.name == 'coco_json:/data/train.json'
  assert user.evals.val.data.name == 'coco_json:/data/val.json'
