"""DETR: the matching is optimal, the set loss is that of the paper (against a numpy
transcription), blind to the order and the padding of the targets, finite without
objects, global over a sharded batch; the model works under the JAX transformations;
`detect` keeps the shared contract; the scenes experiment trains and evaluates."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import optimize

from vision_jax import config_lib, models, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import detr
from vision_jax.models import detr as detr_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECT_SCENES = os.path.join(REPO, 'experiments/dense/detect_scenes.py')
L, B, N, M, K = 2, 5, 6, 4, 3  # layers, images, queries, target slots, classes


def random_case(seed, counts=(2, 0, 4, 1, 3)):
  """Random outputs [L, B, N, ...] and padded targets with `counts` real objects each."""
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((L, B, N, K + 1)).astype(np.float32) * 2
  centre = rng.uniform(0.2, 0.8, (L, B, N, 2))
  size = rng.uniform(0.05, 0.5, (L, B, N, 2))
  pred_boxes = np.concatenate([centre, size], -1).astype(np.float32)
  corner = rng.uniform(0.0, 0.6, (B, M, 2))
  target_boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.4, (B, M, 2))],
                                -1).astype(np.float32)  # yxyx
  labels = rng.integers(0, K, (B, M)).astype(np.int32)
  valid = np.arange(M)[None] < np.asarray(counts)[:, None]
  # Padding as pad_sequence leaves it: zeros.
  target_boxes[~valid], labels[~valid] = 0.0, 0
  return logits, pred_boxes, labels, target_boxes, valid


_loss_and_grad = jax.jit(jax.value_and_grad(detr.set_loss, argnums=(0, 1), has_aux=True))


# ------------------------------------------------------------------ numpy transcription


def np_giou(a, b):
  """GIoU of two xyxy boxes."""
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return inter / union - (hull - union) / hull


def np_xyxy(cxcywh):
  cx, cy, w, h = cxcywh
  return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def np_cxcywh(yxyx):
  y0, x0, y1, x1 = yxyx
  return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_cost(logits, pred_boxes, labels, cxcywh):
  """The paper's matching cost [N, G] against one image's G real targets."""
  probs = np_softmax(logits.astype(np.float64))
  cost = np.zeros((len(logits), len(labels)))
  for i in range(len(logits)):
    for j in range(len(labels)):
      cost[i, j] = (-probs[i, labels[j]] + 5 * np.abs(pred_boxes[i] - cxcywh[j]).sum()
                    - 2 * np_giou(np_xyxy(pred_boxes[i]), np_xyxy(cxcywh[j])))
  return cost


def np_set_loss(logits, pred_boxes, labels, target_boxes, valid, eos_coef=0.1):
  """DETR's loss summed over the layers, written out with scipy's assignment, and
  each layer's (CE, L1, 1 - GIoU) terms."""
  num_boxes = max(valid.sum(), 1)
  total, terms = 0.0, []
  for layer in range(logits.shape[0]):
    ce_sum = ce_weight = l1 = giou = 0.0
    for b in range(logits.shape[1]):
      lg, pb = logits[layer, b].astype(np.float64), pred_boxes[layer, b].astype(np.float64)
      real = np.flatnonzero(valid[b])
      cls = labels[b, real]
      tb = np.array([np_cxcywh(t) for t in target_boxes[b, real]]).reshape(-1, 4)
      target_class = np.full(len(lg), K)
      if len(real):
        rows, cols = optimize.linear_sum_assignment(np_cost(lg, pb, cls, tb))
        for r, c in zip(rows, cols):
          target_class[r] = cls[c]
          l1 += np.abs(pb[r] - tb[c]).sum()
          giou += 1 - np_giou(np_xyxy(pb[r]), np_xyxy(tb[c]))
      log_probs = np.log(np_softmax(lg))
      weights = np.where(target_class == K, eos_coef, 1.0)
      ce_sum += -(weights * log_probs[np.arange(len(lg)), target_class]).sum()
      ce_weight += weights.sum()
    terms.append((ce_sum / ce_weight, l1 / num_boxes, giou / num_boxes))
    total += terms[-1][0] + 5 * terms[-1][1] + 2 * terms[-1][2]
  return total, terms


# ------------------------------------------------------------------ matching and loss


def test_matching_equals_scipy_linear_sum_assignment():
  logits, pred_boxes, labels, target_boxes, valid = random_case(0)
  labels_c, cxcywh, valid_c = detr.clean_targets(labels, target_boxes, valid)
  cost = np.asarray(detr.matching_cost(logits[-1], pred_boxes[-1], labels_c, cxcywh))
  found = jax.jit(detr.match)(logits[-1], pred_boxes[-1], labels_c, cxcywh, valid_c)
  target_index = np.asarray(found.target_index)
  for b in range(B):
    real = np.flatnonzero(valid[b])
    rows, cols = optimize.linear_sum_assignment(cost[b][:, real])
    expected = np.full(N, -1)
    expected[rows] = real[cols]
    np.testing.assert_array_equal(target_index[b], expected, err_msg=f'image {b}')
    # The cost is the paper's, entry by entry.
    np.testing.assert_allclose(
        cost[b][:, real], np_cost(logits[-1, b], pred_boxes[-1, b], labels[b, real],
                                  np.array([np_cxcywh(t) for t in target_boxes[b, real]]
                                           ).reshape(-1, 4)), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(found.matched), target_index >= 0)
  assert np.asarray(found.matched).sum() == valid.sum()


def test_loss_equals_a_numpy_transcription():
  case = random_case(1)
  (loss, terms), _ = _loss_and_grad(*case)
  expected, layers = np_set_loss(*case)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  # The terms reported are the last layer's (the auxiliary layers' differ).
  for key, value in zip(('loss_ce', 'loss_bbox', 'loss_giou'), layers[-1]):
    np.testing.assert_allclose(float(terms[key]), value, rtol=2e-5)
  assert not np.allclose(layers[0], layers[-1])
  assert float(terms['num_boxes']) == case[-1].sum()


def test_loss_is_blind_to_target_order_and_padding_content():
  logits, pred_boxes, labels, target_boxes, valid = random_case(2)
  (loss, terms), grads = _loss_and_grad(logits, pred_boxes, labels, target_boxes, valid)
  rng = np.random.default_rng(3)
  perm = np.stack([rng.permutation(M) for _ in range(B)])  # padding slots move too
  take = lambda x: np.take_along_axis(x, perm.reshape(*perm.shape, *[1] * (x.ndim - 2)), 1)
  labels2, boxes2, valid2 = take(labels), take(target_boxes), take(valid)
  boxes2[~valid2] = np.where(rng.random(boxes2[~valid2].shape) < 0.5, np.nan, 7.0)
  labels2[~valid2] = rng.integers(-5, 99, (~valid2).sum())  # out of range, even
  (loss2, terms2), grads2 = _loss_and_grad(logits, pred_boxes, labels2, boxes2, valid2)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  for key in terms:
    np.testing.assert_allclose(float(terms2[key]), float(terms[key]), rtol=1e-6, atol=1e-7)
  for g, g2 in zip(grads, grads2):
    assert np.all(np.isfinite(g2))
    np.testing.assert_allclose(g2, g, rtol=1e-5, atol=1e-7)
  # Not vacuous: moving a real object does change the loss.
  moved = target_boxes.copy()
  moved[valid] = np.clip(moved[valid] + 0.1, 0, 1)
  (loss3, _), _ = _loss_and_grad(logits, pred_boxes, labels, moved, valid)
  assert abs(float(loss3) - float(loss)) > 1e-3


def test_loss_is_finite_without_objects():
  logits, pred_boxes, labels, target_boxes, valid = random_case(4, counts=(0,) * B)
  (loss, terms), grads = _loss_and_grad(logits, pred_boxes, labels, target_boxes, valid)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in grads)
  assert float(terms['loss_bbox']) == 0.0 and float(terms['loss_giou']) == 0.0
  assert not np.any(np.asarray(grads[1]))  # no box is trained
  # Every query is 'no object': the cross-entropy of class K, summed over the layers.
  expected = -jax.nn.log_softmax(logits)[..., K].mean(axis=(1, 2)).sum()
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  np.testing.assert_allclose(float(loss), np_set_loss(logits, pred_boxes, labels,
                                                      target_boxes, valid)[0], rtol=2e-5)


def test_loss_is_global_over_a_sharded_batch():
  """Image b's objects weigh by the batch's count, whatever device holds it: the loss
  on a batch split over 5 devices equals the loss on one."""
  devices = jax.devices()[:B]
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  layer_sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))
  case = random_case(5)
  put = [jax.device_put(x, layer_sharded if i < 2 else sharded) for i, x in enumerate(case)]
  loss = jax.jit(lambda *a: detr.set_loss(*a)[0])(*put)
  np.testing.assert_allclose(float(loss), float(_loss_and_grad(*case)[0][0]), rtol=1e-6)


# ------------------------------------------------------------------ model and detect


def tiny_model(**overrides):
  return models.get_model(ml_collections.ConfigDict(detr_model.TINY), num_classes=K,
                          **overrides)


def test_model_outputs_every_layer_and_works_under_grad_jvp_and_vmap():
  model = tiny_model()
  images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)
  apply = jax.jit(model.apply)
  out = apply(variables, images)
  layers, queries = detr_model.TINY['num_decoder_layers'], detr_model.TINY['num_queries']
  assert out['logits'].shape == (layers, 3, queries, K + 1)
  assert out['boxes'].shape == (layers, 3, queries, 4)
  assert out['logits'].dtype == out['boxes'].dtype == jnp.float32
  assert np.all((out['boxes'] > 0) & (out['boxes'] < 1))

  def f(x):
    o = model.apply(variables, x)
    return jnp.sum(o['logits'] ** 2) + jnp.sum(o['boxes'])

  tangent = jax.random.normal(jax.random.key(2), images.shape)

  @jax.jit
  def transformed(x):
    grad = jax.grad(f)(x)
    _, derivative = jax.jvp(f, (x,), (tangent,))
    # Eval mode computes each image on its own: vmap over single images is the batch.
    single = jax.vmap(lambda image: jax.tree.map(lambda a: a[:, 0],
                                                 model.apply(variables, image[None])))(x)
    return grad, derivative, single

  grad, derivative, single = transformed(images)
  assert grad.shape == images.shape and np.all(np.isfinite(grad)) and np.any(grad)
  np.testing.assert_allclose(derivative, jnp.vdot(grad, tangent), rtol=2e-3, atol=1e-4)
  for key in out:
    np.testing.assert_allclose(jnp.moveaxis(single[key], 0, 1), out[key], atol=1e-5)


def test_detect_keeps_the_contract():
  logits, pred_boxes = random_case(6)[:2]
  det = detr.detections(jnp.asarray(logits[-1]), jnp.asarray(pred_boxes[-1]))
  assert set(det) == {'boxes', 'scores', 'classes', 'valid'}
  assert det['boxes'].shape == (B, N, 4) and det['scores'].shape == (B, N)
  assert det['classes'].dtype == jnp.int32 and det['valid'].dtype == jnp.bool_
  assert np.all(det['valid'])
  scores = np.asarray(det['scores'])
  assert np.all(np.diff(scores, axis=1) <= 0)  # descending
  probs = np_softmax(logits[-1].astype(np.float64))[..., :K]
  np.testing.assert_allclose(np.sort(scores, 1), np.sort(probs.max(-1), 1), rtol=1e-5)
  for b in range(B):  # each detection is some query's: its class, its box as yxyx
    for d in range(N):
      i = int(np.argmin(np.abs(probs[b].max(-1) - scores[b, d])))
      assert det['classes'][b, d] == probs[b, i].argmax()
      cx, cy, w, h = pred_boxes[-1, b, i]
      expected = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0, 1)
      np.testing.assert_allclose(det['boxes'][b, d], expected, atol=1e-6)


# ------------------------------------------------------------------ the experiment


def test_detect_scenes_detr_local_trains_and_evaluates(tmp_path, scenes_data_dir):
  config = config_lib.load_config(DETECT_SCENES + ':arch=detr,local')
  assert config.method == 'detr' and config.model.name == 'detr'
  # Two steps on one device and the final evaluation: compiling is what costs.
  config_lib.apply_overrides(config, {'data.data_dir': scenes_data_dir, 'total_steps': '2',
                                      'checkpoint_every_steps': '2',
                                      'evals.test.num_figure_images': '2'})
  results = train.train_and_evaluate(config, str(tmp_path), num_devices=1)
  assert results['test/num_examples'] == 24  # the fixture's test split
  assert results['test/num_detections'] == 24 * config.model.num_queries
  for key in ('AP', 'AP50', 'AP75', 'AR100'):
    assert 0.0 <= results[f'test/{key}'] <= 1.0
  assert results['test/AP_medium'] == -1.0  # 32x32: every object is COCO-small
  assert os.path.getsize(tmp_path / 'test' / 'detections_test.json') > 0


def test_the_recipe():
  config = config_lib.load_config(DETECT_SCENES + ':arch=detr')
  assert config.optimizer.name == 'adamw' and config.optimizer.grad_clip_norm == 0.1
  assert 'flip_lr(boxes=' in config.data.pp_train
  assert config.model.num_queries > 4  # scenes hold up to 4 objects
  assert tuple(config.detr.class_names) == ('circle', 'square', 'triangle', 'star', 'cross')


def test_missing_class_names_is_an_error():
  config = config_lib.load_config(DETECT_SCENES + ':arch=detr,local')
  config.detr.class_names = ()
  with pytest.raises(config_lib.ConfigError, match='class_names'):
    detr.Method(config, DatasetInfo('scenes/multi', {'train': 1}, None, None),
                total_steps=1, steps_per_epoch=1)
