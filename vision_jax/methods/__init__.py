"""Training methods, found by name: `config.method = 'classification'` loads
`vision_jax.methods.classification.Method`."""

import importlib

from vision_jax import config_lib


def get_method_class(name: str):
  try:
    module = importlib.import_module(f'vision_jax.methods.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'vision_jax.methods.{name}':
      raise
    raise config_lib.ConfigError(
        f'unknown method {name!r}: no module vision_jax/methods/{name}.py') from None
  return module.Method
