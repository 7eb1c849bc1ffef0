"""The CPU convolution kernels against XLA's convolution; how the kernels are built and chosen."""

import os
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import parallel
from vision_jax.kernels import cpu_conv, library

NHWC = ('NHWC', 'HWIO', 'NHWC')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not library.enabled(),
                                reason='no C++ compiler for the kernels')


def random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def conv_and_grads(conv, x, w, strides, padding, dy):
  """The convolution and its gradients with respect to both operands, jitted."""
  def run(x, w, dy):
    y, vjp = jax.vjp(
        lambda x, w: conv(x, w, strides, padding, dimension_numbers=NHWC), x, w)
    return (y, *vjp(dy))
  return jax.jit(run)(x, w, dy)


def assert_close(ours, xla, err_msg=''):
  """Equal up to float32 rounding of sums of products, relative to the largest value."""
  scale = float(jnp.max(jnp.abs(xla)))
  np.testing.assert_allclose(ours, xla, atol=2e-6 * scale, rtol=0, err_msg=err_msg)


def assert_close_to_xla(x, w, strides, padding):
  assert cpu_conv.covered(x, w, strides, padding, dimension_numbers=NHWC)
  y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  dy = random(y.shape, seed=2)
  ours = conv_and_grads(cpu_conv.conv_general_dilated, x, w, strides, padding, dy)
  xla = conv_and_grads(lax.conv_general_dilated, x, w, strides, padding, dy)
  for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), ours, xla):
    assert_close(a, b, name)


# (batch, height, width, in channels, out channels, kernel, strides, padding): the
# models' shapes and the edges of the kernels' blocking (widths below and above the
# 8- and 16-pixel blocks, 1 to 64 channels, asymmetric, cropping and string padding).
CASES = [
    (2, 32, 32, 16, 16, 3, (1, 1), ((1, 1), (1, 1))),
    (3, 16, 16, 32, 32, 3, (1, 1), 'SAME'),
    (2, 8, 8, 64, 64, 3, (1, 1), 'SAME'),
    (2, 14, 14, 32, 64, 5, (1, 1), 'SAME'),
    (2, 28, 28, 1, 32, 5, (1, 1), 'SAME'),
    (2, 9, 11, 3, 16, 3, (1, 1), 'SAME'),
    (1, 5, 3, 16, 48, 3, (1, 1), 'VALID'),
    (2, 7, 6, 16, 16, 3, (1, 1), ((2, 0), (0, 3))),
    (2, 6, 6, 16, 16, 3, (1, 1), ((-1, 2), (3, -1))),
    (2, 4, 4, 64, 16, 1, (1, 1), 'VALID'),
    (2, 20, 19, 2, 16, 7, (1, 1), 'SAME'),
    (2, 32, 32, 16, 32, 3, (2, 2), ((1, 1), (1, 1))),
    (2, 9, 11, 16, 32, 3, (2, 2), 'SAME'),
    (2, 9, 10, 16, 16, 3, (2, 3), 'VALID'),
    (2, 15, 15, 3, 64, 7, (2, 2), ((3, 3), (3, 3))),
    (2, 8, 8, 16, 32, 1, (2, 2), 'VALID'),
]


@pytest.mark.parametrize('n, h, w, ci, co, k, strides, padding', CASES)
def test_matches_xla_convolution_and_its_gradients(n, h, w, ci, co, k, strides, padding):
  assert_close_to_xla(random((n, h, w, ci), 0), random((k, k, ci, co), 1), strides, padding)


@pytest.mark.parametrize('change', [
    'bfloat16', 'output channels not a multiple of 16', 'dilation', 'groups', 'NCHW'])
def test_other_convolutions_are_xla_convolutions(change):
  x, w = random((2, 8, 8, 16), 0), random((3, 3, 16, 32), 1)
  kwargs = dict(dimension_numbers=NHWC)
  if change == 'bfloat16':
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  elif change == 'output channels not a multiple of 16':
    w = w[..., :10]
  elif change == 'dilation':
    kwargs['rhs_dilation'] = (2, 2)
  elif change == 'groups':
    w, kwargs['feature_group_count'] = w[:, :, :8], 2
  else:
    x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    kwargs['dimension_numbers'] = ('NCHW', 'OIHW', 'NCHW')
  assert not cpu_conv.covered(x, w, (1, 1), 'SAME', **kwargs)
  ours = jax.jit(lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs))
  assert 'vision_jax_conv' not in ours.lower(x, w).as_text()
  np.testing.assert_array_equal(
      ours(x, w), lax.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs))


def test_flax_conv_with_the_kernels_is_a_drop_in():
  x = random((4, 12, 12, 16), 0)
  ours, reference = cpu_conv.Conv(32, (3, 3)), nn.Conv(32, (3, 3))
  variables = reference.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(0), x), variables)
  assert 'vision_jax_conv' in jax.jit(ours.apply).lower(variables, x).as_text()
  chex.assert_trees_all_close(jax.jit(ours.apply)(variables, x), reference.apply(variables, x),
                              atol=1e-5)


def test_other_platforms_lower_to_xla_convolutions():
  x, w = random((2, 8, 8, 16), 0), random((3, 3, 16, 16), 1)
  def loss(x, w):
    return jnp.sum(cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                 dimension_numbers=NHWC) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
  lowered = lambda platform: grads.trace(x, w).lower(lowering_platforms=(platform,)).as_text()
  for platform in ('cuda', 'tpu'):
    assert 'vision_jax_conv' not in lowered(platform), platform
    assert 'convolution' in lowered(platform), platform
  assert 'vision_jax_conv' in lowered('cpu') and 'convolution' not in lowered('cpu')


def test_results_do_not_depend_on_thread_timing():
  x, w = random((16, 12, 12, 16), 0), random((3, 3, 16, 32), 1)
  dy = random((16, 12, 12, 32), 2)
  runs = [conv_and_grads(cpu_conv.conv_general_dilated, x, w, (1, 1), 'SAME', dy)
          for _ in range(5)]
  for run in runs[1:]:
    chex.assert_trees_all_equal(run, runs[0])


def test_vmap_of_the_kernels():
  xs, w = random((3, 2, 8, 8, 16), 0), random((3, 3, 16, 16), 1)
  conv = lambda x: cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
  expected = jnp.stack([lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
                        for x in xs])
  chex.assert_trees_all_close(jax.jit(jax.vmap(conv))(xs), expected, atol=1e-4)


def test_sharded_batch_runs_per_device_without_gathering():
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  x = jax.device_put(random((16, 8, 8, 16), 0), parallel.data_sharded(mesh))
  w = jax.device_put(random((3, 3, 16, 32), 1), parallel.replicated(mesh))
  def loss(x, w):
    y = cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
    return jnp.sum(y ** 2)
  step = jax.jit(parallel.under_mesh(mesh, jax.value_and_grad(loss, argnums=(0, 1))))
  hlo = step.lower(x, w).compile().as_text()
  calls = [line for line in hlo.splitlines() if 'custom_call_target="vision_jax_conv' in line]
  assert calls and all('f32[2,8,8,' in line or 'f32[3,3,16,32]' in line for line in calls)
  assert 'all-gather' not in hlo
  value, (dx, dw) = step(x, w)
  ref_value, (ref_dx, ref_dw) = jax.jit(jax.value_and_grad(
      lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                    dimension_numbers=NHWC) ** 2),
      argnums=(0, 1)))(x, w)
  for ours, xla in ((value, ref_value), (dx, ref_dx), (dw, ref_dw)):
    assert_close(ours, xla)
  assert dx.sharding.spec == parallel.data_sharded(mesh).spec


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, capture_output=True,
      text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu', **env})


CHECK = '''
    import jax, jax.numpy as jnp
    from vision_jax.kernels import cpu_conv, library
    x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    y = cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    print(library.enabled(), float(y[0, 4, 4, 0]))
'''


def test_built_once_into_the_cache_and_reused(tmp_path):
  first = _python(CHECK, {'VISION_JAX_CACHE_DIR': str(tmp_path)})
  assert first.stdout.split() == ['True', '144.0'], first.stderr
  [built_library] = tmp_path.glob('cpu_kernels-*.so')
  built = built_library.stat().st_mtime_ns
  second = _python(CHECK, {'VISION_JAX_CACHE_DIR': str(tmp_path)})
  assert second.stdout.split() == ['True', '144.0'], second.stderr
  assert built_library.stat().st_mtime_ns == built
  assert [p.name for p in tmp_path.iterdir()] == [built_library.name]  # no temporary files left


@pytest.mark.parametrize('env, warning', [
    ({'VISION_JAX_CPU_KERNELS': '0'}, None),
    ({'CXX': 'no-such-compiler'}, 'no C++ compiler'),
    ({'CXX': 'false'}, 'did not build'),
])
def test_without_the_kernels_xla_convolves(tmp_path, env, warning):
  result = _python(CHECK, {'VISION_JAX_CACHE_DIR': str(tmp_path), **env})
  assert result.stdout.split() == ['False', '144.0'], result.stderr
  if warning:
    assert warning in result.stderr
  assert not list(tmp_path.glob('*.so'))
