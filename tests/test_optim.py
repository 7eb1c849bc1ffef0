"""Optimizer and schedule groups: each player's group builds its own optax optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import config_lib, optim


def config_with(**fields):
  config = config_lib.base_config()
  config.update(fields)
  return config


def test_each_group_has_its_own_learning_rate_and_rule():
  config = config_with(lr=0.1, batch_size=512, lr_batch_base=256)
  config.schedule = config_lib.schedule_config(name='constant')
  config.optimizer = config_lib.optimizer_config(name='sgd', momentum=0.0)
  config.optimizer_d = config_lib.optimizer_config(name='adam', lr=1e-3, b1=0.5)
  schedule_g, tx_g = optim.from_config(config, total_steps=10, steps_per_epoch=1)
  schedule_d, tx_d = optim.from_config(config, total_steps=10, steps_per_epoch=1,
                                       optimizer='optimizer_d')
  # Both peaks are scaled by batch_size / lr_batch_base = 2.
  assert float(schedule_g(0)) == pytest.approx(0.2)
  assert float(schedule_d(0)) == pytest.approx(2e-3)
  params, grads = {'w': jnp.ones(3)}, {'w': jnp.array([1.0, -2.0, 0.5])}
  updates, _ = tx_g.update(grads, tx_g.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.2 * grads['w'], rtol=1e-6)
  updates, _ = tx_d.update(grads, tx_d.init(params), params)
  reference, _ = optax.adam(2e-3, b1=0.5).update(grads, optax.adam(2e-3).init(params), params)
  np.testing.assert_allclose(updates['w'], reference['w'], rtol=1e-5)


def test_lars_skips_biases_for_decay_and_trust_ratio():
  config = config_with(lr=0.3)
  config.schedule = config_lib.schedule_config(name='constant')
  config.optimizer = config_lib.optimizer_config(name='lars', weight_decay=1e-6)
  _, tx = optim.from_config(config, total_steps=10, steps_per_epoch=1)
  params = {'kernel': jnp.full((2, 2), 3.0), 'bias': jnp.full((2,), 3.0)}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  reference = optax.lars(0.3, weight_decay=1e-6, weight_decay_mask=optim.weights_only,
                         trust_ratio_mask=optim.weights_only, momentum=0.9)
  expected, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_allclose(updates['kernel'], expected['kernel'], rtol=1e-6)
  np.testing.assert_allclose(updates['bias'], -0.3 * grads['bias'], rtol=1e-6)  # Plain SGD.


@pytest.mark.parametrize('group, fields, message', [
    ('optimizer', {'momentun': 0.9}, 'optimizer.momentun .*did you mean optimizer.momentum'),
    ('optimizer', {'name': 'rmsprop'}, "optimizer.name 'rmsprop'"),
    ('schedule', {'name': 'linear'}, "schedule.name 'linear'"),
    ('schedule', {'warmup_step': 5}, 'schedule.warmup_step'),
])
def test_misspelt_fields_and_unknown_names_are_errors(group, fields, message):
  config = config_lib.base_config()
  with config.ignore_type():
    config[group] = dict(config[group], **fields) if 'name' in fields else fields
  with pytest.raises(config_lib.ConfigError, match=message):
    optim.from_config(config, total_steps=10, steps_per_epoch=1)
