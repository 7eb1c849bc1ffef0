"""Supervised classification of images or video clips: a model from `config.model`,
softmax cross-entropy."""

import jax
import jax.numpy as jnp

from vision_jax import config_lib, losses, models
from vision_jax.methods import base


class Method(base.Method):
  """Classifies `batch['image']` (an image, or a clip [T, H, W, C] for the video models)
  into `batch['label']`.

  Config: `model` (name + kwargs), `classification.label_smoothing`, and the shared
  optimizer fields. Predictions: `predict` (float32 logits), `predict_views` (the logits
  averaged over several views of each example in `batch['image']` [B, K, ...], e.g.
  the temporal crops of multi-clip video evaluation), `embed_image` (the backbone's
  pooled features, for probes) and `attention_weights` (for Transformer models with
  `sow_attention_weights`: every attention layer's weights [B, heads, queries, keys],
  by path, e.g. 'temporal_encoder/encoderblock_0').
  """
  name = 'classification'
  OPTIONS = {'label_smoothing': 0.0}
  PREDICTIONS = ('predict', 'predict_views', 'embed_image', 'attention_weights')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if not data_info.num_classes:
      raise ValueError(f'dataset {data_info.name} has no class label feature `label`')
    self.model = models.get_model(config.model, num_classes=data_info.num_classes,
                                  dtype=self.compute_dtype)

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    logits, model_state = base.apply_model(self.model, params, model_state, batch['image'],
                                           train=True, rng=rng)
    per_example = losses.softmax_cross_entropy(
        logits, batch['label'], self.options.label_smoothing)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return per_example.mean(), ({'accuracy': accuracy}, model_state)

  def predict(self, state, batch):
    """Eval-mode logits, float32."""
    logits, _ = base.apply_model(self.model, state.params, state.model_state,
                                 batch['image'], train=False)
    return logits.astype(jnp.float32)

  def predict_views(self, state, batch):
    """Eval-mode logits averaged over the K views of each example, float32 [B, classes]."""
    views = batch['image']
    flat = views.reshape(views.shape[0] * views.shape[1], *views.shape[2:])
    logits = self.predict(state, {'image': flat})
    return logits.reshape(*views.shape[:2], -1).mean(axis=1)

  def attention_weights(self, state, batch):
    """Eval-mode attention weights of every layer, {path: [B, heads, queries, keys]}."""
    if not hasattr(self.model, 'sow_attention_weights'):
      raise config_lib.ConfigError(
          f'prediction attention_weights: model {self.config.model.name} has no attention '
          'layers that can report their weights (no sow_attention_weights attribute)')
    model = self.model.clone(sow_attention_weights=True)
    _, variables = model.apply({'params': state.params, **state.model_state},
                               batch['image'], train=False, mutable=['intermediates'])
    weights = {}
    for path, value in jax.tree_util.tree_leaves_with_path(variables['intermediates']):
      keys = [entry.key for entry in path if hasattr(entry, 'key')]
      # .../<block>/MultiHeadDotProductAttention_0/attention_weights
      weights['/'.join(keys[:-2])] = value.astype(jnp.float32)
    return weights

  def embed_image(self, state, batch):
    """Eval-mode pooled features ('pre_logits'), float32."""
    maps, _ = base.apply_model(self.model, state.params, state.model_state, batch['image'],
                               train=False, method='feature_maps')
    return maps['pre_logits'].astype(jnp.float32)
