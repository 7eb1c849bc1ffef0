"""A trained run, loaded for use outside its training: its config, method and state.

  config, method, state = inference.load_run('/tmp/ddpm_mnist')
  images = method.generate(method.eval_state(state), jax.random.key(0), labels)

Used by `python -m vision_jax.sample` and by evaluators that need another run's model
(the classifier whose features FID compares). The state is rebuilt abstractly from
the run's `config.json` (with `data.input_shape` giving the example shape) and read
from its latest checkpoint, replicated over the given devices.
"""

import json
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from vision_jax import checkpointing, config_lib, parallel
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import base, get_method_class


class RunError(ValueError):
  """A workdir that does not hold a usable trained run."""


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (model widths, shapes)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.abspath(workdir), 'config.json')
  if not os.path.isfile(path):
    raise RunError(f'{workdir} is not a training run\'s workdir: it has no config.json')
  try:
    with open(path, encoding='utf-8') as f:
      return ml_collections.ConfigDict(_tuples(json.load(f)))
  except (ValueError, OSError) as e:
    raise RunError(f'{path} cannot be read: {e}') from None


def _data_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """The training data's info; from the config alone when the data is not here."""
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    builder, name, _ = pipeline.training_builder(config.data)
    return pipeline.dataset_info(builder, name)
  except pipeline.DatasetNotFoundError:
    num_classes = config.data.get('num_classes')
    return DatasetInfo(name=config.data.name, num_examples={}, num_classes=num_classes,
                       class_names=tuple(map(str, range(num_classes))) if num_classes else None)


def load_run(workdir: str, *, input_shape: Sequence[int] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> tuple[ml_collections.ConfigDict,
                                                             base.Method, base.TrainState]:
  """`(config, method, state)` of the run in `workdir` at its latest checkpoint.

  `input_shape` (H, W, C) is the shape of a preprocessed example, by default the run's
  `config.data.input_shape`. Raises `RunError` or `checkpointing.CheckpointError` with a
  one-line message for a workdir without a config or checkpoint.
  """
  config = read_config(workdir)
  if not checkpointing.saved_steps(workdir):
    raise RunError(f'{workdir} has no checkpoint (checkpoints/<step>/ is missing)')
  shape = input_shape or config.data.get('input_shape')
  if not shape:
    raise RunError(f'the config of {workdir} has no data.input_shape; pass the shape of '
                   'its preprocessed examples')
  data_info = _data_info(config)
  try:
    method = get_method_class(config.method)(config, data_info, total_steps=1,
                                             steps_per_epoch=1)
  except config_lib.ConfigError as e:
    raise RunError(f'the run in {workdir} cannot be rebuilt: {e}') from None
  mesh = mesh or parallel.make_mesh(1)
  example = method.synthetic_batch(1, shape, np.random.default_rng(0))
  abstract = jax.eval_shape(method.init_state, jax.random.key(0), example)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
      s.shape, s.dtype, sharding=parallel.replicated(mesh)), abstract)
  _, state = checkpointing.restore_latest(workdir, target)
  return config, method, state


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[0, 1] float images to uint8 (rounded, clipped)."""
  return np.clip(np.round(np.asarray(images, np.float32) * 255), 0, 255).astype(np.uint8)
