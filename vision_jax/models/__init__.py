"""Model families, one Linen module family per file, found by name from a config."""

import importlib
from typing import Any

import jax.numpy as jnp
import ml_collections

from vision_jax import config_lib


def get_model(model_config: ml_collections.ConfigDict, **overrides: Any):
  """Builds `vision_jax.models.<name>.Model` from `config.model` (name + kwargs)."""
  kwargs = dict(model_config)
  name = kwargs.pop('name')
  try:
    module = importlib.import_module(f'vision_jax.models.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'vision_jax.models.{name}':
      raise
    raise config_lib.ConfigError(
        f'unknown model {name!r}: no module vision_jax/models/{name}.py') from None
  kwargs.update(overrides)
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  return module.Model(**kwargs)
