r"""Instance segmentation with CondInst (Tian et al. 2020): FCOS whose every location also
predicts the filters of its own small mask head.

`config.method = 'instance_segmentation'`, `config.model.name = 'fcos'` with
`model.mask_features` > 0 (`vision_jax.models.fcos`: the mask branch, the controller
and `dynamic_mask_logits`).

Why CondInst rather than Mask R-CNN's RoIAlign head: it adds two convolutions and a
tiny per-instance head to the one-stage detector the project already has, every shape
is fixed (no proposals, no RoI crops and pastes), so the whole step jits, shards and
vmaps like FCOS's; and its masks are predicted over the whole image at the mask
branch's resolution rather than on a 28x28 crop, which on 32x32 images would be coarser
than the objects.

Training. The detection terms are FCOS's (`vision_jax.methods.detection`). For the
mask term, up to `max_mask_instances` of each image's positive locations are drawn at
random (the paper samples 500 per batch); each runs its own dynamic head over the
image's mask features, with coordinates relative to the location divided by the
location level's size of interest (8 strides), the logits are resized bilinearly from
the mask branch's grid to the image and compared with the mask of the object the
location is assigned to, from the instance map at `instances_key` (pixel value i marks
objects[i - 1], as `scenes` and `coco_json:` store it; name it in the geometric ops'
`instance_maps`, which renumber it when a crop drops objects), by the dice loss
1 - 2 sum(p g) / (sum p^2 + sum g^2 + eps) (the paper's). The mask term is the mean
over the sampled instances of the global batch (0 when there are none), weighted by
`mask_loss_weight`; the loss adds it to FCOS's three terms.

Prediction. `detect` gives FCOS's detections plus 'masks' [B, D, H, W], the sigmoid
of each detection's mask logits at image resolution (zeros for padding rows), which the
detection evaluator thresholds for COCO's mask AP.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib
from vision_jax.methods import base, detection
from vision_jax.models import fcos

DICE_EPS = 1e-5  # AdelaiDet's
# The relative coordinates' unit: the size of interest of the location's level, in its
# strides (the paper's 64 pixels for P3 at stride 8).
SIZE_OF_INTEREST = 8.0


def dice_loss(probabilities: jax.Array, targets: jax.Array) -> jax.Array:
  """1 - 2 sum(p g) / (sum p^2 + sum g^2 + eps) over the last two axes (Milletari et al.
  2016, as CondInst uses it)."""
  intersection = jnp.sum(probabilities * targets, axis=(-2, -1))
  union = (jnp.sum(probabilities ** 2, axis=(-2, -1)) + jnp.sum(targets ** 2, axis=(-2, -1))
           + DICE_EPS)
  return 1 - 2 * intersection / union


def sample_instances(positive: jax.Array, box_index: jax.Array, rng: jax.Array, count: int
                     ) -> tuple[jax.Array, jax.Array]:
  """`(chosen [B, N], object_ids [B, N])`: N = `count` locations per image, drawn at
  random without replacement among its positive ones [B, L] (all of them when there are
  at most N), and the id in the instance map (box index + 1) of the object each is
  assigned to, 0 for the rows left over."""
  priority = jnp.where(positive, jax.random.uniform(rng, positive.shape), -1.0)
  priority, chosen = jax.lax.top_k(priority, count)
  object_ids = jnp.take_along_axis(box_index, chosen, axis=1) + 1
  return chosen, jnp.where(priority >= 0, object_ids, 0)


class Method(detection.Method):
  """CondInst (see the module docstring).

  Options: FCOS's (`detection.Method`), plus `instances_key` (the batch's instance-id
  map [B, H, W, 1]), `max_mask_instances` (positive locations per image whose masks
  are trained) and `mask_loss_weight`.

  Metrics: FCOS's and `mask_loss` (dice) and `num_mask_instances`.
  """
  name = 'instance_segmentation'
  OPTIONS = {**detection.Method.OPTIONS, 'instances_key': 'instances',
             'max_mask_instances': 32, 'mask_loss_weight': 1.0}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if getattr(self.model, 'mask_features', 0) <= 0:
      raise config_lib.ConfigError(
          'instance_segmentation: set model.mask_features (8 in CondInst) so that the '
          'FCOS model has a mask branch')
    if self.options.max_mask_instances < 1:
      raise config_lib.ConfigError('instance_segmentation.max_mask_instances must be >= 1')

  def synthetic_batch(self, batch_size, input_shape, rng):
    batch = super().synthetic_batch(batch_size, input_shape, rng)
    height, width = input_shape[:2]
    box = batch[self.options.boxes_key][:, 0]  # [B, 4] normalised, one object each
    ys = (np.arange(height)[None, :] + 0.5) / height
    xs = (np.arange(width)[None, :] + 0.5) / width
    inside = (((ys >= box[:, :1]) & (ys < box[:, 2:3]))[:, :, None]
              & ((xs >= box[:, 1:2]) & (xs < box[:, 3:4]))[:, None, :])
    batch[self.options.instances_key] = inside.astype(np.uint8)[..., None]
    return batch

  def _mask_logits(self, outputs, controllers, locations, scales, height, width):
    """[B, N, H, W] logits of N instances per image, from their controllers [B, N, P],
    locations [B, N, 2] and sizes of interest [B, N]."""
    model = self.model
    stride = float(model.strides()[0])
    head = lambda c, f, l, s: fcos.dynamic_mask_logits(
        c, f, l, stride=stride, scale=s, channels=model.mask_head_channels,
        layers=model.mask_head_layers)
    per_image = jax.vmap(head, in_axes=(0, None, 0, 0))
    logits = jax.vmap(per_image)(controllers, outputs['mask_features'], locations, scales)
    return jax.image.resize(logits, (*logits.shape[:2], height, width), 'bilinear')

  def mask_losses(self, outputs, targets, instances, rng) -> dict[str, jax.Array]:
    """The dice term over sampled positive locations (see the module docstring)."""
    count = min(self.options.max_mask_instances, targets['positive'].shape[1])
    chosen, object_ids = sample_instances(targets['positive'], targets['box_index'], rng,
                                          count)
    sampled = object_ids > 0
    height, width = instances.shape[1:3]
    controllers = jnp.take_along_axis(outputs['controllers'], chosen[..., None], axis=1)
    logits = self._mask_logits(outputs, controllers, outputs['locations'][chosen],
                               SIZE_OF_INTEREST * outputs['strides'][chosen], height, width)
    truth = (instances[..., 0][:, None].astype(jnp.int32)
             == object_ids[..., None, None]).astype(jnp.float32)
    dice = dice_loss(jax.nn.sigmoid(logits), truth)
    num_sampled = sampled.sum().astype(jnp.float32)
    mask_loss = jnp.sum(jnp.where(sampled, dice, 0.0)) / jnp.maximum(num_sampled, 1.0)
    return {'mask_loss': mask_loss, 'num_mask_instances': num_sampled}

  def loss(self, params, model_state, batch, rng):
    o = self.options
    if o.instances_key not in batch:
      raise KeyError(f'instance_segmentation: the batch has no {o.instances_key!r} (it has '
                     f"{sorted(batch)}); keep the instance map in pp, e.g. keep('image', "
                     "'objects', 'objects_mask', 'instances')")
    model_rng, mask_rng = jax.random.split(rng)
    outputs, model_state = base.apply_model(self.model, params, model_state, batch['image'],
                                            train=True, rng=model_rng)
    targets = jax.lax.stop_gradient(self.targets(batch))
    terms = self.losses(outputs, targets)
    terms.update(self.mask_losses(outputs, targets, batch[o.instances_key], mask_rng))
    total = (terms['focal_loss'] + terms['giou_loss'] + terms['centerness_loss']
             + o.mask_loss_weight * terms['mask_loss'])
    return total, (terms, model_state)

  def detect(self, state, batch):
    """FCOS's detections and each one's mask probabilities [B, D, H, W]."""
    outputs = self.predict(state, batch)
    height, width = batch['image'].shape[1:3]
    detections, location = self.detections(outputs, height, width)
    safe = jnp.maximum(location, 0)
    controllers = jnp.take_along_axis(outputs['controllers'], safe[..., None], axis=1)
    logits = self._mask_logits(outputs, controllers, outputs['locations'][safe],
                               SIZE_OF_INTEREST * outputs['strides'][safe], height, width)
    valid = detections['valid'][..., None, None]
    detections['masks'] = jnp.where(valid, jax.nn.sigmoid(logits), 0.0)
    return detections
