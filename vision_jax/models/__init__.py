"""Model families, one Linen module family per file, found by name from a config.

Every model is built from plain Flax layers. A family whose module defines
`cpu_kernel_layers()` (the layers its `Model` takes as attributes, e.g.
`{'conv': cpu_conv.Conv, 'norm': cpu_batch_norm.BatchNorm}`) can run on the C++ CPU
kernels of `vision_jax.kernels` instead, with `config.model.cpu_kernels = True`; the
kernels are drop-ins with the same parameters, so checkpoints do not change.
"""

import importlib
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vision_jax import config_lib

_warned_backends: set[str] = set()  # warn once per process, not once per model built


def get_model(model_config: ml_collections.ConfigDict, **overrides: Any):
  """Builds `vision_jax.models.<name>.Model` from `config.model` (name + kwargs).

  `cpu_kernels` (default False) is not a model attribute: when it is true and JAX runs
  on a CPU, the family's `cpu_kernel_layers()` are injected; on any other backend it
  is ignored with a warning. The kernels are only imported (and built, on first
  trace) in that case.
  """
  kwargs = dict(model_config)
  kwargs.update(overrides)
  name = kwargs.pop('name')
  cpu_kernels = bool(kwargs.pop('cpu_kernels', False))
  try:
    module = importlib.import_module(f'vision_jax.models.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'vision_jax.models.{name}':
      raise
    raise config_lib.ConfigError(
        f'unknown model {name!r}: no module vision_jax/models/{name}.py') from None
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  if cpu_kernels:
    if not hasattr(module, 'cpu_kernel_layers'):
      raise config_lib.ConfigError(
          f'model.cpu_kernels: model {name!r} has no CPU kernel layers '
          f'(vision_jax/models/{name}.py defines no cpu_kernel_layers())')
    backend = jax.default_backend()
    if backend == 'cpu':
      kwargs.update(module.cpu_kernel_layers())
    elif backend not in _warned_backends:
      _warned_backends.add(backend)
      logging.warning('vision_jax: model.cpu_kernels is for XLA:CPU; on %s the models '
                      "use Flax's own layers", backend)
  return module.Model(**kwargs)


def classifier_outputs(maps: dict[str, jax.Array], pre_logits: jax.Array,
                       num_classes: int | None, dtype: Any) -> dict[str, jax.Array]:
  """Adds 'pre_logits' and, unless `num_classes` is None (a headless backbone), the
  'logits' of a Dense layer named 'head' to a classifier's named maps.

  Call it inside the classifier's compact method, so that the head is its submodule.
  """
  maps['pre_logits'] = pre_logits
  if num_classes is not None:
    logits = nn.Dense(num_classes, dtype=dtype, name='head')(pre_logits)
    # Float32 logits keep the softmax and the loss at full precision (a float64
    # model, e.g. for finite differences, keeps float64).
    maps['logits'] = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return maps


def spatial_grid(maps: dict[str, jax.Array], key: str | None = None) -> jax.Array:
  """A backbone's spatial grid [B, H, W, D] among its `feature_maps`, for the heads that
  attend over it (captioning decoders, VQA): `maps[key]`, by default a ViT's 'tokens' or
  the last 'stage<k>' of a CNN."""
  if key is None:
    stages = sorted((k for k in maps if k.startswith('stage')), key=lambda k: int(k[5:]))
    key = 'tokens' if 'tokens' in maps else stages[-1] if stages else None
  if key not in maps:
    raise ValueError(f'the image encoder has no feature map {key!r}; it has {sorted(maps)}')
  return maps[key]
