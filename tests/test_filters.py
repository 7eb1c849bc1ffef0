"""Tests for vision_jax.filters against numpy.convolve and scipy.ndimage.

JAX computes in float32 here, so comparisons with the float64 references allow
1e-5 relative error, measured against the largest value the filter can produce
(Σ|w| · max|x|). One test repeats the 2D sweep in float64 with x64 enabled.
"""

import functools
import importlib.util
import os
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.data

from vision_jax import filters

BOUNDARIES = ('reflect', 'mirror', 'nearest', 'wrap', 'constant')
CVAL = 0.7  # non-zero, so 'constant' padding is visibly different from zeros
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_close(actual, expected, scale=1.0, tol=1e-5):
  """|actual − expected| <= tol · (|expected| + scale), elementwise."""
  actual = np.asarray(actual, np.float64)
  chex.assert_shape(actual, expected.shape)
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def bound(image, kernel):
  """The largest |output| a kernel can produce on an image (and cval)."""
  return float(np.abs(kernel).sum() * max(np.abs(image).max(), CVAL))


def per_channel(fn, image):
  """Applies a 2D scipy filter to every HxW slice of an HxW, HxWxC or NxHxWxC array."""
  if image.ndim == 2:
    return fn(image)
  batch = image.reshape((-1,) + image.shape[-3:])
  out = np.stack([[fn(x[..., c]) for c in range(x.shape[-1])] for x in batch])
  return out.transpose(0, 2, 3, 1).reshape(image.shape)


def on_hw(value, other, ndim):
  """Per-axis scipy argument: `value` on the H and W axes, `other` on N and C."""
  first = 1 if ndim == 4 else 0
  return tuple(value if axis in (first, first + 1) else other for axis in range(ndim))


def random_images(rng, height=9, width=11):
  """HxW, HxWxC and NxHxWxC random images."""
  return [rng.standard_normal((height, width)),
          rng.standard_normal((height, width, 3)),
          rng.standard_normal((2, height, width, 2))]


@pytest.fixture(scope='module')
def camera():
  """64x64 grayscale crop of skimage's cameraman, values in [0, 1]."""
  return skimage.data.camera()[100:164, 200:264] / 255.0


@pytest.fixture(scope='module')
def chelsea():
  """64x64x3 crop of skimage's cat photo, values in [0, 1]."""
  return skimage.data.chelsea()[60:124, 100:164] / 255.0


@pytest.fixture(scope='module')
def photos(camera, chelsea):
  """Photo inputs of every rank: HxW (camera), HxWxC (cat), NxHxWxC (two cat crops)."""
  cat_batch = np.stack([chelsea, skimage.data.chelsea()[150:214, 250:314] / 255.0])
  return [camera, chelsea, cat_batch]


# ----------------------------------------------------------------------------- 1D

@pytest.mark.parametrize('mode', ['full', 'same', 'valid'])
@pytest.mark.parametrize('n, m', [(12, 3), (12, 4), (3, 12), (4, 12), (7, 7), (6, 6),
                                  (1, 5), (5, 1), (1, 1)])
def test_convolve1d_matches_numpy(n, m, mode):
  rng = np.random.default_rng(n * 100 + m)
  a, b = rng.standard_normal(n), rng.standard_normal(m)
  expected = np.convolve(a, b, mode)
  assert_close(filters.convolve1d(a, b, mode), expected, scale=bound(a, b))


def test_convolve1d_definition_on_integers():
  # (a ⋆ b)[i] = Σ_j a[j] b[i − j] for a = [1, 2, 3], b = [1, 10, 100].
  out = filters.convolve1d(np.array([1, 2, 3]), np.array([1, 10, 100]))
  np.testing.assert_array_equal(out, [1, 12, 123, 230, 300])
  assert jnp.issubdtype(out.dtype, jnp.floating)


def test_convolve1d_jit_and_vmap_agree():
  rng = np.random.default_rng(0)
  signals, kernel = rng.standard_normal((4, 20)), rng.standard_normal(5)
  for mode in ('full', 'same', 'valid'):
    expected = np.stack([np.convolve(s, kernel, mode) for s in signals])
    jitted = jax.jit(filters.convolve1d, static_argnames='mode')
    vmapped = jax.vmap(functools.partial(filters.convolve1d, mode=mode), in_axes=(0, None))
    assert_close(jnp.stack([jitted(s, kernel, mode=mode) for s in signals]), expected, 10.0)
    assert_close(vmapped(signals, kernel), expected, 10.0)
    assert_close(jax.jit(vmapped)(signals, kernel), expected, 10.0)


def test_convolve1d_rejects_bad_input():
  with pytest.raises(ValueError, match='mode'):
    filters.convolve1d(np.ones(3), np.ones(2), 'circular')
  with pytest.raises(ValueError, match='1D'):
    filters.convolve1d(np.ones((3, 3)), np.ones(2))


@pytest.mark.parametrize('r', [0, 1, 3])
def test_moving_average_formula(r):
  rng = np.random.default_rng(r)
  a = rng.standard_normal(15)
  n = len(a)
  # c[i] = 1/(2r+1) Σ_{j=i−r}^{i+r} a[j], with a[j] = 0 outside the signal.
  formula = np.array([sum(a[j] for j in range(i - r, i + r + 1) if 0 <= j < n) / (2 * r + 1)
                      for i in range(n)])
  assert_close(filters.moving_average(a, r), formula)
  windows = np.lib.stride_tricks.sliding_window_view(a, 2 * r + 1)
  assert_close(filters.moving_average(a, r, 'valid'), windows.mean(axis=-1))
  assert_close(filters.moving_average(a, r, 'full'),
               np.convolve(a, np.full(2 * r + 1, 1 / (2 * r + 1)), 'full'))


def test_moving_average_of_constant_is_constant_inside():
  out = filters.moving_average(np.full(10, 2.0), 2)
  np.testing.assert_allclose(out[2:-2], 2.0, rtol=1e-6)
  # 'same' treats samples outside the signal as zeros: the ends are pulled down.
  np.testing.assert_allclose(out[:2], [2.0 * 3 / 5, 2.0 * 4 / 5], rtol=1e-6)


# ------------------------------------------------------------------------ kernels

def test_binomial_kernel_exact_values():
  np.testing.assert_array_equal(filters.binomial_kernel(5), np.array([1, 4, 6, 4, 1]) / 16)
  np.testing.assert_array_equal(filters.binomial_kernel(1), [1.0])
  np.testing.assert_array_equal(filters.binomial_kernel(2), [0.5, 0.5])
  pascal = np.array([1.0])
  for size in range(2, 10):
    pascal = np.convolve(pascal, [0.5, 0.5])
    kernel = np.asarray(filters.binomial_kernel(size), np.float64)
    np.testing.assert_array_equal(kernel, pascal)
    offsets = np.arange(size) - (size - 1) / 2
    np.testing.assert_allclose((kernel * offsets**2).sum(), (size - 1) / 4)


def test_box_kernel():
  np.testing.assert_allclose(filters.box_kernel(4), [0.25] * 4)
  np.testing.assert_allclose(filters.box_kernel(3, ndim=2), np.full((3, 3), 1 / 9), rtol=1e-6)


@pytest.mark.parametrize('sigma, radius', [(0.5, None), (1.0, None), (1.7, None),
                                           (3.0, None), (1.0, 2), (2.0, 10)])
def test_gaussian_kernel_matches_scipy_weights(sigma, radius):
  kernel = np.asarray(filters.gaussian_kernel(sigma, radius), np.float64)
  expected_radius = int(4.0 * sigma + 0.5) if radius is None else radius
  assert kernel.shape == (2 * expected_radius + 1,)
  # gaussian_filter1d's weights are its response to a unit impulse.
  impulse = np.zeros_like(kernel)
  impulse[expected_radius] = 1.0
  weights = ndi.gaussian_filter1d(impulse, sigma, mode='constant', radius=radius)
  np.testing.assert_allclose(kernel, weights, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)


def test_gaussian_kernel_traced_sigma_with_static_radius():
  kernel_of = jax.jit(lambda s: filters.gaussian_kernel(s, radius=4))
  assert_close(kernel_of(1.3), np.asarray(filters.gaussian_kernel(1.3, radius=4), np.float64))


@pytest.mark.parametrize('make_kernel', [
    lambda ndim: filters.box_kernel(4, ndim=ndim),
    lambda ndim: filters.binomial_kernel(5, ndim=ndim),
    lambda ndim: filters.gaussian_kernel(1.2, ndim=ndim),
])
def test_2d_kernels_are_outer_products(make_kernel):
  k1, k2 = make_kernel(1), make_kernel(2)
  np.testing.assert_allclose(k2, np.outer(k1, k1), rtol=1e-6)
  np.testing.assert_allclose(np.sum(k2), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match='ndim'):
    make_kernel(3)


# ----------------------------------------------------------------------------- 2D

@pytest.mark.parametrize('boundary', BOUNDARIES)
@pytest.mark.parametrize('kernel_shape', [(3, 3), (4, 4), (2, 5), (1, 1)])
def test_convolve2d_matches_scipy_on_random_images(boundary, kernel_shape):
  rng = np.random.default_rng(sum(kernel_shape))
  kernel = rng.standard_normal(kernel_shape)
  for image in random_images(rng):
    expected = per_channel(lambda x: ndi.convolve(x, kernel, mode=boundary, cval=CVAL), image)
    out = filters.convolve2d(image, kernel, boundary, cval=CVAL)
    assert_close(out, expected, scale=bound(image, kernel))


@pytest.mark.parametrize('boundary', BOUNDARIES)
def test_convolve2d_kernel_larger_than_image(boundary):
  # The padding is wider than the image, so the boundary rule repeats.
  rng = np.random.default_rng(1)
  image, kernel = rng.standard_normal((5, 6)), rng.standard_normal((13, 12))
  expected = ndi.convolve(image, kernel, mode=boundary, cval=CVAL)
  assert_close(filters.convolve2d(image, kernel, boundary, cval=CVAL), expected,
               scale=bound(image, kernel))


@pytest.mark.parametrize('boundary', BOUNDARIES)
def test_convolve2d_matches_scipy_on_photos(boundary, photos):
  rng = np.random.default_rng(2)
  kernels = [np.asarray(filters.gaussian_kernel(1.5, ndim=2), np.float64),  # separable, odd
             rng.standard_normal((4, 4))]  # dense, even
  for image in photos:
    for kernel in kernels:
      expected = per_channel(lambda x: ndi.convolve(x, kernel, mode=boundary, cval=CVAL), image)
      out = filters.convolve2d(image, kernel, boundary, cval=CVAL)
      assert_close(out, expected, scale=bound(image, kernel))


def test_convolve2d_in_float64(camera):
  rng = np.random.default_rng(3)
  kernel = rng.standard_normal((4, 5))
  with jax.enable_x64(True):
    for boundary in BOUNDARIES:
      out = filters.convolve2d(camera, kernel, boundary, cval=CVAL)
      assert out.dtype == jnp.float64
      expected = ndi.convolve(camera, kernel, mode=boundary, cval=CVAL)
      assert_close(out, expected, scale=bound(camera, kernel), tol=1e-12)


def test_convolve2d_promotes_uint8():
  image = skimage.data.camera()[:16, :16]
  out = filters.convolve2d(image, filters.box_kernel(3, ndim=2))
  assert out.dtype == jnp.float32
  expected = ndi.uniform_filter(image.astype(np.float64), size=3)
  assert_close(out, expected, scale=255.0)


def test_convolve2d_rejects_bad_input():
  with pytest.raises(ValueError, match='boundary'):
    filters.convolve2d(np.ones((4, 4)), np.ones((3, 3)), 'periodic')
  with pytest.raises(ValueError, match='image'):
    filters.convolve2d(np.ones(4), np.ones((3, 3)))
  with pytest.raises(ValueError, match='2D kernel'):
    filters.convolve2d(np.ones((4, 4)), np.ones(3))


# ---------------------------------------------------------------- separable path

def test_separable_factors():
  gaussian = filters.gaussian_kernel(1.0, ndim=2)
  k_row, k_col = filters.separable_factors(gaussian)
  np.testing.assert_allclose(np.outer(k_col, k_row), gaussian, atol=1e-7)

  rng = np.random.default_rng(4)
  u, v = rng.standard_normal(4), rng.standard_normal(3)
  k_row, k_col = filters.separable_factors(np.outer(u, v))
  np.testing.assert_allclose(np.outer(k_col, k_row), np.outer(u, v), atol=1e-6)
  assert filters.separable_factors(rng.standard_normal((1, 5))) is not None

  assert filters.separable_factors(rng.standard_normal((3, 3))) is None
  laplace_stencil = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]])  # rank 2
  assert filters.separable_factors(laplace_stencil) is None


@pytest.mark.parametrize('boundary', BOUNDARIES)
@pytest.mark.parametrize('rows, cols', [(3, 3), (4, 4), (2, 5), (5, 1)])
def test_separable_and_direct_paths_agree(boundary, rows, cols):
  rng = np.random.default_rng(rows * 10 + cols)
  image = random_images(rng)[0]
  k_row, k_col = rng.standard_normal(cols), rng.standard_normal(rows)
  kernel = np.outer(k_col, k_row)
  scale = bound(image, kernel)
  expected = ndi.convolve(image, kernel, mode=boundary, cval=CVAL)
  separable = filters.convolve2d_separable(image, k_row, k_col, boundary, cval=CVAL)
  direct = filters.convolve2d(image, kernel, boundary, cval=CVAL, separable=False)
  detected = filters.convolve2d(image, kernel, boundary, cval=CVAL)
  for out in (separable, direct, detected):
    assert_close(out, expected, scale=scale)


def test_convolve2d_chooses_path():
  image = np.random.default_rng(5).standard_normal((8, 8))
  spy = mock.patch.object(filters, 'convolve2d_separable', wraps=filters.convolve2d_separable)
  with spy as separable_path:
    filters.convolve2d(image, filters.gaussian_kernel(1.0, ndim=2))
    assert separable_path.call_count == 1
    filters.convolve2d(image, np.eye(3))
    filters.convolve2d(image, filters.gaussian_kernel(1.0, ndim=2), separable=False)
    # A jit argument is traced, so its rank cannot be checked: direct path.
    jax.jit(filters.convolve2d)(image, filters.gaussian_kernel(1.0, ndim=2))
    assert separable_path.call_count == 1
  with pytest.raises(ValueError, match='not rank 1'):
    filters.convolve2d(image, np.eye(3), separable=True)
  with pytest.raises(ValueError, match='traced'):
    jax.jit(functools.partial(filters.convolve2d, separable=True))(image, np.ones((3, 3)))


# ---------------------------------------------------------------------- filters

@pytest.mark.parametrize('boundary', ['reflect', 'nearest', 'constant'])
def test_blur_gaussian_matches_scipy(boundary, photos):
  for image in photos:
    expected = ndi.gaussian_filter(image, on_hw(1.5, 0, image.ndim), mode=boundary)
    assert_close(filters.blur(image, 1.5, boundary=boundary), expected)


@pytest.mark.parametrize('sigma, size', [(0.4, 1), (1.0, 3), (3.0, 11)])
def test_blur_box_matches_uniform_filter(sigma, size, chelsea):
  expected = ndi.uniform_filter(chelsea, (size, size, 1))
  assert_close(filters.blur(chelsea, sigma, kind='box'), expected)


def test_blur_box_of_impulse():
  impulse = np.zeros((11, 11))
  impulse[5, 5] = 1.0
  out = filters.blur(impulse, 2.0, kind='box')  # variance 4 = σ²: a 7x7 box
  expected = np.zeros((11, 11))
  expected[2:9, 2:9] = 1 / 49
  assert_close(out, expected)
  with pytest.raises(ValueError, match='kind'):
    filters.blur(impulse, 1.0, kind='median')


def test_sharpen_is_unsharp_mask(photos):
  for image in photos:
    blurred = ndi.gaussian_filter(image, on_hw(2.0, 0, image.ndim))
    expected = image + 1.5 * (image - blurred)
    assert_close(filters.sharpen(image, 1.5, sigma=2.0), expected)
    assert_close(filters.sharpen(image, 0.0, sigma=2.0), image)


@pytest.mark.parametrize('boundary', BOUNDARIES)
def test_sobel_matches_scipy(boundary, photos):
  for image in photos:
    sobel = lambda x, axis: ndi.sobel(x, axis=axis, mode=boundary)
    gx = per_channel(functools.partial(sobel, axis=1), image)
    gy = per_channel(functools.partial(sobel, axis=0), image)
    magnitude, direction = filters.sobel(image, boundary)
    assert_close(magnitude, np.hypot(gx, gy), scale=4.0)
    # The direction is only defined, and only well conditioned, on edges.
    edges = np.hypot(gx, gy) > 0.05
    angle_error = np.angle(np.exp(1j * (np.asarray(direction) - np.arctan2(gy, gx))))
    assert np.abs(angle_error[edges]).max() < 1e-3


def test_sobel_on_ramps():
  rows, cols = np.mgrid[0:8, 0:8].astype(np.float64)
  gx, gy = filters.sobel_gradients(cols)  # brighter to the right, slope 1
  assert_close(gx[1:-1, 1:-1], np.full((6, 6), 8.0))  # unnormalised: 2 · (1 + 2 + 1)
  assert_close(gy, np.zeros((8, 8)))
  _, direction = filters.sobel(cols)
  assert_close(direction[1:-1, 1:-1], np.zeros((6, 6)))
  _, direction = filters.sobel(rows)  # brighter downwards
  assert_close(direction[1:-1, 1:-1], np.full((6, 6), np.pi / 2))


@pytest.mark.parametrize('boundary', BOUNDARIES)
def test_laplacian_matches_scipy(boundary, photos):
  for image in photos:
    expected = per_channel(lambda x: ndi.laplace(x, mode=boundary), image)
    assert_close(filters.laplacian(image, boundary), expected, scale=8.0)


def test_laplacian_sign_and_scale():
  rows, cols = np.mgrid[0:7, 0:7].astype(np.float64)
  # ∇²(x² + y²) = 4 on a unit grid.
  assert_close(filters.laplacian(rows**2 + cols**2)[1:-1, 1:-1], np.full((5, 5), 4.0), 100.0)
  bright_dot = np.zeros((5, 5))
  bright_dot[2, 2] = 1.0
  assert float(filters.laplacian(bright_dot)[2, 2]) == -4.0


# -------------------------------------------------------------- jit and vmap

class JitAgreementTest(chex.TestCase):
  """Every filter gives the same result with and without jax.jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_filters(self):
    image = skimage.data.chelsea()[:32, :32] / 255.0
    cases = [
        (functools.partial(filters.convolve2d, boundary='wrap', cval=0.0),
         (image, np.random.default_rng(6).standard_normal((4, 3)))),
        (functools.partial(filters.convolve2d_separable, boundary='constant'),
         (image, np.array([1.0, 2.0]), np.array([1.0, 0.0, -1.0]))),
        (functools.partial(filters.blur, sigma=1.0), (image,)),
        (functools.partial(filters.blur, sigma=1.0, kind='box'), (image,)),
        (functools.partial(filters.sharpen, sigma=1.0), (image, 0.5)),
        (filters.sobel, (image,)),
        (filters.laplacian, (image,)),
        (functools.partial(filters.moving_average, r=2), (image[0, :, 0],)),
        (functools.partial(filters.convolve1d, mode='same'), (image[0, :, 0], np.ones(4))),
    ]
    for fn, args in cases:
      chex.assert_trees_all_close(self.variant(fn)(*args), fn(*args), rtol=1e-5, atol=1e-5)


def test_jit_does_not_retrace_for_new_values():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def edges(image):
    return filters.sobel(filters.blur(image, 1.0))[0]

  rng = np.random.default_rng(7)
  for _ in range(3):
    edges(rng.standard_normal((16, 16, 3)).astype(np.float32))


def test_vmap_over_images_equals_batch(photos):
  gray_batch = np.stack([photos[0], photos[0].T, photos[0][::-1]])  # N x H x W
  kernel = np.random.default_rng(8).standard_normal((4, 3))
  batched = filters.convolve2d(gray_batch[..., None], kernel, 'mirror')[..., 0]
  vmapped = jax.vmap(lambda x: filters.convolve2d(x, kernel, 'mirror'))(gray_batch)
  expected = np.stack([ndi.convolve(x, kernel, mode='mirror') for x in gray_batch])
  assert_close(vmapped, expected, scale=bound(gray_batch, kernel))
  assert_close(batched, expected, scale=bound(gray_batch, kernel))
  magnitude = jax.jit(jax.vmap(lambda x: filters.sobel(x)[0]))(photos[2])
  assert_close(magnitude, np.asarray(filters.sobel(photos[2])[0], np.float64))


# ------------------------------------------------------------------------- demo

def test_demo_writes_both_figures(tmp_path):
  path = os.path.join(REPO_ROOT, 'experiments', 'filters', 'demo.py')
  spec = importlib.util.spec_from_file_location('filters_demo', path)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  workdir = tmp_path / 'figures'
  paths = demo.main(['--workdir', str(workdir)])
  assert sorted(os.path.basename(p) for p in paths) == ['filters_1d.png', 'filters_chelsea.png']
  for path in paths:
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    assert pixels.std() > 0.01  # not a blank canvas
