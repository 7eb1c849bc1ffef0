"""What the generative methods share: image shape, conditioning, EMA and the sampling API.

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
  trajectory(state, rng, labels, num_frames)        [N, num_frames, ...] from noise to image
  test_metrics(state, batch, rng)                   per-example [N] float32 values

A method defines the ones it has and lists them in `CAPABILITIES`; `SAMPLE_OPTIONS`
names the keyword options of `generate` with their defaults (diffusion: 'steps',
'guidance', 'sampler', 'eta'), which the evaluator's `sample_options` and the sample
command's flags set.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vision_jax import config_lib
from vision_jax.methods import base

CAPABILITY_NAMES = ('generate', 'reconstruct', 'interpolate', 'trajectory', 'test_metrics')


class ParamsEmaState(NamedTuple):
  """The exponential moving average of the parameters, kept as optimizer state so that
  checkpoints hold it and a resumed run continues it."""
  count: jax.Array
  ema: Any


def params_ema(decay: float, warmup: bool = True) -> optax.GradientTransformation:
  """An optax stage, chained after the optimizer, that keeps an EMA of the new params.

  With `warmup`, the decay at update n is min(decay, (1 + n) / (10 + n)), as in
  TensorFlow's `ExponentialMovingAverage(num_updates=...)`: early averages are not
  dominated by the random initialisation, which matters for short runs. The updates
  pass through unchanged.
  """
  def init(params):
    return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

  def update(updates, state, params):
    if params is None:
      raise ValueError('params_ema needs the params: call tx.update(grads, state, params)')
    count = state.count + 1
    rate = jnp.asarray(decay, jnp.float32)
    if warmup:
      rate = jnp.minimum(rate, (1.0 + count) / (10.0 + count))
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.ema, new_params)
    return updates, ParamsEmaState(count, ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any:
  """The EMA params of an optimizer state built by `with_ema` (its last stage)."""
  state = opt_state[-1]
  if not isinstance(state, ParamsEmaState):
    raise ValueError('this optimizer state has no params_ema stage')
  return state.ema


def with_ema(tx: optax.GradientTransformation, decay: float, warmup: bool = True
             ) -> optax.GradientTransformation:
  """`tx` followed by `params_ema(decay)`; `decay` 0 or None returns `tx` unchanged."""
  if not decay:
    return tx
  return optax.chain(tx, params_ema(decay, warmup))


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
