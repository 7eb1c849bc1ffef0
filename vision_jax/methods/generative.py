"""What the generative methods share: image shape, conditioning and the sampling API.

The `generative` evaluator and `python -m vision_jax.sample` call the methods through
this interface, so one evaluator draws sample grids, reconstructions, interpolations
and denoising trajectories and computes FID for every method. Each function takes the
state the evaluators see (`method.eval_state(state)`, e.g. with EMA weights), is pure
and jittable, and returns float32 images in [0, 1] shaped `[N, *image_shape]`:

  generate(state, rng, labels, **sample_options)    from the prior; `labels` [N] int32
                                                    (ignored by unconditional models)
  reconstruct(state, batch, rng)                    {'input', 'reconstruction'} and,
                                                    for a denoising model, 'clean'
  interpolate(state, batch, rng, num_points)        [P, num_points, ...] between pairs
  trajectory(state, rng, labels, num_frames, **sample_options)
                                                    [N, num_frames, ...] from noise to image
  test_metrics(state, batch, rng)                   per-example [N] float32 values

A method defines the ones it has and lists them in `CAPABILITIES`; `SAMPLE_OPTIONS`
names the keyword options of `generate` with their defaults (diffusion: 'steps',
'guidance', 'sampler', 'eta'), which the evaluator's `sample_options` and the sample
command's flags set.
"""

from typing import Any

import jax

from vision_jax import config_lib
from vision_jax.methods import base

CAPABILITY_NAMES = ('generate', 'reconstruct', 'interpolate', 'trajectory', 'test_metrics')


class Method(base.Method):
  """Base class of the generative methods.

  Requires `config.data.input_shape` (H, W, C): the shape of a preprocessed image, which
  `generate` draws without a batch to look at (the sample command has no data).
  A conditional method reads `options.conditional` and needs a class label.

  Attributes:
    image_shape: `tuple(config.data.input_shape)`.
    num_classes: the training data's class count (None without labels).
    conditional: whether the model is class-conditional.
  """
  CAPABILITIES: tuple[str, ...] = ()
  SAMPLE_OPTIONS: dict[str, Any] = {}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    shape = config.data.get('input_shape')
    if not shape or len(shape) != 3:
      raise config_lib.ConfigError(
          f'method {config.method} needs config.data.input_shape = (height, width, '
          f'channels) of a preprocessed image, got {shape!r}')
    self.image_shape = tuple(int(s) for s in shape)
    self.num_classes = data_info.num_classes
    self.conditional = bool(self.options.get('conditional', False))
    if self.conditional and not self.num_classes:
      raise config_lib.ConfigError(
          f'{self.name}.conditional needs class labels, but dataset {data_info.name} has '
          'no class label feature `label`')
    unknown = set(self.CAPABILITIES) - set(CAPABILITY_NAMES)
    assert not unknown, f'unknown capabilities {unknown}'

  def check_images(self, images: jax.Array) -> None:
    """A batch whose images differ from `data.input_shape` is an error naming both."""
    if tuple(images.shape[1:]) != self.image_shape:
      raise config_lib.ConfigError(
          f'the preprocessed images are {tuple(images.shape[1:])} but '
          f'config.data.input_shape is {self.image_shape}; add a resize to the pp or '
          'change data.input_shape')

  def sample_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
    """`SAMPLE_OPTIONS` completed with `given`; an option the method lacks is an error."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(self.SAMPLE_OPTIONS))
    if unknown:
      raise config_lib.ConfigError(
          f'method {self.config.method} has no sampling option {unknown[0]!r}; it has '
          f'{", ".join(sorted(self.SAMPLE_OPTIONS)) or "none"}')
    return {**self.SAMPLE_OPTIONS, **given}

  def has(self, capability: str) -> bool:
    return capability in self.CAPABILITIES
