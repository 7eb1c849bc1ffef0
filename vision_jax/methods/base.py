"""The method interface: what every method of the lecture gives the one trainer.

A method owns its model(s), loss, optimizer(s) and prediction functions. The trainer
owns the mesh, data, checkpoints, logging, evaluators and the loop. Most methods only
implement `init_variables` and `loss`; one that needs its own update (a GAN's
discriminator step then generator step) overrides `init_state` and `update`, builds
each player's optimizer with `make_optimizer('optimizer_d')`, steps each player with
`apply_gradients`, and still rides the same loop. The trainer imports no TensorFlow
through this module, so research code can use it with any input pipeline.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision_jax import config_lib, optim
from vision_jax.dataset_info import DatasetInfo

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree of arrays.

  Attributes:
    step: the number of updates applied so far.
    params: the trainable parameters (a dict of models' params for multi-model methods).
    opt_state: the optimizer state(s).
    model_state: non-trained variable collections, e.g. `{'batch_stats': ...}`, and
      non-trained copies such as EMA weights.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads, *,
                    prefix: str = '') -> tuple[Any, Any, Metrics]:
  """One optimizer step of one player: `(params, opt_state, norms)`.

  The norms are `<prefix>grad_norm`, `<prefix>update_norm` and `<prefix>param_norm`
  (of the new params); the trainer stops on a non-finite `param_norm`.
  """
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  norms = {f'{prefix}grad_norm': optax.global_norm(grads),
           f'{prefix}update_norm': optax.global_norm(updates),
           f'{prefix}param_norm': optax.global_norm(params)}
  return params, opt_state, norms


class Method:
  """Base class of a training method.

  Class attributes a method sets:
    name: the config group of its options, `config.<name>` (e.g. 'classification').
    OPTIONS: those options with their defaults; a field of `config.<name>` that is not
      here is an error, and `self.options` holds the completed group.
    PREDICTIONS: the names of its prediction functions `fn(state, batch) -> outputs`,
      which evaluators name in their `pred` field (big_vision's `pred`): e.g.
      'predict' (class scores), 'embed_image', 'embed_text', 'decode', 'sample'.
    TRAIN_IMAGE_KEYS: the image fields of a training batch (SimCLR's 'view1' and
      'view2'), each shaped like `config.data.input_shape`, which the benchmark makes up.

  Attributes:
    config: the experiment config.
    data_info: the training dataset's sizes, label names and metadata.
    total_steps: the number of training steps.
    steps_per_epoch: training steps per pass over the training split.
    options: `config.<name>` completed with `OPTIONS`.
    schedule: the learning-rate schedule (step -> lr) of `config.optimizer`.
    tx: the optax optimizer of `config.optimizer`.
  """
  name: str = ''
  OPTIONS: dict[str, Any] = {}
  PREDICTIONS: tuple[str, ...] = ()
  TRAIN_IMAGE_KEYS: tuple[str, ...] = ('image',)

  def __init__(self, config: ml_collections.ConfigDict, data_info: DatasetInfo, *,
               total_steps: int, steps_per_epoch: int):
    self.config = config
    self.data_info = data_info
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    given = config.get(self.name) if self.name else None
    if given is not None and not isinstance(given, (dict, ml_collections.ConfigDict)):
      raise config_lib.ConfigError(f'config field {self.name} must be a group of options')
    self.options = config_lib.complete(given, ml_collections.ConfigDict(self.OPTIONS),
                                       self.name or type(self).__name__)
    self.schedule, self.tx = self.make_optimizer()

  @property
  def compute_dtype(self):
    return jnp.dtype(self.config.compute_dtype)

  # What a method supplies.

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    """Flax variables `{'params': ..., other collections...}` for an example batch."""
    raise NotImplementedError

  def loss(self, params, model_state, batch: Batch, rng: jax.Array):
    """Returns `(loss, (metrics, new_model_state))` on a training batch."""
    raise NotImplementedError

  # Shared machinery, which a method may override.

  def synthetic_batch(self, batch_size: int, input_shape, rng: np.random.Generator
                      ) -> dict[str, np.ndarray]:
    """A random batch of `batch_size` examples with every field `init_variables` and
    `loss` read, for the benchmark and for rebuilding a trained run's state outside the
    trainer (`vision_jax.inference`): a standard-normal image in each of
    `TRAIN_IMAGE_KEYS` and labels below `data_info.num_classes` (zeros without classes;
    a method that needs classes refuses such a dataset when it is built)."""
    batch = {key: rng.standard_normal((batch_size, *input_shape), np.float32)
             for key in self.TRAIN_IMAGE_KEYS}
    batch['label'] = rng.integers(0, self.data_info.num_classes or 1, batch_size,
                                  dtype=np.int32)
    return batch

  def make_optimizer(self, key: str = 'optimizer', schedule_key: str = 'schedule'
                     ) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """`(schedule, tx)` of the optimizer group `config.<key>` (see `vision_jax.optim`)."""
    return optim.from_config(self.config, total_steps=self.total_steps,
                             steps_per_epoch=self.steps_per_epoch, optimizer=key,
                             schedule=schedule_key)

  def prediction_function(self, name: str) -> Callable[[TrainState, Batch], Any]:
    """The prediction function `name`, evaluated on `eval_state(state)`."""
    if name not in self.PREDICTIONS:
      raise config_lib.ConfigError(
          f'method {self.config.method} has no prediction function {name!r}; it has '
          f'{", ".join(self.PREDICTIONS) or "none"}')
    cache = self.__dict__.setdefault('_prediction_functions', {})
    if name not in cache:  # One function object per name, so evaluators share its jit.
      fn = getattr(self, name)
      cache[name] = lambda state, batch: fn(self.eval_state(state), batch)
    return cache[name]

  def eval_state(self, state: TrainState) -> TrainState:
    """The state that evaluators and prediction functions see (e.g. with EMA weights)."""
    return state

  def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
    variables = dict(self.init_variables(rng, batch))
    params = variables.pop('params')
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=self.tx.init(params), model_state=variables)

  def update(self, state: TrainState, batch: Batch, rng: jax.Array):
    """One optimizer step, averaging gradients over `config.grad_accum_steps` micro-batches.

    Metrics whose names start with `num_` are counts (summed over the logged steps by
    the trainer); the others are means (averaged).
    """
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    accum = self.config.grad_accum_steps or 1
    if accum == 1:
      (loss, (metrics, model_state)), grads = grad_fn(
          state.params, state.model_state, batch, rng)
    else:
      # Micro-batch k takes rows k, k+accum, ...: each device keeps its own rows.
      micro = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def accumulate(carry, inputs):
        grads_sum, model_state = carry
        micro_batch, index = inputs
        (loss, (metrics, model_state)), grads = grad_fn(
            state.params, model_state, micro_batch, jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads), model_state), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), (losses, metrics) = jax.lax.scan(
          accumulate, (zeros, state.model_state), (micro, jnp.arange(accum)))
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss = losses.mean()
      metrics = {k: v.sum() if k.startswith('num_') else v.mean() for k, v in metrics.items()}
    params, opt_state, norms = apply_gradients(self.tx, state.params, state.opt_state, grads)
    metrics = {**metrics, **norms, 'loss': loss, 'lr': self.schedule(state.step)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics


def apply_model(model, params, model_state, inputs, *, train: bool,
                rng: jax.Array | None = None, **kwargs):
  """`model.apply` that threads mutable collections (BatchNorm stats) when training.

  Returns `(outputs, new_model_state)`; the state is unchanged in eval mode.
  """
  variables = {'params': params, **model_state}
  rngs = {'dropout': rng} if rng is not None else None
  if train and model_state:
    return model.apply(variables, inputs, train=True, rngs=rngs,
                       mutable=list(model_state), **kwargs)
  return model.apply(variables, inputs, train=train, rngs=rngs, **kwargs), model_state


def named_classes(method: str, options, *, fallback: int = 0,
                  example: str = "('circle', 'square', ...)") -> tuple[int, tuple[str, ...]]:
  """`(K, the K class names)` from a method's `class_names` and `num_classes` options.

  K is `num_classes`, else the number of names, else `fallback` (e.g. the categories of
  the data); without names the classes are called '0', '1', .... Neither, or names of
  another count than `num_classes`, is a one-line error naming `method`'s options.
  """
  names = tuple(options.class_names)
  count = options.num_classes or len(names) or fallback
  if not count:
    raise config_lib.ConfigError(
        f'{method}: set {method}.class_names (or {method}.num_classes) to the classes, '
        f'e.g. {example}')
  if names and len(names) != count:
    raise config_lib.ConfigError(f'{method}: {len(names)} class_names but num_classes {count}')
  return count, names or tuple(map(str, range(count)))
