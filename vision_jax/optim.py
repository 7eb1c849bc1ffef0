"""Optimizers and learning-rate schedules from sub-configs (optax).

An optimizer config (`config.optimizer`; a method with several players adds its own,
e.g. `config.optimizer_d = config_lib.optimizer_config(name='adam', b1=0.5)`) has
  name ('sgd' | 'momentum' | 'adam' | 'adamw' | 'lars'), momentum, nesterov, b1, b2,
  weight_decay, decay_weights_only (no decay on biases and norm scales), grad_clip_norm,
  lr (None: the experiment's `config.lr`).
The peak learning rate is scaled by batch_size / config.lr_batch_base when that is set.
A schedule config (`config.schedule`) has name ('constant' | 'cosine' | 'piecewise'),
warmup_steps or warmup_epochs, and for 'piecewise' boundaries_steps or
boundaries_epochs with decay_factor. `with_ema(tx, decay)` adds an exponential moving
average of the parameters to any optimizer; `ema_params(opt_state)` reads it back (for
a method's `eval_state`).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vision_jax import config_lib

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'lars')
SCHEDULES = ('constant', 'cosine', 'piecewise')


def peak_learning_rate(config: ml_collections.ConfigDict,
                       opt_config: ml_collections.ConfigDict) -> float:
  """The optimizer's own `lr` or the experiment's, scaled by the batch size if asked."""
  lr = config.lr if opt_config.lr is None else opt_config.lr
  if config.lr_batch_base:
    lr *= config.batch_size / config.lr_batch_base
  return lr


def learning_rate_schedule(schedule_config: ml_collections.ConfigDict, base_lr: float,
                           total_steps: int, steps_per_epoch: int,
                           name: str = 'schedule') -> optax.Schedule:
  schedule_config = config_lib.complete(schedule_config, config_lib.schedule_config(), name)
  warmup = config_lib.steps(schedule_config, 'warmup', steps_per_epoch, default=0)
  if schedule_config.name == 'constant':
    main = optax.constant_schedule(base_lr)
  elif schedule_config.name == 'cosine':
    main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup, 1))
  elif schedule_config.name == 'piecewise':
    if schedule_config.boundaries_epochs:
      boundaries = [round(e * steps_per_epoch) for e in schedule_config.boundaries_epochs]
    else:
      boundaries = list(schedule_config.boundaries_steps or ())
    main = optax.piecewise_constant_schedule(
        base_lr, {b - warmup: schedule_config.decay_factor for b in boundaries})
  else:
    raise config_lib.ConfigError(f'unknown {name}.name {schedule_config.name!r}; '
                                 f'known: {", ".join(SCHEDULES)}')
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def weights_only(params):
  """True for kernels (ndim > 1), False for biases and normalisation scales/offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   name: str = 'optimizer') -> optax.GradientTransformation:
  """The optax optimizer of one optimizer group; unknown fields are errors."""
  opt = config_lib.complete(opt_config, config_lib.optimizer_config(), name)
  mask = weights_only if opt.decay_weights_only else None
  if opt.name in ('sgd', 'momentum'):
    # Coupled L2 decay, as in the ResNet papers and torch.optim.SGD.
    tx = optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=mask),
        optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == 'adam':
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=mask),
                     optax.adam(schedule, b1=opt.b1, b2=opt.b2))
  elif opt.name == 'adamw':
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                     mask=mask)
  elif opt.name == 'lars':
    # You et al. (2017) as SimCLR uses it: decay and trust ratio on weights only.
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=mask,
                    trust_ratio_mask=mask, momentum=opt.momentum, nesterov=opt.nesterov)
  else:
    raise config_lib.ConfigError(f'unknown {name}.name {opt.name!r}; '
                                 f'known: {", ".join(OPTIMIZERS)}')
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def from_config(config: ml_collections.ConfigDict, *, total_steps: int,
                steps_per_epoch: int, optimizer: str = 'optimizer',
                schedule: str = 'schedule') -> tuple[optax.Schedule, optax.GradientTransformation]:
  """`(schedule, tx)` from the sub-configs `config.<optimizer>` and `config.<schedule>`."""
  for key in (optimizer, schedule):
    if key not in config:
      raise config_lib.ConfigError(f'config has no {key} (an optimizer or schedule group)')
  opt_config = config_lib.complete(config[optimizer], config_lib.optimizer_config(), optimizer)
  lr_schedule = learning_rate_schedule(config[schedule], peak_learning_rate(config, opt_config),
                                       total_steps, steps_per_epoch, schedule)
  return lr_schedule, make_optimizer(opt_config, lr_schedule, optimizer)


# An exponential moving average of the parameters, as a last optimizer stage.

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
