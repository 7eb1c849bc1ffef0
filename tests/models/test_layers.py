"""`vision_jax.layers.ConvTranspose`: Flax's transposed convolution, computed by phases.

The same parameters and the same outputs as `flax.linen.ConvTranspose` over kernel
sizes, strides and paddings (kernels smaller than the stride, negative phase offsets,
odd output sizes), the same gradients, and on a CPU no input-dilated convolution left
in the compiled step. Its derivatives under every transformation are checked through
the models that use it in tests/models/test_autodiff.py.
"""

import functools
import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import layers

jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.usefixtures('x64')
# Both forms: one convolution per phase (16 outputs and more), one for all (fewer).
@pytest.mark.parametrize('kernel, stride, features', [
    *itertools.product([1, 3, 4], [2, 3], [3]), (3, 2, 16), (4, 3, 16), (1, 2, 16)])
def test_outputs_and_parameters_are_flaxs(kernel, stride, features):
  x = jax.random.normal(jax.random.key(1), (2, 4, 5, 3), jnp.float64)
  for padding in ('SAME', 'VALID', ((1, 2), (0, 3)), 1):
    reference, phases = (
        module(features, (kernel, kernel + 1), strides=(stride, stride), padding=padding,
               param_dtype=jnp.float64)
        for module in (nn.ConvTranspose, layers.ConvTranspose))
    variables = jit(reference.init)(jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(phases.init, jax.random.key(0), x), variables)
    expected = jit(reference.apply)(variables, x)
    np.testing.assert_allclose(jit(phases.apply)(variables, x), expected, rtol=0,
                               atol=1e-12, err_msg=f'padding {padding!r}')


@pytest.mark.usefixtures('x64')
def test_one_dimensional_unbatched_and_extra_batch_axes():
  for shape, kernel in (((2, 3, 7, 2), (3,)), ((7, 2), (3,)), ((2, 5, 6, 2), (4, 3))):
    x = jax.random.normal(jax.random.key(2), shape, jnp.float64)
    reference = nn.ConvTranspose(3, kernel, strides=2, padding='SAME', param_dtype=jnp.float64)
    variables = reference.init(jax.random.key(0), x)
    np.testing.assert_allclose(
        layers.ConvTranspose(3, kernel, strides=2, padding='SAME',
                             param_dtype=jnp.float64).apply(variables, x),
        reference.apply(variables, x), rtol=0, atol=1e-12)


@pytest.mark.usefixtures('x64')
def test_gradients_are_flaxs():
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3), jnp.float64)
  weights = jax.random.normal(jax.random.key(3), (2, 10, 10, 16), jnp.float64)

  def loss(module):
    return lambda v, x: jnp.sum(weights * jnp.tanh(module.apply(v, x)))

  args = dict(features=16, kernel_size=(4, 4), strides=(2, 2), padding='SAME',
              param_dtype=jnp.float64)
  variables = nn.ConvTranspose(**args).init(jax.random.key(0), x)
  expected = jit(jax.grad(loss(nn.ConvTranspose(**args)), argnums=(0, 1)))(variables, x)
  actual = jit(jax.grad(loss(layers.ConvTranspose(**args)), argnums=(0, 1)))(variables, x)
  chex.assert_trees_all_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_no_dilated_convolution_on_the_cpu():
  if jax.default_backend() != 'cpu':
    pytest.skip('the phases are the CPU form')
  module = layers.ConvTranspose(8, (3, 3), strides=(2, 2), padding='SAME')
  x = jnp.zeros((2, 7, 7, 4))
  variables = module.init(jax.random.key(0), x)
  step = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2)))
  assert 'lhs_dilate' not in step.lower(variables, x).compile().as_text()
  reference = jax.jit(jax.grad(lambda v, x: jnp.sum(
      nn.ConvTranspose(8, (3, 3), strides=(2, 2), padding='SAME').apply(v, x) ** 2)))
  assert 'lhs_dilate' in reference.lower(variables, x).compile().as_text()  # not vacuous
