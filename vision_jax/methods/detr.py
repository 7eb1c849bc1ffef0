"""DETR (Carion et al., 2020): set prediction trained through a Hungarian matching.

The model (`vision_jax.models.detr`) predicts N (class, box) pairs per image at every
decoder layer. For each image and each layer the N predictions are matched one-to-one
to the image's real targets at minimum total cost (`matching.hungarian_match`, under
`stop_gradient`, vmapped over layers and images), with the paper's cost

  C[i, j] = -class_weight p_i(c_j) + bbox_weight |b_i - b_j|_1 - giou_weight GIoU(b_i, b_j)

(p_i the softmax of prediction i, boxes as normalised cx, cy, w, h for the L1 term and
corners for GIoU; weights 1, 5 and 2). Padded target slots take an upper-bound cost
and are never matched. Then, per layer,

  loss = ce_weight CE + bbox_weight L1 + giou_weight (1 - GIoU)

with CE the cross-entropy of every prediction against its matched class or 'no object'
(index K), weighted 1 for classes and `eos_coef` = 0.1 for 'no object', and normalised
by the sum of those weights over the global batch (PyTorch DETR's weighted mean); L1
and 1 - GIoU are summed over the matched pairs and divided by the number of real boxes
in the global batch (at least 1). Under the trainer's jit over globally sharded arrays
these sums are global, so no all-reduce is written out. With `aux_loss` every decoder
layer adds its own loss (each with its own matching), as in the paper.

A training batch holds `image`, the padded boxes `boxes_key` [B, M, 4] (TFDS's
normalised [ymin, xmin, ymax, xmax], 'objects/bbox'), their classes `classes_key` [B, M]
('objects/label'; on `scenes` pp copies `objects/shape` there) and the mask of the real
ones `objects_mask_key` [B, M] ('objects_mask', what `pad_sequence(M, 'objects')`
writes): the keys and their defaults of `vision_jax.methods.detection`. Padding slots
may hold anything: they are replaced before any arithmetic.

Predictions: `detect` (the detection contract of `vision_jax.methods.detection`:
`boxes` [B, N, 4] normalised yxyx clipped to the image, `scores` [B, N] the highest
class probability other than 'no object', in descending order, `classes` [B, N] int32
its class, `valid` [B, N] all True; every query is a detection and there is no NMS, as
the set loss teaches one query per object) and `predict` (the last layer's raw
outputs).
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import boxes as box_lib
from vision_jax import config_lib, matching, models
from vision_jax.methods import base

# A stand-in box for padding slots (cx, cy, w, h): finite, of positive size.
_PAD_BOX = (0.5, 0.5, 0.5, 0.5)


def yxyx_to_cxcywh(boxes: jax.Array) -> jax.Array:
  return box_lib.xyxy_to_cxcywh(box_lib.yxyx_to_xyxy(boxes))


def clean_targets(labels, target_boxes, valid):
  """Targets with the padding slots' content replaced (class 0, `_PAD_BOX`), so that
  neither values nor gradients ever see what the padding held; boxes as cxcywh."""
  valid = jnp.asarray(valid, bool)
  labels = jnp.where(valid, jnp.asarray(labels).astype(jnp.int32), 0)
  cxcywh = yxyx_to_cxcywh(jnp.asarray(target_boxes, jnp.float32))
  cxcywh = jnp.where(valid[..., None], cxcywh, jnp.asarray(_PAD_BOX, cxcywh.dtype))
  return labels, cxcywh, valid


def matching_cost(logits, pred_boxes, labels, target_boxes, *, class_weight: float = 1.0,
                  bbox_weight: float = 5.0, giou_weight: float = 2.0) -> jax.Array:
  """DETR's matching cost [..., N, M] of predictions (`logits` [..., N, K + 1], boxes
  [..., N, 4] cxcywh) against targets (`labels` [..., M], boxes [..., M, 4] cxcywh)."""
  probs = jax.nn.softmax(logits, axis=-1)
  index = jnp.broadcast_to(labels[..., None, :], (*probs.shape[:-1], labels.shape[-1]))
  cost_class = -jnp.take_along_axis(probs, index, axis=-1)
  cost_bbox = jnp.abs(pred_boxes[..., :, None, :] - target_boxes[..., None, :, :]).sum(-1)
  cost_giou = -box_lib.generalized_iou(box_lib.cxcywh_to_xyxy(pred_boxes),
                                       box_lib.cxcywh_to_xyxy(target_boxes))
  return class_weight * cost_class + bbox_weight * cost_bbox + giou_weight * cost_giou


def match(logits, pred_boxes, labels, target_boxes, valid, **cost_weights
          ) -> matching.Matching:
  """Hungarian matching of each image: inputs with any leading axes [..., N, ...] and
  [..., M, ...] (cleaned targets); the matching is not differentiated."""
  cost = matching_cost(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(pred_boxes),
                       labels, target_boxes, **cost_weights)
  lead = cost.shape[:-2]
  valid = jnp.broadcast_to(valid, (*lead, valid.shape[-1]))
  flat = jax.vmap(matching.hungarian_match)(cost.reshape(-1, *cost.shape[-2:]),
                                            valid.reshape(-1, valid.shape[-1]))
  return jax.tree.map(lambda x: x.reshape(*lead, x.shape[-1]), flat)


def set_loss(logits, pred_boxes, labels, target_boxes, valid, *, eos_coef: float = 0.1,
             class_weight: float = 1.0, bbox_weight: float = 5.0, giou_weight: float = 2.0,
             aux_loss: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DETR's loss (see the module docstring) and its terms.

  Args:
    logits: [L, B, N, K + 1], every decoder layer's class logits, 'no object' last.
    pred_boxes: [L, B, N, 4] normalised cx, cy, w, h.
    labels: [B, M] integer classes of the target slots.
    target_boxes: [B, M, 4] normalised [ymin, xmin, ymax, xmax].
    valid: [B, M] bool, False for padding slots (their content is ignored).
    eos_coef: the 'no object' class's weight in the cross-entropy.
    class_weight, bbox_weight, giou_weight: the weights of the matching cost and of the
      loss (the paper's 1, 5, 2; the cross-entropy's loss weight is class_weight too).
    aux_loss: add every earlier decoder layer's loss; else the last layer's only.

  Returns:
    `(loss, terms)`: the total over the layers used, and the last layer's unweighted
    `loss_ce`, `loss_bbox`, `loss_giou`, `class_accuracy` (of the matched predictions),
    `matched_iou` (their mean IoU) and `num_boxes` (the real targets of the batch).
  """
  if not aux_loss:
    logits, pred_boxes = logits[-1:], pred_boxes[-1:]
  num_classes = logits.shape[-1] - 1
  labels, cxcywh, valid = clean_targets(labels, target_boxes, valid)
  weights = dict(class_weight=class_weight, bbox_weight=bbox_weight, giou_weight=giou_weight)
  m = match(logits, pred_boxes, labels, cxcywh, valid, **weights)  # [L, B, N]
  index = jnp.maximum(m.target_index, 0)
  take = jax.vmap(jax.vmap(lambda x, i: x[i]), in_axes=(None, 0))  # over layers, images
  matched_labels = take(labels, index)  # [L, B, N]
  matched_boxes = take(cxcywh, index)  # [L, B, N, 4]
  is_matched = m.matched.astype(jnp.float32)

  target_classes = jnp.where(m.matched, matched_labels, num_classes)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, target_classes[..., None], axis=-1)[..., 0]
  class_weights = jnp.where(m.matched, 1.0, eos_coef)
  loss_ce = (nll * class_weights).sum((1, 2)) / class_weights.sum((1, 2))  # [L]

  num_boxes = jnp.maximum(valid.astype(jnp.float32).sum(), 1.0)
  l1 = jnp.abs(pred_boxes - matched_boxes).sum(-1)
  pred_xyxy = box_lib.cxcywh_to_xyxy(pred_boxes)
  target_xyxy = box_lib.cxcywh_to_xyxy(matched_boxes)
  giou = box_lib.generalized_iou(pred_xyxy, target_xyxy, pairwise=False)
  loss_bbox = (l1 * is_matched).sum((1, 2)) / num_boxes
  loss_giou = ((1.0 - giou) * is_matched).sum((1, 2)) / num_boxes
  per_layer = class_weight * loss_ce + bbox_weight * loss_bbox + giou_weight * loss_giou

  matched_count = jnp.maximum(is_matched[-1].sum(), 1.0)
  correct = (jnp.argmax(logits[-1], -1) == matched_labels[-1]) * is_matched[-1]
  iou = box_lib.iou(pred_xyxy[-1], target_xyxy[-1], pairwise=False)
  terms = {'loss_ce': loss_ce[-1], 'loss_bbox': loss_bbox[-1], 'loss_giou': loss_giou[-1],
           'class_accuracy': correct.sum() / matched_count,
           'matched_iou': (iou * is_matched[-1]).sum() / matched_count,
           'num_boxes': valid.astype(jnp.float32).sum()}
  return per_layer.sum(), terms


def detections(logits, pred_boxes):
  """The detection contract from one layer's outputs [B, N, K + 1] and [B, N, 4]
  (cxcywh), the N queries of each image sorted by descending score."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., :-1]
  yxyx = box_lib.xyxy_to_yxyx(box_lib.cxcywh_to_xyxy(pred_boxes.astype(jnp.float32)))
  scores = probs.max(-1)
  order = jnp.argsort(-scores, axis=-1)
  sort = lambda x: jnp.take_along_axis(x, order.reshape(*order.shape, *[1] * (x.ndim - 2)),
                                       axis=1)
  return {'boxes': sort(jnp.clip(yxyx, 0.0, 1.0)), 'scores': sort(scores),
          'classes': sort(probs.argmax(-1).astype(jnp.int32)),
          'valid': jnp.ones(scores.shape, bool)}


class Method(base.Method):
  """Trains `config.model` (a 'detr') on padded boxes (see the module docstring).

  Options: `class_names` (the K object classes, e.g. `scenes.SHAPES`) or `num_classes`,
  the batch keys `boxes_key`, `classes_key`, `objects_mask_key`, the cost and loss weights
  `class_weight`, `bbox_weight`, `giou_weight`, `eos_coef` and `aux_loss`.

  Attributes:
    num_classes: K.
    class_names: their names.
    model: the DETR model, built with `num_classes`.
  """
  name = 'detr'
  OPTIONS = {'class_names': (), 'num_classes': config_lib.placeholder(int),
             'boxes_key': 'objects/bbox', 'classes_key': 'objects/label',
             'objects_mask_key': 'objects_mask', 'class_weight': 1.0, 'bbox_weight': 5.0,
             'giou_weight': 2.0, 'eos_coef': 0.1, 'aux_loss': True}
  PREDICTIONS = ('detect', 'predict')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    self.num_classes, self.class_names = base.named_classes('detr', self.options)
    self.model = models.get_model(config.model, num_classes=self.num_classes,
                                  dtype=self.compute_dtype)

  def _targets(self, batch):
    o = self.options
    for key in (o.boxes_key, o.classes_key, o.objects_mask_key):
      if key not in batch:
        raise KeyError(f'detr: the training batch has no {key!r} (it has {sorted(batch)}); '
                       "pad the objects with pad_sequence(M, 'objects') in pp")
    return batch[o.classes_key], batch[o.boxes_key], batch[o.objects_mask_key]

  def synthetic_batch(self, batch_size, input_shape, rng):
    """Random images and 1 to 4 random boxes with classes, padded to 4 slots."""
    slots = 4
    corner = rng.uniform(0.0, 0.6, (batch_size, slots, 2))
    size = rng.uniform(0.1, 0.4, (batch_size, slots, 2))
    count = rng.integers(1, slots + 1, batch_size)
    o = self.options
    return {'image': rng.standard_normal((batch_size, *input_shape), np.float32),
            o.boxes_key: np.concatenate([corner, corner + size], -1).astype(np.float32),
            o.classes_key: rng.integers(0, self.num_classes, (batch_size, slots), np.int32),
            o.objects_mask_key: np.arange(slots)[None] < count[:, None]}

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    outputs, model_state = base.apply_model(self.model, params, model_state,
                                            batch['image'], train=True, rng=rng)
    labels, target_boxes, valid = self._targets(batch)
    o = self.options
    loss, terms = set_loss(outputs['logits'], outputs['boxes'], labels, target_boxes, valid,
                           eos_coef=o.eos_coef, class_weight=o.class_weight,
                           bbox_weight=o.bbox_weight, giou_weight=o.giou_weight,
                           aux_loss=o.aux_loss)
    return loss, (terms, model_state)

  def predict(self, state, batch):
    """The last decoder layer's `logits` [B, N, K + 1] and `boxes` [B, N, 4] (cxcywh)."""
    outputs, _ = base.apply_model(self.model, state.params, state.model_state,
                                  batch['image'], train=False)
    return {k: v[-1] for k, v in outputs.items()}

  def detect(self, state, batch):
    """`boxes` [B, N, 4] yxyx, `scores`, `classes`, `valid` [B, N] (module docstring)."""
    outputs = self.predict(state, batch)
    return detections(outputs['logits'], outputs['boxes'])
