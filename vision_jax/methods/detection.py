r"""Object detection with FCOS (Tian et al. 2019): dense per-location classification,
box regression and centerness, trained with focal, GIoU and BCE losses.

`config.method = 'detection'`, `config.model.name = 'fcos'` (`vision_jax.models.fcos`).

Batches. `image` [B, H, W, C] and the objects padded to a fixed count G
(`pad_sequence(G, 'objects')` in pp): `boxes_key` [B, G, 4] normalised [ymin, xmin, ymax,
xmax] (TFDS's BBox), `classes_key` [B, G] class indices 0..K-1, `objects_mask_key`
[B, G] bool (False for padding) and optionally `crowd_key` [B, G] bool (COCO's crowd
regions, never assigned, like padding). On `scenes` the class is the shape:
`copy('objects/shape', 'objects/label')` in pp, or `detection.classes_key='objects/shape'`.

Target assignment (`assign_targets`, per image, under vmap). Location (y, x) of a level
with stride s is a candidate for a real box when it lies strictly inside the box, or with
`center_sampling_radius` r > 0 inside the box's central square of half-side r * s
clipped to the box (the later version's centre sampling), and when its largest
distance to the box's sides, max(l, t, r, b), lies in the level's range
[lower, upper]. Ranges: the level boundaries `regression_bounds` (pixels, one fewer
than the levels), by default 8 s per level (the paper's 64, 128, 256, 512 for strides
8..64): level i takes [bound_{i-1}, bound_i], the first from 0, the last to infinity.
A location with several candidate boxes takes the smallest (by area; ties: the
earlier box). Its targets are the box's class, its distances (l, t, r, b) in pixels
and the centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)).

Loss, each term normalised over the global batch (under jit over data-sharded arrays a
plain sum is global; nothing is averaged per device):
  focal      sigmoid focal loss (alpha 0.25, gamma 2) over every location and class,
             summed, divided by max(1, number of positive locations);
  giou       1 - GIoU of the predicted and target boxes of the positive locations,
             weighted by their centerness targets, divided by the targets' sum;
  centerness binary cross-entropy of the centerness logits against the targets on the
             positive locations, divided by max(1, positives).
The loss is their sum. A batch without objects has loss = the focal term alone, finite,
with finite gradients.

Prediction `detect(state, batch)`, the contract every detector of the project shares
(the detection evaluator and `vision_jax.detect` rely on nothing else):
  {'boxes'   [B, D, 4] normalised [ymin, xmin, ymax, xmax] (clipped to the image),
   'scores'  [B, D] descending over the valid rows,
   'classes' [B, D] int32 (-1 for padding),
   'valid'   [B, D] bool}
with D = `max_detections`; a detector may add 'masks' [B, D, H, W] (probabilities or
0/1) for instance segmentation. FCOS scores each (location, class) pair by
sqrt(sigmoid(class logit) * sigmoid(centerness logit)), keeps the `pre_nms_top_k` best
pairs of each image, and runs class-wise non-maximum suppression
(`boxes.non_max_suppression`, IoU above `nms_iou_threshold` suppresses, scores at most
`score_threshold` are dropped), vmapped over the batch. `predict` gives the model's
raw dense outputs (see `vision_jax.models.fcos`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import boxes as box_ops
from vision_jax import config_lib, models
from vision_jax.methods import base
from vision_jax.models import fcos


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Element-wise FL(p_t) = -alpha_t (1 - p_t)**gamma log(p_t) (Lin et al. 2017), with
  p = sigmoid(logits), p_t = p for targets 1 and 1 - p for targets 0, alpha_t = alpha
  and 1 - alpha likewise; alpha < 0 leaves alpha_t out. log(p_t) comes from
  `log_sigmoid`, so large logits stay finite."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = targets.astype(logits.dtype)
  p = jax.nn.sigmoid(logits)
  cross_entropy = -(targets * jax.nn.log_sigmoid(logits)
                    + (1 - targets) * jax.nn.log_sigmoid(-logits))
  p_t = targets * p + (1 - targets) * (1 - p)
  loss = cross_entropy * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (targets * alpha + (1 - targets) * (1 - alpha))
  return loss


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-(t log sigmoid(x) + (1 - t) log sigmoid(-x)), element-wise."""
  return -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))


def level_ranges(strides: np.ndarray, levels: np.ndarray, bounds=()) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """`(lower [L], upper [L])`: the range of max(l, t, r, b) of each location's level.

  `strides` and `levels` [L] are the locations' strides and level indices (from
  `fcos.geometry`); `bounds` the boundaries between consecutive levels in pixels
  (one fewer than the levels), by default 8 times each level's stride but the last's.
  """
  num_levels = int(levels.max()) + 1
  level_stride = np.array([strides[levels == i][0] for i in range(num_levels)])
  bounds = (np.asarray(bounds, np.float32) if len(bounds)
            else 8.0 * level_stride[:-1].astype(np.float32))
  if len(bounds) != num_levels - 1 or np.any(np.diff(bounds) <= 0):
    raise config_lib.ConfigError(
        f'detection.regression_bounds must be {num_levels - 1} increasing boundaries '
        f'between the {num_levels} levels (pixels), got {tuple(bounds)}')
  edges = np.concatenate([[0.0], bounds, [np.inf]]).astype(np.float32)
  return edges[levels], edges[levels + 1]


def assign_targets(locations, strides, lower, upper, gt_boxes, gt_classes, gt_valid, *,
                   center_sampling_radius: float = 1.5) -> dict[str, jax.Array]:
  """FCOS targets of one image (vmap for a batch; see the module docstring).

  Args:
    locations: [L, 2] (y, x) of the locations in pixels.
    strides: [L] each location's stride.
    lower: [L] the least max(l, t, r, b) each location may regress.
    upper: [L] the most.
    gt_boxes: [G, 4] pixel [ymin, xmin, ymax, xmax].
    gt_classes: [G] class indices.
    gt_valid: [G] bool; False rows (padding, crowd) are never assigned.
    center_sampling_radius: r, in strides; 0 for the whole box.

  Returns:
    `positive` [L] bool, `box_index` [L] int32 (the assigned box, -1 for negatives),
    `classes` [L] int32 (-1 for negatives), `ltrb` [L, 4] pixel distances to the
    assigned box (1 for negatives, so that boxes built from them are never empty) and
    `centerness` [L] (0 for negatives).
  """
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  y, x = locations[:, 0:1], locations[:, 1:2]  # [L, 1]
  ymin, xmin, ymax, xmax = (gt_boxes[None, :, i] for i in range(4))  # [1, G]
  ltrb = jnp.stack([x - xmin, y - ymin, xmax - x, ymax - y], axis=-1)  # [L, G, 4]
  if center_sampling_radius > 0:
    radius = center_sampling_radius * strides[:, None]
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    inside = jnp.minimum(
        jnp.minimum(x - jnp.maximum(cx - radius, xmin), y - jnp.maximum(cy - radius, ymin)),
        jnp.minimum(jnp.minimum(cx + radius, xmax) - x, jnp.minimum(cy + radius, ymax) - y)
    ) > 0
  else:
    inside = ltrb.min(-1) > 0
  reach = ltrb.max(-1)
  candidate = (inside & (reach >= lower[:, None]) & (reach <= upper[:, None])
               & jnp.asarray(gt_valid, bool)[None, :])
  area = jnp.broadcast_to((ymax - ymin) * (xmax - xmin), candidate.shape)
  area = jnp.where(candidate, area, jnp.inf)
  index = jnp.argmin(area, axis=1)  # The smallest candidate box; ties: the first.
  positive = jnp.any(candidate, axis=1)
  chosen = jnp.take_along_axis(ltrb, index[:, None, None], axis=1)[:, 0]
  chosen = jnp.where(positive[:, None], chosen, 1.0)
  left, top, right, bottom = (chosen[:, i] for i in range(4))
  centerness = jnp.sqrt(jnp.minimum(left, right) / jnp.maximum(left, right)
                        * jnp.minimum(top, bottom) / jnp.maximum(top, bottom))
  return {
      'positive': positive,
      'box_index': jnp.where(positive, index, -1).astype(jnp.int32),
      'classes': jnp.where(positive, jnp.asarray(gt_classes)[index], -1).astype(jnp.int32),
      'ltrb': chosen,
      'centerness': jnp.where(positive, centerness, 0.0),
  }


def ltrb_to_boxes(locations: jax.Array, ltrb: jax.Array) -> jax.Array:
  """Distances [..., 4] from locations [..., 2] (y, x) -> pixel [ymin, xmin, ymax, xmax]."""
  y, x = locations[..., 0], locations[..., 1]
  return jnp.stack([y - ltrb[..., 1], x - ltrb[..., 0], y + ltrb[..., 3], x + ltrb[..., 2]],
                   axis=-1)


def _scale_yxyx(height, width) -> jax.Array:
  return jnp.array([height, width, height, width], jnp.float32)


class Method(base.Method):
  """FCOS (see the module docstring).

  Options: `class_names` (the K classes, index 0 first; scenes: `scenes.SHAPES`),
  `num_classes` (K, by default the number of class names, else the number of the data's
  `metadata['category_ids']`, as `coco_json:` data has), the batch fields `boxes_key`,
  `classes_key`, `objects_mask_key`, `crowd_key` ('' for none), the assignment's
  `center_sampling_radius` (strides; 0: off) and `regression_bounds`, the focal loss's
  `focal_alpha` and `focal_gamma`, and `detect`'s `score_threshold`, `pre_nms_top_k`,
  `nms_iou_threshold` and `max_detections`.

  Metrics: `focal_loss`, `giou_loss`, `centerness_loss` and `num_positives` (positive
  locations, summed over the logged steps).
  """
  name = 'detection'
  OPTIONS = {
      'class_names': (), 'num_classes': config_lib.placeholder(int),
      'boxes_key': 'objects/bbox', 'classes_key': 'objects/label',
      'objects_mask_key': 'objects_mask', 'crowd_key': '',
      'center_sampling_radius': 1.5, 'regression_bounds': (),
      'focal_alpha': 0.25, 'focal_gamma': 2.0,
      'score_threshold': 0.05, 'pre_nms_top_k': 1000, 'nms_iou_threshold': 0.6,
      'max_detections': 100,
  }
  PREDICTIONS = ('detect', 'predict')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    metadata = data_info.metadata or {}
    self.num_classes, self.class_names = base.named_classes(
        self.name, self.options, fallback=len(metadata.get('category_ids', ())),
        example="scenes.SHAPES ('circle', 'square', ...)")
    if self.options.max_detections < 1 or self.options.pre_nms_top_k < 1:
      raise config_lib.ConfigError('detection.max_detections and detection.pre_nms_top_k '
                                   'must be positive')
    self.model = models.get_model(config.model, num_classes=self.num_classes,
                                  dtype=self.compute_dtype)
    if not hasattr(self.model, 'strides'):
      raise config_lib.ConfigError(
          f'detection: model {config.model.name!r} is not a dense detector (use fcos)')

  def synthetic_batch(self, batch_size, input_shape, rng):
    batch = super().synthetic_batch(batch_size, input_shape, rng)
    del batch['label']
    o = self.options
    corner = rng.uniform(0, 0.5, (batch_size, 1, 2))
    size = rng.uniform(0.1, 0.5, (batch_size, 1, 2))
    batch[o.boxes_key] = np.concatenate([corner, corner + size], -1).astype(np.float32)
    batch[o.classes_key] = rng.integers(0, self.num_classes, (batch_size, 1), dtype=np.int32)
    batch[o.objects_mask_key] = np.ones((batch_size, 1), bool)
    return batch

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], train=False)

  def geometry(self, height: int, width: int) -> dict[str, np.ndarray]:
    """The locations [L, 2], strides [L], levels [L] and their ranges [L] for an input
    of (height, width), as numpy constants."""
    locations, strides, levels = fcos.geometry(height, width, self.model.strides())
    lower, upper = level_ranges(strides, levels, tuple(self.options.regression_bounds))
    return {'locations': locations, 'strides': strides, 'levels': levels,
            'lower': lower, 'upper': upper}

  def targets(self, batch) -> dict[str, jax.Array]:
    """The assigned targets [B, L, ...] of a batch (see `assign_targets`)."""
    o = self.options
    height, width = batch['image'].shape[1:3]
    g = self.geometry(height, width)
    for key in (o.boxes_key, o.classes_key, o.objects_mask_key):
      if key not in batch:
        raise KeyError(f'detection: the batch has no {key!r} (it has {sorted(batch)}); pad '
                       "the objects in pp, e.g. pad_sequence(4, 'objects'), and keep them")
    valid = batch[o.objects_mask_key].astype(bool)
    if o.crowd_key:
      valid = valid & ~batch[o.crowd_key].astype(bool)
    pixel_boxes = batch[o.boxes_key].astype(jnp.float32) * _scale_yxyx(height, width)
    assign = lambda b, c, v: assign_targets(
        g['locations'], g['strides'], g['lower'], g['upper'], b, c, v,
        center_sampling_radius=o.center_sampling_radius)
    return jax.vmap(assign)(pixel_boxes, batch[o.classes_key].astype(jnp.int32), valid)

  def losses(self, outputs, targets) -> dict[str, jax.Array]:
    """The three terms and the positive count, each over the whole (global) batch."""
    o = self.options
    positive = targets['positive'].astype(jnp.float32)
    num_positives = positive.sum()
    normaliser = jnp.maximum(num_positives, 1.0)
    one_hot = jax.nn.one_hot(targets['classes'], self.num_classes)  # -1: all zeros
    focal = sigmoid_focal_loss(outputs['class_logits'], one_hot, alpha=o.focal_alpha,
                               gamma=o.focal_gamma).sum() / normaliser
    locations = outputs['locations']
    predicted = box_ops.yxyx_to_xyxy(ltrb_to_boxes(locations, outputs['ltrb']))
    target = box_ops.yxyx_to_xyxy(ltrb_to_boxes(locations, targets['ltrb']))
    giou = box_ops.generalized_iou(predicted, target, pairwise=False)
    weight = targets['centerness'] * positive
    giou_loss = jnp.sum(weight * (1 - giou)) / jnp.maximum(weight.sum(), 1e-6)
    centerness = jnp.sum(positive * binary_cross_entropy(
        outputs['centerness_logits'], targets['centerness'])) / normaliser
    return {'focal_loss': focal, 'giou_loss': giou_loss, 'centerness_loss': centerness,
            'num_positives': num_positives}

  def loss(self, params, model_state, batch, rng):
    outputs, model_state = base.apply_model(self.model, params, model_state, batch['image'],
                                            train=True, rng=rng)
    terms = self.losses(outputs, jax.lax.stop_gradient(self.targets(batch)))
    total = terms['focal_loss'] + terms['giou_loss'] + terms['centerness_loss']
    return total, (terms, model_state)

  def predict(self, state, batch):
    """The eval-mode dense outputs of the model (see `vision_jax.models.fcos`)."""
    outputs, _ = base.apply_model(self.model, state.params, state.model_state,
                                  batch['image'], train=False)
    return outputs

  def detect(self, state, batch):
    """Detections of each image (the shared contract; see the module docstring)."""
    outputs = self.predict(state, batch)
    detections, _ = self.detections(outputs, *batch['image'].shape[1:3])
    return detections

  def detections(self, outputs, height: int, width: int
                 ) -> tuple[dict[str, jax.Array], jax.Array]:
    """`(detections, location [B, D])` from the dense outputs: the shared contract and
    the index of the location that predicted each detection (-1 for padding)."""
    o = self.options
    scores = jnp.sqrt(jax.nn.sigmoid(outputs['class_logits'])
                      * jax.nn.sigmoid(outputs['centerness_logits'])[..., None])
    scores = scores.reshape(scores.shape[0], -1)  # [B, L * K], location-major
    top_scores, top = jax.lax.top_k(scores, min(o.pre_nms_top_k, scores.shape[1]))
    location, classes = top // self.num_classes, top % self.num_classes
    ltrb = jnp.take_along_axis(outputs['ltrb'], location[..., None], axis=1)
    pixel = ltrb_to_boxes(outputs['locations'][location], ltrb)
    scale = _scale_yxyx(height, width)
    normalised = jnp.clip(pixel, 0, scale) / scale

    def nms(b, s, c):
      return box_ops.non_max_suppression(
          b, s, c, iou_threshold=o.nms_iou_threshold, max_outputs=o.max_detections,
          score_threshold=o.score_threshold)
    detections = jax.vmap(nms)(normalised, top_scores, classes)
    kept = jnp.take_along_axis(location, jnp.maximum(detections.indices, 0), axis=1)
    return ({'boxes': detections.boxes, 'scores': detections.scores,
             'classes': detections.classes, 'valid': detections.valid},
            jnp.where(detections.valid, kept, -1))
