"""The method interface: what every method of the lecture gives the one trainer.

A method owns its model(s), loss, optimizer and evaluators. The trainer owns the mesh,
data, checkpoints, logging and the loop. Most methods only implement
`init_variables` and `loss`; one that needs its own update (a GAN's discriminator step
then generator step) overrides `update` and still rides the same loop.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vision_jax import optim
from vision_jax.data.pipeline import DatasetInfo

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree of arrays.

  Attributes:
    step: the number of updates applied so far.
    params: the trainable parameters (a dict of models' params for multi-model methods).
    opt_state: the optimizer state(s).
    model_state: non-trained variable collections, e.g. `{'batch_stats': ...}`.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any


class Method:
  """Base class of a training method.

  Attributes:
    config: the experiment config.
    data_info: the dataset's sizes and label names.
    schedule: the learning-rate schedule (step -> lr).
    tx: the optax optimizer.
  """

  def __init__(self, config: ml_collections.ConfigDict, data_info: DatasetInfo, *,
               total_steps: int, steps_per_epoch: int):
    self.config = config
    self.data_info = data_info
    self.total_steps = total_steps
    self.schedule = optim.learning_rate_schedule(config, total_steps, steps_per_epoch)
    self.tx = self.make_optimizer()

  @property
  def compute_dtype(self):
    return jnp.dtype(self.config.get('compute_dtype', 'float32'))

  # What a method supplies.

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    """Flax variables `{'params': ..., other collections...}` for an example batch."""
    raise NotImplementedError

  def loss(self, params, model_state, batch: Batch, rng: jax.Array):
    """Returns `(loss, (metrics, new_model_state))` on a training batch."""
    raise NotImplementedError

  # Shared machinery, which a method may override.

  def make_optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.config, self.schedule)

  def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
    variables = dict(self.init_variables(rng, batch))
    params = variables.pop('params')
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=self.tx.init(params), model_state=variables)

  def update(self, state: TrainState, batch: Batch, rng: jax.Array):
    """One optimizer step, averaging gradients over `config.grad_accum_steps` micro-batches."""
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    accum = self.config.get('grad_accum_steps', 1) or 1
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
      loss, metrics = losses.mean(), jax.tree.map(jnp.mean, metrics)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'lr': self.schedule(state.step),
               'grad_norm': optax.global_norm(grads),
               'update_norm': optax.global_norm(updates),
               'param_norm': optax.global_norm(params)}
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
