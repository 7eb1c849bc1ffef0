"""Supervised image classification: a model from `config.model`, softmax cross-entropy."""

import jax.numpy as jnp

from vision_jax import losses, models
from vision_jax.methods import base


class Method(base.Method):
  """Classifies `batch['image']` into `batch['label']`.

  Config: `model` (name + kwargs), `classification.label_smoothing`, and the shared
  optimizer fields. Predictions: `predict` (float32 logits) and `embed_image` (the
  backbone's pooled features, for probes).
  """
  name = 'classification'
  OPTIONS = {'label_smoothing': 0.0}
  PREDICTIONS = ('predict', 'embed_image')

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

  def embed_image(self, state, batch):
    """Eval-mode pooled features ('pre_logits'), float32."""
    maps, _ = base.apply_model(self.model, state.params, state.model_state, batch['image'],
                               train=False, method='feature_maps')
    return maps['pre_logits'].astype(jnp.float32)
