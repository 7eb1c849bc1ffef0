"""The method interface: a two-player method (two optimizers from sub-configs, one D step
then one G step) rides the same loop, checkpoints and resume as a plain classifier;
method options, prediction functions, `eval_state` and `apply_gradients`."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import checkpointing, config_lib, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import base, get_method_class

CNN_DIGITS = 'experiments/classification/cnn_digits.py'
INFO = DatasetInfo(name='toy', num_examples={'train': 8}, num_classes=2,
                   class_names=('a', 'b'))


def discriminator_loss(d, g, images, noise):
  """Logistic loss of a linear critic on real image means vs generated values."""
  real = images.reshape(len(images), -1).mean(-1, keepdims=True) * d['w'] + d['b']
  fake = (noise * g['scale'] + g['shift']) * d['w'] + d['b']
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def generator_loss(g, d, noise):
  fake = (noise * g['scale'] + g['shift']) * d['w'] + d['b']
  return jnp.mean(jax.nn.softplus(-fake))  # Non-saturating generator loss.


class Alternating(base.Method):
  """A toy minimax game whose `update` takes a D step, then a G step against the new D,
  each player with its own optimizer group (`config.optimizer_d` for D)."""
  name = 'alternating'
  OPTIONS = {'d_steps': 1}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    self.schedule_d, self.tx_d = self.make_optimizer('optimizer_d')

  def init_state(self, rng, batch):
    params = {'d': {'w': jnp.ones([1]), 'b': jnp.zeros([1])},
              'g': {'scale': jnp.ones([1]), 'shift': jnp.zeros([1])}}
    opt_state = {'d': self.tx_d.init(params['d']), 'g': self.tx.init(params['g'])}
    return base.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                           opt_state=opt_state, model_state={})

  def update(self, state, batch, rng):
    params, opt_state = dict(state.params), dict(state.opt_state)
    noise = jax.random.normal(rng, (batch['image'].shape[0], 1))
    d_loss, d_grads = jax.value_and_grad(discriminator_loss)(
        params['d'], params['g'], batch['image'], noise)
    params['d'], opt_state['d'], d_norms = base.apply_gradients(
        self.tx_d, params['d'], opt_state['d'], d_grads, prefix='d_')
    g_loss, g_grads = jax.value_and_grad(generator_loss)(params['g'], params['d'], noise)
    params['g'], opt_state['g'], g_norms = base.apply_gradients(
        self.tx, params['g'], opt_state['g'], g_grads)
    metrics = {'loss': d_loss + g_loss, 'd_loss': d_loss, 'g_loss': g_loss,
               'num_fakes': jnp.float32(noise.shape[0]), **d_norms, **g_norms}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def toy_config(data_dir=None, total_steps=6, **overrides):
  config = config_lib.load_config(CNN_DIGITS + ':local')
  with config.unlocked():
    config.optimizer_d = config_lib.optimizer_config(name='sgd', momentum=0.0, lr=0.5)
    config.evals = {}
  config_lib.apply_overrides(config, {
      'method': f'{__name__}:Alternating', 'data.data_dir': str(data_dir),
      'total_steps': str(total_steps), 'checkpoint_every_steps': '3', 'log_every_steps': '3',
      'optimizer.name': 'sgd', 'optimizer.momentum': '0.0', 'lr': '0.1',
      'schedule.name': 'constant', 'schedule.warmup_steps': 'None', **overrides})
  return config


def test_method_found_by_path():
  assert get_method_class(f'{__name__}:Alternating') is Alternating


def test_d_step_then_g_step_against_the_new_d():
  method = Alternating(toy_config(), INFO, total_steps=6, steps_per_epoch=1)
  images = jnp.linspace(0, 1, 8 * 4).reshape(8, 2, 2, 1)
  state = method.init_state(jax.random.key(0), {'image': images})
  rng = jax.random.key(3)
  new_state, metrics = jax.jit(method.update)(state, {'image': images}, rng)

  # A literal transcription: SGD with D's learning rate 0.5, then G's 0.1 against new D.
  d, g = state.params['d'], state.params['g']
  noise = jax.random.normal(rng, (8, 1))
  d_grads = jax.grad(discriminator_loss)(d, g, images, noise)
  new_d = jax.tree.map(lambda p, dp: p - 0.5 * dp, d, d_grads)
  new_g = jax.tree.map(lambda p, dp: p - 0.1 * dp, g, jax.grad(generator_loss)(g, new_d, noise))
  stale_g = jax.tree.map(lambda p, dp: p - 0.1 * dp, g, jax.grad(generator_loss)(g, d, noise))
  chex.assert_trees_all_close(new_state.params['d'], new_d, rtol=1e-6)
  chex.assert_trees_all_close(new_state.params['g'], new_g, rtol=1e-6)
  # The check above could fail: G's step against the old D is measurably different,
  # and G moved at all.
  gap = optax.global_norm(jax.tree.map(jnp.subtract, new_g, stale_g))
  assert gap > 1e-3
  assert optax.global_norm(jax.tree.map(jnp.subtract, new_g, g)) > 1e-2
  assert {'d_grad_norm', 'd_param_norm', 'grad_norm', 'param_norm'} <= set(metrics)


def test_own_update_rides_the_loop_and_resumes(tmp_path, data_dir):
  train.train_and_evaluate(toy_config(data_dir, 6), str(tmp_path / 'straight'))
  train.train_and_evaluate(toy_config(data_dir, 3), str(tmp_path / 'resumed'))
  train.train_and_evaluate(toy_config(data_dir, 6), str(tmp_path / 'resumed'))
  chex.assert_trees_all_close(checkpointing.read_latest(tmp_path / 'straight'),
                              checkpointing.read_latest(tmp_path / 'resumed'), rtol=1e-6)
  # Counts (`num_*`) are summed over the 3 logged steps, means averaged.
  with open(tmp_path / 'straight' / 'metrics.jsonl') as f:
    logged = [json.loads(line) for line in f if 'train/num_fakes' in line]
  assert [m['train/num_fakes'] for m in logged] == [3 * 64.0, 3 * 64.0]
  assert all(0 < m['train/d_loss'] < 5 for m in logged)


def test_options_are_completed_and_misspelt_ones_are_errors():
  method = Alternating(toy_config(), INFO, total_steps=6, steps_per_epoch=1)
  assert method.options.d_steps == 1
  config = toy_config()
  with config.unlocked():
    config.alternating = dict(d_step=2)
  with pytest.raises(config_lib.ConfigError, match='alternating.d_step .*did you mean '
                                                   'alternating.d_steps'):
    Alternating(config, INFO, total_steps=6, steps_per_epoch=1)


def test_optimizer_groups_are_checked():
  config = toy_config()
  with config.unlocked():
    config.optimizer_d = dict(name='adam', b_1=0.5)
  with pytest.raises(config_lib.ConfigError, match='optimizer_d.b_1'):
    Alternating(config, INFO, total_steps=6, steps_per_epoch=1)
  with config.unlocked():
    config.optimizer_d = dict(name='adamm')
  with pytest.raises(config_lib.ConfigError, match="optimizer_d.name 'adamm'"):
    Alternating(config, INFO, total_steps=6, steps_per_epoch=1)


class WithEma(base.Method):
  """Evaluators must see `eval_state`: here, params from the model state."""
  PREDICTIONS = ('predict',)

  def init_state(self, rng, batch):
    return base.TrainState(step=jnp.zeros([], jnp.int32), params={'w': jnp.zeros([])},
                           opt_state=(), model_state={'ema': {'w': jnp.full([], 7.0)}})

  def eval_state(self, state):
    return state.replace(params=state.model_state['ema'])

  def predict(self, state, batch):
    return jnp.full((batch['image'].shape[0],), state.params['w'])


def test_prediction_functions_see_eval_state():
  method = WithEma(toy_config(), INFO, total_steps=1, steps_per_epoch=1)
  state = method.init_state(None, None)
  predict = method.prediction_function('predict')
  assert predict is method.prediction_function('predict')  # One jit cache per name.
  np.testing.assert_array_equal(predict(state, {'image': jnp.zeros((2, 1))}), [7.0, 7.0])
  with pytest.raises(config_lib.ConfigError, match="no prediction function 'sample'.*predict"):
    method.prediction_function('sample')


def test_methods_import_no_tensorflow():
  # Research code may feed methods from any input pipeline.
  code = ('import sys, vision_jax.methods.base, vision_jax.methods.classification; '
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.strip() == '[]'
