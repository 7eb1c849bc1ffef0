"""Bounding boxes as pure jnp functions: formats, areas, IoU and GIoU, batched NMS.

The data hold TFDS boxes, normalised [ymin, xmin, ymax, xmax]; COCO files hold pixel
[x, y, width, height]; DETR predicts normalised centres [cx, cy, w, h]; IoU and GIoU
are defined on corners [x1, y1, x2, y2] (torchvision's `box_iou` and
`generalized_box_iou`). Every function takes boxes in the last axis [..., 4], so it
jits, vmaps and broadcasts over leading axes.

Padding rows are zero-area boxes: IoU and GIoU define 0/0 as 0 (torchvision gives
NaN), with guarded divisions, so neither the values nor the gradients turn NaN.
Corner boxes are assumed ordered (x1 <= x2, y1 <= y2), as torchvision and DETR assume;
boxes made by `cxcywh_to_xyxy` from non-negative sizes are.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _split(boxes: jax.Array) -> tuple[jax.Array, ...]:
  return tuple(boxes[..., i] for i in range(4))


def yxyx_to_xyxy(boxes: jax.Array) -> jax.Array:
  """[ymin, xmin, ymax, xmax] -> [xmin, ymin, xmax, ymax]; its own inverse."""
  return boxes[..., jnp.array([1, 0, 3, 2])]


xyxy_to_yxyx = yxyx_to_xyxy


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
  """Corners -> COCO's [x, y, width, height] (top-left corner and size)."""
  x1, y1, x2, y2 = _split(boxes)
  return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  x, y, w, h = _split(boxes)
  return jnp.stack([x, y, x + w, y + h], axis=-1)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """Corners -> [centre x, centre y, width, height] (DETR's box parametrisation)."""
  x1, y1, x2, y2 = _split(boxes)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  cx, cy, w, h = _split(boxes)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _xy_scale(height, width) -> jax.Array:
  return jnp.stack(jnp.broadcast_arrays(jnp.asarray(width), jnp.asarray(height)) * 2, -1)


def scale_xyxy(boxes: jax.Array, height, width) -> jax.Array:
  """Normalised corners [x1, y1, x2, y2] -> pixels of an image of (height, width);
  `height` and `width` broadcast against `boxes[..., 0]`."""
  return boxes * _xy_scale(height, width)


def normalize_xyxy(boxes: jax.Array, height, width) -> jax.Array:
  """Pixel corners -> normalised ones, the inverse of `scale_xyxy`."""
  return boxes / _xy_scale(height, width)


def tfds_to_coco(boxes: jax.Array, height, width) -> jax.Array:
  """Normalised [ymin, xmin, ymax, xmax] -> COCO pixel [x, y, width, height]."""
  return xyxy_to_xywh(scale_xyxy(yxyx_to_xyxy(boxes), height, width))


def coco_to_tfds(boxes: jax.Array, height, width) -> jax.Array:
  """COCO pixel [x, y, width, height] -> normalised [ymin, xmin, ymax, xmax]."""
  return xyxy_to_yxyx(normalize_xyxy(xywh_to_xyxy(boxes), height, width))


def area(boxes: jax.Array) -> jax.Array:
  """(x2 - x1) (y2 - y1) of corner boxes [..., 4] -> [...] (torchvision's box_area)."""
  x1, y1, x2, y2 = _split(boxes)
  return (x2 - x1) * (y2 - y1)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, and 0 where the denominator is 0, with finite gradients
  (the division never sees a zero, so its gradient is never inf * 0)."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


def _pairs(a: jax.Array, b: jax.Array, pairwise: bool) -> tuple[jax.Array, jax.Array]:
  if pairwise:  # [..., N, 4] and [..., M, 4] -> [..., N, M, 4] each, by broadcasting.
    return a[..., :, None, :], b[..., None, :, :]
  return a, b


def _iou_and_union(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt, 0)
  intersection = wh[..., 0] * wh[..., 1]
  union = area(a) + area(b) - intersection
  return _safe_divide(intersection, union), union


def iou(a: jax.Array, b: jax.Array, *, pairwise: bool = True) -> jax.Array:
  """Intersection over union of corner boxes, torchvision's `box_iou`.

  Pairwise, a [..., N, 4] and b [..., M, 4] give [..., N, M]; with `pairwise=False`,
  boxes of one shape [..., 4] give [...] (e.g. predictions and their matched targets).
  Two boxes with zero union (padding) have IoU 0.
  """
  return _iou_and_union(*_pairs(a, b, pairwise))[0]


def generalized_iou(a: jax.Array, b: jax.Array, *, pairwise: bool = True) -> jax.Array:
  """GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest box enclosing both
  (Rezatofighi et al. 2019), torchvision's `generalized_box_iou`; in [-1, 1].

  Shapes as for `iou`. Where C has zero area (both boxes the same point or line) the
  penalty is 0, so GIoU is the IoU, 0.
  """
  a, b = _pairs(a, b, pairwise)
  overlap, union = _iou_and_union(a, b)
  lt = jnp.minimum(a[..., :2], b[..., :2])
  rb = jnp.maximum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt, 0)
  enclosing = wh[..., 0] * wh[..., 1]
  return overlap - _safe_divide(enclosing - union, enclosing)


class Detections(NamedTuple):
  """Fixed-length detections; rows where `valid` is False are padding.

  Attributes:
    boxes: [K, 4] the kept boxes, in the format they came in (padding: zeros).
    scores: [K], in descending order over the valid rows (padding: 0).
    classes: [K] int32 (padding: -1).
    valid: [K] bool, True for the first `num_kept` rows.
    indices: [K] int32, the kept boxes' rows in the input (padding: -1), to gather
      other per-box outputs such as masks.
  """
  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array
  indices: jax.Array


def non_max_suppression(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *,
                        iou_threshold: float, max_outputs: int,
                        score_threshold: float = float('-inf'),
                        class_wise: bool = True) -> Detections:
  """Greedy non-maximum suppression with a fixed output shape, for jit and vmap.

  The classic algorithm: among the boxes with score > `score_threshold` not yet kept
  nor suppressed, keep the highest-scoring one (ties: the lowest index) and suppress
  every box whose IoU with it is > `iou_threshold`; repeat `max_outputs` times.
  Class-wise, a box suppresses only boxes of its own class (the IoU matrix is masked
  by class), which equals per-class NMS followed by a merge in score order, like
  torchvision's `batched_nms` then the top `max_outputs`. Each step costs one row of
  IoUs, O(N), so no [N, N] matrix is built. NaN scores never count as kept.

  Args:
    boxes: [N, 4] corner boxes, xyxy or yxyx (IoU does not depend on which).
    scores: [N].
    classes: [N] integer class of each box.
    iou_threshold: suppress boxes overlapping a kept one by more than this.
    max_outputs: K, the number of rows returned.
    score_threshold: boxes scoring at most this are never kept.
    class_wise: if False, boxes of any class suppress each other.

  Returns:
    `Detections` of K rows; vmap over a batch for [B, K, ...].
  """
  boxes, scores, classes = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes)
  n = boxes.shape[0]
  if boxes.shape != (n, 4) or scores.shape != (n,) or classes.shape != (n,):
    raise ValueError('non_max_suppression needs boxes [N, 4], scores [N] and classes [N], '
                     f'got {boxes.shape}, {scores.shape} and {classes.shape} (vmap for a '
                     'batch)')
  scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
  classes = classes.astype(jnp.int32)
  rows = jnp.arange(n)

  def step(candidates, _):
    best = jnp.argmax(jnp.where(candidates, scores, -jnp.inf))
    found = candidates[best]
    overlap = iou(boxes[best], boxes, pairwise=False)
    suppressed = overlap > iou_threshold
    if class_wise:
      suppressed &= classes == classes[best]
    candidates = candidates & ~suppressed & (rows != best)
    return candidates, (jnp.where(found, best, -1), found)

  candidates = scores > score_threshold  # False for NaN scores too.
  _, (indices, valid) = jax.lax.scan(step, candidates, None, length=max_outputs)
  safe = jnp.maximum(indices, 0)
  return Detections(
      boxes=jnp.where(valid[:, None], boxes[safe], 0),
      scores=jnp.where(valid, scores[safe], 0),
      classes=jnp.where(valid, classes[safe], -1),
      valid=valid,
      indices=indices.astype(jnp.int32))
