"""CondInst instance segmentation: the dynamic mask head against a transcription of its
layers, the dice loss against its formula, the sampling of the trained instances, empty
images, a step on 8 devices against 1, learning one batch's masks, and the scenes
experiment end to end (train, mask AP by pycocotools, the RLE files, the figure, the
detect CLI)."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from pycocotools import mask as mask_api

from vision_jax import config_lib, detect, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.data import scenes
from vision_jax.methods import instance_segmentation
from vision_jax.models import fcos

pytestmark = pytest.mark.xdist_group('test_instance_segmentation')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANCE_SCENES = os.path.join(REPO, 'experiments/dense/instance_scenes.py')
K = len(scenes.SHAPES)
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def local_config(data_dir=None, **overrides):
  config = config_lib.load_config(f'{INSTANCE_SCENES}:local')
  if data_dir:
    overrides = {'data.data_dir': data_dir, **overrides}
  config_lib.apply_overrides(config, overrides)
  return config


def make_method(**options):
  config = local_config()
  with config.unlocked():
    config.instance_segmentation.update(options)
  info = DatasetInfo('scenes/multi', {'train': 16}, 40, None)
  return instance_segmentation.Method(config, info, total_steps=2, steps_per_epoch=1)


def scene_batch(count, seed=0, objects=3, size=32):
  """Images of 0..objects filled rectangles (4 to 14 pixels), their boxes, and the
  instance map of their visible pixels (later objects drawn over earlier ones)."""
  rng = np.random.default_rng(seed)
  images = np.zeros((count, size, size, 3), np.float32)
  instances = np.zeros((count, size, size, 1), np.uint8)
  boxes = np.zeros((count, objects, 4), np.float32)
  valid = rng.random((count, objects)) < 0.8
  for n in range(count):
    for g in range(objects):
      y, x = rng.integers(0, size - 14, 2)
      h, w = rng.integers(4, 14, 2)
      boxes[n, g] = np.array([y, x, y + h, x + w]) / size
      if valid[n, g]:
        images[n, y:y + h, x:x + w] = rng.random(3)
        instances[n, y:y + h, x:x + w] = g + 1
  return {'image': images, 'instances': instances, 'objects/bbox': boxes,
          'objects/label': rng.integers(0, K, (count, objects)).astype(np.int32),
          'objects_mask': valid}


# ------------------------------------------------------------------ the parts

def test_the_dynamic_mask_head_is_three_1x1_convolutions_over_relative_coordinates():
  assert fcos.dynamic_param_count(8, 8, 3) == 169  # the paper's
  rng = np.random.default_rng(0)
  c, channels, h, w, stride = 3, 4, 5, 6, 2.0
  controller = rng.normal(size=fcos.dynamic_param_count(c, channels, 3)).astype(np.float32)
  features = rng.normal(size=(h, w, c)).astype(np.float32)
  location, scale = np.array([3.0, 7.0], np.float32), 16.0
  got = fcos.dynamic_mask_logits(jnp.asarray(controller), jnp.asarray(features),
                                 jnp.asarray(location), stride=stride, scale=scale,
                                 channels=channels, layers=3)
  # Transcription: cell (i, j) at ((i + .5) s, (j + .5) s); inputs (dy, dx, features).
  expected = np.zeros((h, w))
  sizes = [(c + 2, channels), (channels, channels), (channels, 1)]
  for i in range(h):
    for j in range(w):
      x = np.concatenate([(location - [(i + 0.5) * stride, (j + 0.5) * stride]) / scale,
                          features[i, j]])
      offset = 0
      for k, (n_in, n_out) in enumerate(sizes):
        weights = controller[offset:offset + n_in * n_out].reshape(n_in, n_out)
        offset += n_in * n_out
        x = x @ weights + controller[offset:offset + n_out]
        offset += n_out
        x = np.maximum(x, 0) if k < 2 else x
      expected[i, j] = x[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dice_loss_is_its_formula():
  rng = np.random.default_rng(1)
  p, g = rng.random((3, 8, 8)), (rng.random((3, 8, 8)) < 0.4).astype(np.float64)
  expected = [1 - 2 * (a * b).sum() / ((a ** 2).sum() + (b ** 2).sum() + 1e-5)
              for a, b in zip(p, g)]
  np.testing.assert_allclose(instance_segmentation.dice_loss(p, g), expected, rtol=1e-6)
  assert float(instance_segmentation.dice_loss(g[0], g[0])) < 1e-6


def test_sampling_draws_distinct_positive_locations_and_their_objects():
  rng = np.random.default_rng(2)
  positive = rng.random((3, 40)) < 0.3
  positive[1] = False  # an image without objects
  positive[2, :] = False
  positive[2, [4, 9]] = True  # fewer positives than rows
  box_index = np.where(positive, rng.integers(0, 4, (3, 40)), -1)
  chosen, ids = jax.device_get(instance_segmentation.sample_instances(
      jnp.asarray(positive), jnp.asarray(box_index), jax.random.key(0), 8))
  for n in range(3):
    rows = ids[n] > 0
    assert rows.sum() == min(8, positive[n].sum())
    assert len(set(chosen[n][rows])) == rows.sum()  # without replacement
    assert positive[n][chosen[n][rows]].all()
    np.testing.assert_array_equal(ids[n][rows], box_index[n][chosen[n][rows]] + 1)
  assert set(chosen[2][ids[2] > 0]) == {4, 9}
  other, _ = instance_segmentation.sample_instances(
      jnp.asarray(positive), jnp.asarray(box_index), jax.random.key(1), 8)
  assert set(np.asarray(other)[0]) != set(chosen[0])  # a random draw, not the first 8


def test_an_image_without_objects_has_a_finite_loss_and_gradients():
  method = make_method()
  batch = scene_batch(2)
  batch['objects_mask'][:] = False
  batch['instances'][:] = 0
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params = variables.pop('params')
  (loss, (metrics, _)), grads = jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, variables, batch, jax.random.key(1))
  assert np.isfinite(loss) and metrics['num_mask_instances'] == 0
  assert metrics['mask_loss'] == 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_a_step_on_8_devices_equals_1_device():
  """The mask term is a mean over the global batch's sampled instances, and the draw
  does not depend on how the batch is sharded."""
  method = make_method()
  batch = scene_batch(16, seed=3)
  batch['objects_mask'][:2] = False
  batch['instances'][:2] = 0
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss1, (metrics1, _)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (metrics8, _)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  assert metrics1['num_mask_instances'] > 0 and metrics1['mask_loss'] > 0
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(metrics8, metrics1, rtol=1e-5)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-4, atol=1e-6)


def test_one_batch_of_masks_is_learned():
  """Mask term alone (boxes are FCOS's, tested apart): 150 steps on 4 images take the
  dice loss of the sampled instances from about 1 to well under half."""
  import optax  # pylint: disable=g-import-not-at-top
  method = make_method(max_mask_instances=16)
  batch = scene_batch(4, seed=4)
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  optimizer = optax.adam(1e-2)

  def mask_loss(params, rng):
    outputs, _ = method.model.apply({'params': params, **model_state}, batch['image'],
                                    train=True, mutable=['batch_stats'])
    targets = method.targets(batch)
    return method.mask_losses(outputs, targets, jnp.asarray(batch['instances']),
                              rng)['mask_loss']

  @jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(mask_loss)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses = []
  for i in range(150):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert losses[0] > 0.7 and np.mean(losses[-10:]) < 0.35, (losses[0], losses[-10:])


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope='module')
def trained(scenes_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('instance_scenes')
  config = local_config(scenes_data_dir)
  results = train.train_and_evaluate(config, str(root / 'run'))
  return root, results


def test_local_mode_scores_masks_with_pycocotools_and_writes_them_as_rle(trained):
  root, results = trained
  assert results['test/num_examples'] == 24
  for name in ('AP', 'AP50', 'segm/AP', 'segm/AP50', 'segm/AR100'):
    assert 0 <= results[f'test/{name}'] <= 1, name
  outdir = root / 'run' / 'test'
  truth = json.loads((outdir / 'instances_test.json').read_text())
  detections = json.loads((outdir / 'detections_test.json').read_text())
  assert detections and all('segmentation' in d for d in detections)
  assert all('segmentation' in a for a in truth['annotations'])
  decoded = mask_api.decode(detections[0]['segmentation'])
  assert decoded.shape == (32, 32)
  assert os.path.getsize(outdir / 'detections.png') > 0
  with open(root / 'run' / 'metrics.jsonl') as f:
    logged = [m for m in map(json.loads, f) if 'train/mask_loss' in m]
  assert logged and all(m['train/num_mask_instances'] > 0 for m in logged)


def test_the_detect_command_draws_masks(trained, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root, _ = trained
  path = str(tmp_path / 'photo.png')
  Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
                  ).save(path)
  out = tmp_path / 'drawn'
  assert detect.main(['--workdir', str(root / 'run'), '--image', path, '--out', str(out),
                      '--score_threshold', '0']) == 0
  assert f'{path}: ' in capsys.readouterr().out and (out / 'photo.png').exists()
  masks = detect._resize_nearest(np.eye(4, dtype=bool)[None], 8, 12)
  np.testing.assert_array_equal(masks[0, ::2, ::3], np.eye(4, dtype=bool))


def test_bad_options_are_named():
  config = local_config()
  config.model.mask_features = 0
  info = DatasetInfo('scenes/multi', {'train': 16}, 40, None)
  with pytest.raises(config_lib.ConfigError, match='set model.mask_features'):
    instance_segmentation.Method(config, info, total_steps=2, steps_per_epoch=1)
  with pytest.raises(config_lib.ConfigError, match='unknown arguments'):
    config_lib.load_config(f'{INSTANCE_SCENES}:arch=mask_rcnn')
  method = make_method()
  batch = scene_batch(2)
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params = variables.pop('params')
  del batch['instances']
  with pytest.raises(KeyError, match="no 'instances'"):
    method.loss(params, variables, batch, jax.random.key(1))


def test_benchmark_times_the_step_and_detect_with_masks(capsys):
  from vision_jax import benchmark  # pylint: disable=g-import-not-at-top
  assert benchmark.main(['--config', f'{INSTANCE_SCENES}:local', '--steps', '1', '--warmup',
                         '0', '--detect', '--batch_size', '8',
                         '--config.data.name=no_such_dataset']) == 0
  out = capsys.readouterr().out
  assert 'instances (32, 32, 1)' in out and 'vocabulary' not in out
  assert 'ex/s' in out and 'images/s' in out and '100 detections per image' in out
