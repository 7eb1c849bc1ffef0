"""What the self-supervised methods share: a headless encoder and its features.

Rotation prediction, SimCLR and CPC each train an encoder f from `config.model` (any
family, built with `num_classes=None`, so it returns pooled features h = f(x)) through
a pretext task whose head is thrown away. Their variables keep the encoder under
`encoder` in every collection (`params['encoder']`,
`model_state['batch_stats']['encoder']`), so a classification experiment starts from
it with

  config.init_from.subtrees = ('params/encoder:params',
                               'model_state/batch_stats/encoder:model_state/batch_stats')
  config.init_from.exclude = ('params/head',)

(`FINE_TUNE_SUBTREES`, `FINE_TUNE_EXCLUDE`) and the probe evaluator reads h through
`embed_image`. Images reach the encoder as the pipeline delivers them.
"""

import jax.numpy as jnp

from vision_jax import config_lib, models
from vision_jax.methods import base

FINE_TUNE_SUBTREES = ('params/encoder:params',
                      'model_state/batch_stats/encoder:model_state/batch_stats')
FINE_TUNE_EXCLUDE = ('params/head',)


class Method(base.Method):
  """Base class of the self-supervised methods.

  A subclass builds `self.model`, a module whose submodule `encoder` is
  `self.encoder` and whose method `embed(x, train=...)` returns the encoder's features.
  A contrastive one (`CONTRASTIVE = True`: its negatives are the other examples of the
  batch) refuses gradient accumulation, which would shrink them to a micro-batch.

  Attributes:
    encoder: the headless encoder of `config.model`.
  """
  PREDICTIONS = ('embed_image',)
  CONTRASTIVE = False

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if self.CONTRASTIVE and (config.grad_accum_steps or 1) > 1:
      raise config_lib.ConfigError(
          f'{self.name}: grad_accum_steps must be 1: a loss over each micro-batch alone '
          'would see fewer negatives; use a smaller batch_size or more devices instead')
    if config.model.get('num_classes') is not None:
      raise config_lib.ConfigError(
          f'method {config.method} trains a headless encoder: leave model.num_classes unset')
    self.encoder = models.get_model(config.model, num_classes=None, dtype=self.compute_dtype)

  def embed_image(self, state, batch):
    """Eval-mode encoder features h of `batch['image']`, float32 [N, D]."""
    h, _ = base.apply_model(self.model, state.params, state.model_state, batch['image'],
                            train=False, method='embed')
    return h.astype(jnp.float32)
