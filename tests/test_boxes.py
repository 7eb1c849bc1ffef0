"""Boxes: formats round-trip, IoU and GIoU against torchvision's definitions, NMS
against the classic greedy loop."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import boxes


# ------------------------------------------------ torchvision's definitions, in numpy

def tv_box_area(b):
  return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def tv_box_iou(a, b):
  """torchvision.ops.box_iou (its `_box_inter_union`), line by line."""
  area1, area2 = tv_box_area(a), tv_box_area(b)
  lt = np.maximum(a[:, None, :2], b[:, :2])
  rb = np.minimum(a[:, None, 2:], b[:, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[:, :, 0] * wh[:, :, 1]
  union = area1[:, None] + area2 - inter
  return inter / union, union


def tv_generalized_box_iou(a, b):
  """torchvision.ops.generalized_box_iou, line by line."""
  iou, union = tv_box_iou(a, b)
  lti = np.minimum(a[:, None, :2], b[:, :2])
  rbi = np.maximum(a[:, None, 2:], b[:, 2:])
  whi = np.clip(rbi - lti, 0, None)
  areai = whi[:, :, 0] * whi[:, :, 1]
  return iou - (areai - union) / areai


def random_xyxy(rng, n, low=0.0, high=1.0):
  corner = rng.uniform(low, high, (n, 2))
  size = rng.uniform(0.01, 0.5, (n, 2)) * (high - low)
  return np.concatenate([corner, corner + size], 1)


# Identical, disjoint, nested, touching, point and line boxes, and a zero-area pair.
SPECIAL_A = np.array([[0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.8, 0.8],
                      [0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [0.2, 0.5, 0.7, 0.5],
                      [0.0, 0.0, 0.0, 0.0]])
SPECIAL_B = np.array([[0.1, 0.1, 0.4, 0.4], [0.8, 0.8, 0.9, 0.95], [0.3, 0.4, 0.5, 0.6],
                      [0.5, 0.0, 1.0, 0.5], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]])


def test_formats_round_trip_and_agree_with_a_hand_computed_box():
  rng = np.random.default_rng(0)
  xyxy = random_xyxy(rng, 10).astype(np.float32)
  for forward, backward in [(boxes.xyxy_to_xywh, boxes.xywh_to_xyxy),
                            (boxes.xyxy_to_cxcywh, boxes.cxcywh_to_xyxy),
                            (boxes.xyxy_to_yxyx, boxes.yxyx_to_xyxy)]:
    chex.assert_trees_all_close(backward(forward(xyxy)), xyxy, atol=1e-6)
  chex.assert_trees_all_close(
      boxes.normalize_xyxy(boxes.scale_xyxy(xyxy, 30, 50), 30, 50), xyxy, atol=1e-6)
  # Normalised [ymin, xmin, ymax, xmax] on a 100 x 200 image -> COCO [x, y, w, h].
  tfds_box = jnp.array([[0.1, 0.2, 0.5, 0.6]])
  chex.assert_trees_all_close(boxes.tfds_to_coco(tfds_box, 100, 200),
                              jnp.array([[40.0, 10.0, 80.0, 40.0]]), atol=1e-5)
  chex.assert_trees_all_close(boxes.coco_to_tfds(jnp.array([[40.0, 10.0, 80.0, 40.0]]),
                                                 100, 200), tfds_box, atol=1e-6)
  chex.assert_trees_all_close(boxes.xyxy_to_cxcywh(jnp.array([1.0, 2.0, 5.0, 10.0])),
                              jnp.array([3.0, 6.0, 4.0, 8.0]))
  # Leading axes broadcast, per-image sizes too.
  batch = jnp.asarray(xyxy).reshape(2, 5, 4)
  scaled = boxes.scale_xyxy(batch, jnp.array([10.0, 20.0])[:, None],
                            jnp.array([30.0, 40.0])[:, None])
  chex.assert_trees_all_close(scaled[1], batch[1] * jnp.array([40.0, 20.0, 40.0, 20.0]))


def test_iou_and_giou_are_torchvisions_on_random_and_degenerate_boxes():
  rng = np.random.default_rng(1)
  a = np.concatenate([random_xyxy(rng, 20), SPECIAL_A])
  b = np.concatenate([random_xyxy(rng, 15), SPECIAL_B, a[:3]])
  with np.errstate(invalid='ignore', divide='ignore'):
    expected = {'iou': tv_box_iou(a, b)[0], 'giou': tv_generalized_box_iou(a, b)}
  with jax.enable_x64(True):
    actual = jax.jit(lambda a, b: {'iou': boxes.iou(a, b),
                                   'giou': boxes.generalized_iou(a, b)})(a, b)
  # torchvision's 0/0 is NaN: the 3 x 2 pairs of zero-area boxes, whose union is 0.
  zero_union = np.isnan(expected['iou'])
  assert zero_union.sum() == 6 and np.all(np.isnan(expected['giou']) == zero_union)
  for name in expected:
    chex.assert_shape(actual[name], (len(a), len(b)))
    np.testing.assert_allclose(np.asarray(actual[name])[~zero_union],
                               expected[name][~zero_union], rtol=1e-12, atol=1e-15,
                               err_msg=name)
  iou, giou = np.asarray(actual['iou']), np.asarray(actual['giou'])
  # Here IoU is 0 there, and GIoU -1 but for two equal boxes (no enclosing area): 0.
  assert np.all(iou[zero_union] == 0)
  assert sorted(giou[zero_union]) == [-1, -1, -1, -1, 0, 0]
  n = 20
  assert iou[n, 15] == 1 and giou[n, 15] == 1  # identical
  assert iou[n + 1, 16] == 0 and giou[n + 1, 16] < -0.5  # far apart
  np.testing.assert_allclose(iou[n + 2, 17], 0.04 / 0.36)  # nested: |B| / |A|
  assert np.all(giou <= iou + 1e-12) and np.all(giou >= -1)
  # float32 and the elementwise form agree with the pairwise float64 values.
  np.testing.assert_allclose(boxes.generalized_iou(a.astype(np.float32), b.astype(np.float32)),
                             giou, atol=1e-5)
  paired = boxes.generalized_iou(jnp.asarray(a[:5]), jnp.asarray(b[:5]), pairwise=False)
  np.testing.assert_allclose(paired, np.diagonal(giou)[:5], atol=1e-6)


def test_gradients_are_finite_on_degenerate_boxes_and_giou_pulls_disjoint_boxes():
  @jax.jit
  def gradients(a, b, far_a, far_b):
    pairwise = {fn.__name__: jax.grad(lambda a, b, fn=fn: fn(a, b).sum(), (0, 1))(a, b)
                for fn in (boxes.iou, boxes.generalized_iou)}
    zeros = jnp.zeros((3, 4))  # padding rows against themselves
    padding = jax.value_and_grad(lambda z: boxes.generalized_iou(z, z).sum())(zeros)
    disjoint = [jax.grad(lambda x, fn=fn: fn(x, far_b, pairwise=False))(far_a)
                for fn in (boxes.iou, boxes.generalized_iou)]
    return pairwise, padding, disjoint

  pairwise, (value, grad), (iou_grad, giou_grad) = gradients(
      jnp.asarray(SPECIAL_A[:6], jnp.float32), jnp.asarray(SPECIAL_B, jnp.float32),
      jnp.array([0.0, 0.0, 0.1, 0.1]), jnp.array([0.5, 0.5, 0.6, 0.6]))
  for name, grads in pairwise.items():
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads), name
  assert value == 0 and bool(jnp.all(grad == 0))
  # Disjoint boxes: IoU gives no gradient, GIoU pulls them together.
  assert bool(jnp.all(iou_grad == 0)) and bool(giou_grad[2] > 0) and bool(giou_grad[3] > 0)


# ------------------------------------------------------------------- NMS

def greedy_nms(b, scores, classes, iou_threshold, max_outputs, score_threshold, class_wise):
  """The classic loop: in score order, keep a box unless a kept box overlaps it."""
  overlap, _ = tv_box_iou(b.astype(np.float64), b.astype(np.float64))
  keep = []
  for i in np.argsort(-scores, kind='stable'):
    if not scores[i] > score_threshold:
      continue
    if all(overlap[k, i] <= iou_threshold or (class_wise and classes[k] != classes[i])
           for k in keep):
      keep.append(i)
  return keep[:max_outputs]


def random_detections(seed, n):
  """Boxes jittered around 10 objects, so many overlap; distinct scores (no ties)."""
  rng = np.random.default_rng(seed)
  objects = random_xyxy(rng, 10, 0, 100)[rng.integers(0, 10, n)]
  size = objects[:, 2:] - objects[:, :2]
  b = objects + rng.normal(0, 0.15, (n, 4)) * np.tile(size, 2)
  b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
  scores = rng.permutation(n) / n + 0.01
  return b.astype(np.float32), scores.astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


@functools.partial(jax.jit, static_argnames=('max_outputs', 'class_wise'))
def jitted_nms(b, s, c, *, max_outputs, class_wise=True, score_threshold=0.0):
  return boxes.non_max_suppression(b, s, c, iou_threshold=0.5, max_outputs=max_outputs,
                                   score_threshold=score_threshold, class_wise=class_wise)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('class_wise', [True, False])
def test_nms_is_the_greedy_algorithm(seed, class_wise):
  b, s, c = random_detections(seed, 100)
  threshold = 0.3 if seed % 2 else 0.0
  for max_outputs in (10, 64):
    expected = greedy_nms(b, s, c, 0.5, max_outputs, threshold, class_wise)
    out = jitted_nms(b, s, c, max_outputs=max_outputs, class_wise=class_wise,
                     score_threshold=threshold)
    chex.assert_shape([out.boxes, out.scores, out.classes, out.valid, out.indices],
                      [(max_outputs, 4), (max_outputs,), (max_outputs,), (max_outputs,),
                       (max_outputs,)])
    k = len(expected)
    assert k == 10 if max_outputs == 10 else 10 < k < 64  # truncated, then padded
    np.testing.assert_array_equal(out.valid, np.arange(max_outputs) < k)
    np.testing.assert_array_equal(out.indices[:k], expected)
    np.testing.assert_array_equal(out.boxes[:k], b[expected])
    np.testing.assert_array_equal(out.scores[:k], s[expected])
    np.testing.assert_array_equal(out.classes[:k], c[expected])
    assert np.all(out.indices[k:] == -1) and np.all(out.scores[k:] == 0)
    assert np.all(out.boxes[k:] == 0) and np.all(out.classes[k:] == -1)


def test_nms_is_class_wise_and_respects_the_score_threshold():
  b = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60],
                 [0, 0, 0, 0]], jnp.float32)
  s = jnp.array([0.9, 0.8, 0.7, 0.05, jnp.nan])
  c = jnp.array([0, 1, 0, 0, 0])
  kept = lambda out: [int(i) for i, v in zip(out.indices, out.valid) if v]
  assert kept(jitted_nms(b, s, c, max_outputs=5)) == [0, 1, 3]  # box 1 is another class
  assert kept(jitted_nms(b, s, c, max_outputs=5, class_wise=False)) == [0, 3]
  assert kept(jitted_nms(b, s, c, max_outputs=5, score_threshold=0.1)) == [0, 1]
  out = jitted_nms(b, jnp.zeros(5), c, max_outputs=5)  # nothing above the threshold
  assert not out.valid.any() and np.all(out.indices == -1)
  with pytest.raises(ValueError, match=r'boxes \[N, 4\].*\(2, 5, 4\)'):
    boxes.non_max_suppression(jnp.stack([b, b]), jnp.stack([s, s]), jnp.stack([c, c]),
                              iou_threshold=0.5, max_outputs=3)


def test_nms_under_vmap_is_nms_of_each_image_and_compiles_once():
  batch = [random_detections(10 + i, 50) for i in range(3)]
  b, s, c = (np.stack(x) for x in zip(*batch))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(b, s, c):
    return jax.vmap(functools.partial(boxes.non_max_suppression, iou_threshold=0.5,
                                      max_outputs=8, score_threshold=0.0))(b, s, c)

  out = batched(b, s, c)
  batched(b + 1, s, c)  # new values, same shapes: no retrace
  chex.assert_shape(out.boxes, (3, 8, 4))
  for i in range(3):
    expected = greedy_nms(b[i], s[i], c[i], 0.5, 8, 0.0, True)
    np.testing.assert_array_equal(out.indices[i][out.valid[i]], expected)
