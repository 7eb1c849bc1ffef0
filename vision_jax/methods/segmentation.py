"""Semantic segmentation: a model from `config.model` gives per-pixel class logits, trained
with per-pixel softmax cross-entropy that skips an ignore label."""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, losses, models
from vision_jax.methods import base


def pixel_labels(segmentation: jax.Array) -> jax.Array:
  """A label map [B, H, W, 1] or [B, H, W] as int32 [B, H, W]."""
  if segmentation.ndim == 4:
    if segmentation.shape[-1] != 1:
      raise ValueError(f'a label map has one channel, got shape {segmentation.shape}')
    segmentation = segmentation[..., 0]
  if segmentation.ndim != 3:
    raise ValueError(f'a label map is [B, H, W, 1] or [B, H, W], got {segmentation.shape}')
  return segmentation.astype(jnp.int32)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int,
                        weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """`(sum of cross-entropies, number of pixels counted)` over the pixels whose label is
  not `ignore_label` (and whose `weights`, broadcast to [B, H, W], is nonzero).

  `logits` [B, H, W, K], `labels` int [B, H, W]. The mean loss is the first over the
  second: ignored pixels count in neither, so they change nothing.
  """
  valid = labels != ignore_label
  if weights is not None:
    valid = valid & (jnp.asarray(weights) > 0)
  # An ignored pixel's label is replaced by 0 so that one_hot stays in range; its
  # cross-entropy is then masked out.
  per_pixel = losses.softmax_cross_entropy(logits, jnp.where(valid, labels, 0))
  valid = valid.astype(jnp.float32)
  return jnp.sum(per_pixel * valid), jnp.sum(valid)


class Method(base.Method):
  """Labels every pixel of `batch['image']` with one of K classes (`batch['segmentation']`,
  [B, H, W, 1] or [B, H, W] integers).

  Config: `model` (name + kwargs; it is built with `num_classes`), the options below, and
  the shared optimizer fields. Options: `class_names` (the K classes' names, index 0
  first, e.g. `scenes.SEGMENTATION_CLASSES`), `num_classes` (K; by default the number of
  class names), `ignore_label` (pixels with this label, e.g. VOC's 255 at object
  boundaries, are left out of the loss and the metrics; the mean is over the other
  pixels of the global batch). Metrics: `pixel_accuracy` and `num_pixels` (the labelled
  pixels). Prediction: `predict`, the eval-mode logits [B, H, W, K] in float32.
  """
  name = 'segmentation'
  OPTIONS = {'class_names': (), 'num_classes': config_lib.placeholder(int),
             'ignore_label': 255}
  PREDICTIONS = ('predict',)

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    self.num_classes, self.class_names = base.named_classes(
        'segmentation', self.options, example="('background', 'circle', ...)")
    if 0 <= self.options.ignore_label < self.num_classes:
      raise config_lib.ConfigError(
          f'segmentation.ignore_label {self.options.ignore_label} is one of the '
          f'{self.num_classes} classes; use a label outside 0..{self.num_classes - 1}')
    self.model = models.get_model(config.model, num_classes=self.num_classes,
                                  dtype=self.compute_dtype)

  def synthetic_batch(self, batch_size, input_shape, rng):
    batch = super().synthetic_batch(batch_size, input_shape, rng)
    del batch['label']
    batch['segmentation'] = rng.integers(0, self.num_classes, (batch_size, *input_shape[:-1], 1),
                                         dtype=np.int32)
    return batch

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    logits, model_state = base.apply_model(self.model, params, model_state, batch['image'],
                                           train=True, rng=rng)
    labels = pixel_labels(batch['segmentation'])
    total, count = pixel_cross_entropy(logits, labels, self.options.ignore_label)
    valid = (labels != self.options.ignore_label).astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * valid)
    count = jnp.maximum(count, 1.0)  # A batch of ignored pixels only has loss 0.
    metrics = {'pixel_accuracy': correct / count, 'num_pixels': jnp.sum(valid)}
    return total / count, (metrics, model_state)

  def predict(self, state, batch):
    """Eval-mode logits [B, H, W, K], float32."""
    logits, _ = base.apply_model(self.model, state.params, state.model_state,
                                 batch['image'], train=False)
    return logits.astype(jnp.float32)
