"""A method with its own update (two players, two optimizers, one D step then one G step)
rides the same loop, checkpoints and resume as a plain classifier."""

import chex
import jax
import jax.numpy as jnp
import optax

from vision_jax import checkpointing, config_lib, train
from vision_jax.methods import base, get_method_class

CNN_DIGITS = 'experiments/classification/cnn_digits.py'
LR = 0.05


def discriminator_loss(d, g, images, noise):
  """Logistic loss of a linear critic on real image means vs generated values."""
  real = images.reshape(len(images), -1).mean(-1, keepdims=True) * d['w'] + d['b']
  fake = (noise * g['scale'] + g['shift']) * d['w'] + d['b']
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def generator_loss(g, d, noise):
  fake = (noise * g['scale'] + g['shift']) * d['w'] + d['b']
  return jnp.mean(jax.nn.softplus(-fake))  # Non-saturating generator loss.


class Alternating(base.Method):
  """A toy minimax game whose `update` takes a D step, then a G step against the new D."""

  def make_optimizer(self):
    return optax.sgd(LR)

  def init_state(self, rng, batch):
    params = {'d': {'w': jnp.ones([1]), 'b': jnp.zeros([1])},
              'g': {'scale': jnp.ones([1]), 'shift': jnp.zeros([1])}}
    opt_state = {name: self.tx.init(p) for name, p in params.items()}
    return base.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                           opt_state=opt_state, model_state={})

  def update(self, state, batch, rng):
    params, opt_state = dict(state.params), dict(state.opt_state)
    noise = jax.random.normal(rng, (batch['image'].shape[0], 1))
    d_loss, d_grads = jax.value_and_grad(discriminator_loss)(
        params['d'], params['g'], batch['image'], noise)
    updates, opt_state['d'] = self.tx.update(d_grads, opt_state['d'])
    params['d'] = optax.apply_updates(params['d'], updates)
    g_loss, g_grads = jax.value_and_grad(generator_loss)(params['g'], params['d'], noise)
    updates, opt_state['g'] = self.tx.update(g_grads, opt_state['g'])
    params['g'] = optax.apply_updates(params['g'], updates)
    metrics = {'loss': d_loss + g_loss, 'd_loss': d_loss, 'g_loss': g_loss}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def toy_config(data_dir, total_steps):
  config = config_lib.load_config(CNN_DIGITS + ':local')
  config_lib.apply_overrides(config, {
      'method': f'{__name__}:Alternating', 'data.data_dir': data_dir,
      'total_steps': str(total_steps), 'checkpoint_every_steps': '3', 'log_every_steps': '1'})
  with config.unlocked():
    config.evals = {}
  return config


def test_method_found_by_path():
  assert get_method_class(f'{__name__}:Alternating') is Alternating


def test_own_update_rides_the_loop_and_resumes(tmp_path, data_dir):
  train.train_and_evaluate(toy_config(data_dir, 6), str(tmp_path / 'straight'))
  train.train_and_evaluate(toy_config(data_dir, 3), str(tmp_path / 'resumed'))
  train.train_and_evaluate(toy_config(data_dir, 6), str(tmp_path / 'resumed'))
  chex.assert_trees_all_close(checkpointing.read_latest(tmp_path / 'straight'),
                              checkpointing.read_latest(tmp_path / 'resumed'), rtol=1e-6)
