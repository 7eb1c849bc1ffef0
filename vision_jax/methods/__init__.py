"""Training methods, found by name: `config.method = 'classification'` loads
`vision_jax.methods.classification.Method`; `'my_package.my_module:MyMethod'` loads a
method from research code outside the package."""

import importlib

from vision_jax import config_lib


def get_method_class(name: str):
  module_name, _, class_name = name.partition(':')
  if not class_name:
    module_name, class_name = f'vision_jax.methods.{name}', 'Method'
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise config_lib.ConfigError(f'unknown method {name!r}: no module {module_name}') from None
  if not hasattr(module, class_name):
    raise config_lib.ConfigError(f'unknown method {name!r}: {module_name} has no {class_name}')
  return getattr(module, class_name)
