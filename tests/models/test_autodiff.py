"""Every JAX transformation works through every model family, on its default layers.

For a scalar function of the input (the softmax cross-entropy of the logits against
a fixed target), in eval mode and in train mode (batch statistics; dropout with a fixed
key), `jax.grad`, `jax.vmap` of a per-example `jax.grad`, `jax.jvp`, `jax.hessian`
(over a few pixels), a Hessian-vector product and the gradient of a gradient penalty
(||df/dx||^2, w.r.t. the parameters, as in WGAN-GP or R1) all run and agree with
central finite differences, in float64 (`jax.enable_x64`, scoped to these tests).
With `cpu_kernels=True` the models compute what they compute on Flax's layers.

A new model family joins the contract with one line: its tiny variant in `VARIANTS`
(the `config.model` fields that build it and the input shape). Keep it tiny (what
costs is compiling its second derivatives), with some widths of 16, the CPU
kernels' vector width, so that the drop-in check runs them, and maps in the last
stage that leave the batch statistics more than two or three numbers to average.
"""

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})


@dataclasses.dataclass(frozen=True)
class Variant:
  model: dict[str, Any]  # the config.model fields that build it
  input_shape: tuple[int, int, int, int]  # (batch, height, width, channels)


VARIANTS = {
    'cnn': Variant(dict(name='cnn', features=(16, 16), dense_features=(16,),
                        dropout_rate=0.5, num_classes=5), (3, 8, 8, 1)),
    'cnn_batchnorm': Variant(dict(name='cnn', features=(16, 16), dense_features=(),
                                  use_batchnorm=True, num_classes=5), (3, 8, 8, 2)),
    'resnet18': Variant(dict(name='resnet', depth=18, num_filters=8, num_classes=5),
                        (4, 32, 32, 3)),
    'cifar_resnet8': Variant(dict(name='cifar_resnet', depth=8, num_filters=16,
                                  num_classes=5), (3, 8, 8, 3)),
}
MODES = [pytest.param(name, train, id=f'{name}-{"train" if train else "eval"}')
         for name in VARIANTS for train in (False, True)]
EPS = 1e-6  # central differences in float64: O(EPS^2) error, no ReLU kink crossed


def random(shape, seed, dtype=jnp.float64):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def build(name: str, dtype=jnp.float64, **overrides):
  """The variant's model, variables and input, in `dtype`."""
  variant = VARIANTS[name]
  model = models.get_model(variant.model, dtype=dtype, **overrides)
  x = random(variant.input_shape, 0, dtype)
  variables = jit(model.init)(jax.random.key(0), x)
  # Parameters away from their initial values (BatchNorm scales of one, biases of
  # zero), so that no term of the derivatives vanishes by symmetry.
  params = jax.tree.map(
      lambda p: (p * (1 + 0.1 * random(p.shape, p.size, dtype))
                 + 0.01 * random(p.shape, 1, dtype)
                 ).astype(dtype), variables['params'])
  return model, {**variables, 'params': params}, x


def loss_fn(model, variables, train: bool):
  """f(params, x): the mean softmax cross-entropy against a fixed target."""
  def f(params, x):
    v = {**variables, 'params': params}
    if train:
      logits, _ = model.apply(v, x, train=True, mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(1)})
    else:
      logits = model.apply(v, x)
    # The same soft target for every example, so that a batch of one is an example.
    target = jax.nn.softmax(jnp.arange(logits.shape[-1], dtype=logits.dtype))
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
  return f


@dataclasses.dataclass(frozen=True)
class Case:
  """A variant in one mode, in float64, with f and its gradient compiled once for the
  tests that share them."""
  params: Any
  x: jax.Array
  f: Any  # f(params, x), not compiled
  value: Any  # jit(f)
  grad_x: Any  # jit(grad of f w.r.t. x)


@functools.cache
def case(name: str, train: bool) -> Case:
  with jax.enable_x64(True):
    model, variables, x = build(name)
    f = loss_fn(model, variables, train)
    return Case(variables['params'], x, f, jit(f), jit(jax.grad(f, argnums=1)))


def central_difference(fn, x, direction, eps=EPS):
  """(fn(x + eps d) - fn(x - eps d)) / (2 eps), for arrays or trees of them."""
  shifted = lambda sign: jax.tree.map(lambda a, d: a + sign * eps * d, x, direction)
  return jax.tree.map(lambda a, b: (a - b) / (2 * eps), fn(shifted(1)), fn(shifted(-1)))


def assert_close(actual, expected, rtol=1e-5):
  """Equal up to rtol of the largest magnitude (finite differences lose digits)."""
  scale = float(np.max(np.abs(expected)))
  assert scale > 0, 'a vanishing derivative checks nothing'
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def tree_vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_grad_and_jvp_match_finite_differences(name, train):
  c = case(name, train)
  v = random(c.x.shape, 1)
  grad = c.grad_x(c.params, c.x)
  value, tangent = jit(lambda p, x, v: jax.jvp(lambda x: c.f(p, x), (x,), (v,)))(
      c.params, c.x, v)
  expected = central_difference(lambda x: c.value(c.params, x), c.x, v)
  assert_close(jnp.vdot(grad, v), expected)
  assert_close(tangent, expected)
  np.testing.assert_allclose(value, c.value(c.params, c.x), rtol=1e-12)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name', VARIANTS)
def test_vmap_of_per_example_grads(name):
  # In eval mode the examples are independent: the per-example gradients are the
  # gradient of the summed per-example losses, i.e. the batch's times its size.
  c = case(name, False)
  one = lambda p, x: c.f(p, x[None])
  per_example = jit(jax.vmap(jax.grad(one, argnums=1), in_axes=(None, 0)))(c.params, c.x)
  chex.assert_shape(per_example, c.x.shape)
  assert_close(per_example, c.x.shape[0] * c.grad_x(c.params, c.x), rtol=1e-10)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_hessian_and_hessian_vector_product(name, train):
  c = case(name, train)
  x = c.x
  pixels = np.array([0, 5, 17, x.size - 1])  # a few entries of the flattened input
  def on_pixels(p, z):
    return c.f(p, x.ravel().at[pixels].set(z).reshape(x.shape))
  hessian = jit(jax.hessian(on_pixels, argnums=1))(c.params, x.ravel()[pixels])
  chex.assert_shape(hessian, (len(pixels),) * 2)
  assert_close(hessian, hessian.T, rtol=1e-10)
  grad_on_pixels = lambda x: c.grad_x(c.params, x).ravel()[pixels]
  for j, pixel in enumerate(pixels):
    direction = jnp.zeros(x.size).at[pixel].set(1.0).reshape(x.shape)
    assert_close(hessian[:, j], central_difference(grad_on_pixels, x, direction))

  # Forward-over-reverse on the whole input, against differences of the gradient,
  # and against the Hessian above for a direction on those pixels only.
  hvp = jit(lambda p, x, v: jax.jvp(lambda x: jax.grad(c.f, argnums=1)(p, x), (x,),
                                    (v,))[1])
  v = random(x.shape, 1)
  assert_close(hvp(c.params, x, v),
               central_difference(lambda x: c.grad_x(c.params, x), x, v))
  v_pixels = jnp.zeros(x.size).at[pixels].set(random(len(pixels), 2)).reshape(x.shape)
  assert_close(hvp(c.params, x, v_pixels).ravel()[pixels],
               hessian @ v_pixels.ravel()[pixels], rtol=1e-10)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_grad_of_a_gradient_penalty(name, train):
  c = case(name, train)
  def penalty(params):
    return jnp.sum(jax.grad(c.f, argnums=1)(params, c.x) ** 2)
  grads = jit(jax.grad(penalty))(c.params)
  chex.assert_trees_all_equal_shapes(grads, c.params)
  u = jax.tree.map(lambda p: random(p.shape, p.size + 3), c.params)
  # Reverse over reverse against forward over reverse: the same number.
  tangent = jit(lambda p, u: jax.jvp(penalty, (p,), (u,))[1])(c.params, u)
  assert_close(tree_vdot(grads, u), tangent, rtol=1e-10)
  # The penalty jumps where a ReLU of the network switches, so the finite difference
  # takes a step small enough to cross none.
  expected = central_difference(
      lambda params: jnp.sum(c.grad_x(params, c.x) ** 2), c.params, u, eps=1e-9)
  assert_close(tree_vdot(grads, u), expected, rtol=1e-4)


@pytest.mark.parametrize('name', VARIANTS)
def test_cpu_kernels_compute_what_flax_layers_compute(name):
  from vision_jax.kernels import library  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu' or not library.enabled():
    pytest.skip('the CPU kernels are not available here (no C++ compiler?)')
  model, variables, x = build(name, dtype=jnp.float32)
  kernel_model = models.get_model(VARIANTS[name].model, dtype=jnp.float32,
                                  cpu_kernels=True)
  assert kernel_model.conv is not model.conv
  rngs = {'dropout': jax.random.key(1)}
  for train in (False, True):
    def forward(model, variables, x, train=train):
      return model.apply(variables, x, train=train, mutable=['batch_stats'], rngs=rngs)
    apply_k = jit(functools.partial(forward, kernel_model))
    lowered = apply_k.lower(variables, x).as_text()
    assert 'vision_jax_conv_forward' in lowered  # not vacuous: the kernels ran
    logits, stats = jit(functools.partial(forward, model))(variables, x)
    logits_k, stats_k = apply_k(variables, x)
    assert_close(logits_k, logits, rtol=1e-4)
    chex.assert_trees_all_close(stats_k, stats, rtol=1e-4, atol=1e-5)
  # And their training gradients (reverse mode, which their custom_vjps provide).
  f, f_k = loss_fn(model, variables, True), loss_fn(kernel_model, variables, True)
  grads = jit(jax.grad(f))(variables['params'], x)
  grads_k = jit(jax.grad(f_k))(variables['params'], x)
  for g_k, g in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads)):
    assert_close(g_k, g, rtol=1e-3)
