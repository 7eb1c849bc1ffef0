"""Optimizers and learning-rate schedules from the config (optax).

config.optimizer: name ('sgd' | 'momentum' | 'adam' | 'adamw'), momentum, nesterov,
  b1, b2, weight_decay, decay_weights_only (no decay on biases and norm scales),
  grad_clip_norm.
config.lr: the peak learning rate; scaled by batch_size / config.lr_batch_base when set.
config.schedule: name ('constant' | 'cosine' | 'piecewise'), warmup_steps or
  warmup_epochs, and for 'piecewise' boundaries_steps or boundaries_epochs with
  decay_factor.
"""

import jax
import ml_collections
import optax

from vision_jax import config_lib


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  base_lr = config.lr
  if config.get('lr_batch_base'):
    base_lr *= config.batch_size / config.lr_batch_base
  schedule_config = config.schedule
  warmup = config_lib.steps(schedule_config, 'warmup', steps_per_epoch, default=0)
  name = schedule_config.name
  if name == 'constant':
    main = optax.constant_schedule(base_lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup, 1))
  elif name == 'piecewise':
    if schedule_config.get('boundaries_epochs'):
      boundaries = [round(e * steps_per_epoch) for e in schedule_config.boundaries_epochs]
    else:
      boundaries = list(schedule_config.get('boundaries_steps') or ())
    main = optax.piecewise_constant_schedule(
        base_lr, {b - warmup: schedule_config.decay_factor for b in boundaries})
  else:
    raise config_lib.ConfigError(f'unknown schedule.name {name!r}')
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def weights_only(params):
  """True for kernels (ndim > 1), False for biases and normalisation scales/offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  mask = weights_only if opt.get('decay_weights_only', True) else None
  name = opt.name
  if name in ('sgd', 'momentum'):
    # Coupled L2 decay, as in the ResNet papers and torch.optim.SGD.
    tx = optax.chain(
        optax.add_decayed_weights(opt.get('weight_decay', 0.0), mask=mask),
        optax.sgd(schedule, momentum=opt.get('momentum') or None,
                  nesterov=opt.get('nesterov', False)))
  elif name == 'adam':
    tx = optax.chain(
        optax.add_decayed_weights(opt.get('weight_decay', 0.0), mask=mask),
        optax.adam(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999)))
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999),
                     weight_decay=opt.get('weight_decay', 0.0), mask=mask)
  else:
    raise config_lib.ConfigError(f'unknown optimizer.name {name!r}')
  if opt.get('grad_clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
