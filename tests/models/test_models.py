"""What every classifier family shares: `get_model`, the `cpu_kernels` switch, named
feature maps and headless backbones."""

import logging
import os
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vision_jax import config_lib, models
from vision_jax.kernels import library
from vision_jax.models import cifar_resnet, cnn, resnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# family -> (config.model fields of a tiny variant, input shape, expected map shapes)
FAMILIES = {
    'cnn': (dict(name='cnn', features=(4, 8, 8), dense_features=(6,), num_classes=5),
            (2, 16, 12, 1),
            {'stage1': (2, 8, 6, 4), 'stage2': (2, 4, 3, 8), 'stage3': (2, 2, 1, 8),
             'pre_logits': (2, 6), 'logits': (2, 5)}),
    'resnet': (dict(name='resnet', depth=18, num_filters=4, num_classes=5),
               (2, 64, 64, 3),
               {'stem': (2, 32, 32, 4), 'stage1': (2, 16, 16, 4), 'stage2': (2, 8, 8, 8),
                'stage3': (2, 4, 4, 16), 'stage4': (2, 2, 2, 32), 'pre_logits': (2, 32),
                'logits': (2, 5)}),
    'resnet50': (dict(name='resnet', depth=50, num_filters=2, num_classes=5),
                 (2, 32, 32, 3),
                 {'stem': (2, 16, 16, 2), 'stage1': (2, 8, 8, 8), 'stage2': (2, 4, 4, 16),
                  'stage3': (2, 2, 2, 32), 'stage4': (2, 1, 1, 64), 'pre_logits': (2, 64),
                  'logits': (2, 5)}),
    'cifar_resnet': (dict(name='cifar_resnet', depth=8, num_filters=4, num_classes=5),
                     (2, 16, 16, 3),
                     {'stem': (2, 16, 16, 4), 'stage1': (2, 16, 16, 4),
                      'stage2': (2, 8, 8, 8), 'stage3': (2, 4, 4, 16),
                      'pre_logits': (2, 16), 'logits': (2, 5)}),
}


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('family', FAMILIES)
def test_feature_maps_are_named_and_call_returns_the_logits(family):
  config, shape, expected = FAMILIES[family]
  model = models.get_model(config)
  x = images(shape)
  for train in (False, True):
    maps, _ = jax.eval_shape(lambda x, train=train: model.init_with_output(
        jax.random.key(0), x, train=train, method='feature_maps'), x)
    assert {k: v.shape for k, v in maps.items()} == expected
  variables = jax.jit(model.init)(jax.random.key(0), x)
  # By name or as the method itself.
  logits, maps = jax.jit(lambda v, x: (
      model.apply(v, x), model.apply(v, x, method=type(model).feature_maps)))(variables, x)
  chex.assert_trees_all_close(logits, maps['logits'], atol=1e-6)
  chex.assert_type(logits, jnp.float32)


@pytest.mark.parametrize('family', FAMILIES)
def test_headless_backbone_returns_pre_logits_without_head_params(family):
  config, shape, expected = FAMILIES[family]
  model = models.get_model(config)
  headless = models.get_model(config, num_classes=None)
  x = images(shape)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  headless_variables = jax.eval_shape(headless.init, jax.random.key(0), x)
  params = dict(variables['params'])
  del params['head']
  chex.assert_trees_all_equal_shapes(headless_variables['params'], params)
  backbone = {**variables, 'params': params}
  features, headless_maps, maps = jax.jit(lambda backbone, variables, x: (
      headless.apply(backbone, x), headless.apply(backbone, x, method='feature_maps'),
      model.apply(variables, x, method='feature_maps')))(backbone, variables, x)
  chex.assert_shape(features, expected['pre_logits'])
  chex.assert_trees_all_close(features, maps['pre_logits'], atol=1e-6)
  assert set(headless_maps) == set(expected) - {'logits'}


def test_models_are_built_from_flax_layers_by_default():
  for family, (config, _, _) in FAMILIES.items():
    model = models.get_model({**config, 'cpu_kernels': False})
    assert (model.conv, model.norm) == (nn.Conv, nn.BatchNorm), family
    assert models.get_model(config).conv is nn.Conv  # a config without the field


@pytest.fixture
def no_kernel_build(monkeypatch):
  """Building, loading or asking after the kernels is an error."""
  def fail(*args, **kwargs):
    raise AssertionError('the CPU kernels were built or loaded')
  monkeypatch.setattr(library, '_load', fail)
  monkeypatch.setattr(library, '_available', fail)


@pytest.mark.usefixtures('no_kernel_build')
def test_without_the_switch_nothing_of_the_kernels_runs():
  model = models.get_model(dict(name='cifar_resnet', depth=8, num_filters=16))
  x = images((2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  jax.jit(jax.grad(lambda v: jnp.sum(model.apply(
      v, x, train=True, mutable=['batch_stats'])[0])))(variables)


@pytest.mark.usefixtures('no_kernel_build')
def test_on_another_backend_the_switch_warns_once_and_changes_nothing(monkeypatch, caplog):
  monkeypatch.setattr(models, '_warned_backends', set())
  config = dict(name='cnn', features=(16,), use_batchnorm=True, cpu_kernels=True)
  with monkeypatch.context() as m:
    m.setattr(jax, 'default_backend', lambda: 'gpu')
    with caplog.at_level(logging.WARNING):
      built = [models.get_model(config) for _ in range(2)]
  assert [r.getMessage() for r in caplog.records].count(
      "vision_jax: model.cpu_kernels is for XLA:CPU; on gpu the models use Flax's own "
      'layers') == 1
  assert all((m.conv, m.norm) == (nn.Conv, nn.BatchNorm) for m in built)
  x = images((2, 8, 8, 1))
  built[0].apply(built[0].init(jax.random.key(0), x), x)


def test_on_the_cpu_the_switch_injects_the_kernel_layers():
  from vision_jax.kernels import cpu_batch_norm, cpu_conv  # pylint: disable=g-import-not-at-top
  for module in (cnn, resnet, cifar_resnet):
    name = module.__name__.rsplit('.', 1)[-1]
    model = models.get_model({'name': name, 'cpu_kernels': True})
    assert (model.conv, model.norm) == (cpu_conv.Conv, cpu_batch_norm.BatchNorm)


def test_a_family_without_kernel_layers_rejects_the_switch(monkeypatch):
  monkeypatch.delattr(cnn, 'cpu_kernel_layers')
  with pytest.raises(config_lib.ConfigError, match="model 'cnn' has no CPU kernel"):
    models.get_model({'name': 'cnn', 'cpu_kernels': True})


def test_building_a_model_does_not_import_the_kernels():
  code = textwrap.dedent('''
      import sys
      import jax
      from vision_jax import models
      model = models.get_model({'name': 'cnn', 'features': (16,), 'cpu_kernels': False})
      x = jax.numpy.ones((1, 8, 8, 1))
      model.apply(model.init(jax.random.key(0), x), x)
      print(sorted(m for m in sys.modules if m.startswith('vision_jax.kernels')))
  ''')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['[]']
