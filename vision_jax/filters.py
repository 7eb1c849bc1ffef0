"""Convolution and linear filters, written to be checked line by line against the slides.

Conventions used throughout:

* Convolution flips the kernel: (a ⋆ b)[i] = Σ_j a[j] · b[i − j]. Correlation
  (what `jax.lax.conv_general_dilated` computes) does not, so the kernels are
  flipped before they reach it.
* Images are HxW (grayscale), HxWxC (channels last) or NxHxWxC (a batch). A 2D
  kernel is applied to every channel independently; channels never mix.
* Boundary modes carry scipy.ndimage's names and meanings (input `a b c d`):

      'reflect'   d c b a | a b c d | d c b a   half-sample symmetric (numpy 'symmetric')
      'mirror'    d c b | a b c d | c b a       whole-sample symmetric (numpy 'reflect')
      'nearest'   a a a a | a b c d | d d d d   (numpy 'edge')
      'wrap'      a b c d | a b c d | a b c d   periodic
      'constant'  k k k k | a b c d | k k k k   k = cval

* Integer inputs are promoted to floating point (float32 unless x64 is enabled);
  outputs are never rounded or clipped back to the input's range.
* Shapes, sizes, modes and boundaries are static: under `jax.jit` pass them via
  `static_argnames` or close over them. Images, kernel values, `cval` and
  `amount` may be traced.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

_CONVOLVE_MODES = ('full', 'same', 'valid')

# scipy.ndimage boundary name -> numpy.pad mode.
_PAD_MODES = {
    'reflect': 'symmetric',
    'mirror': 'reflect',
    'nearest': 'edge',
    'wrap': 'wrap',
    'constant': 'constant',
}


def _as_float(*arrays: ArrayLike) -> list[jax.Array]:
  """Casts all arrays to one floating dtype (at least float32)."""
  arrays = [jnp.asarray(x) for x in arrays]
  dtype = jnp.result_type(*arrays, jnp.float32)
  return [x.astype(dtype) for x in arrays]


# ----------------------------------------------------------------------------- 1D


def convolve1d(a: ArrayLike, b: ArrayLike, mode: str = 'full') -> jax.Array:
  """Discrete 1D convolution, equal to `numpy.convolve(a, b, mode)`.

      full[i] = (a ⋆ b)[i] = Σ_j a[j] · b[i − j],   i = 0 … N + M − 2,

  with a[j] = 0 and b[j] = 0 outside their index ranges. With n = max(N, M) and
  m = min(N, M) (convolution commutes, so the longer array plays the signal):

      'full'   full[0 : n + m − 1]          every overlap, length n + m − 1
      'same'   full[(m − 1)//2 : … + n]     length n, centred on the longer input
      'valid'  full[m − 1 : n]              complete overlaps only, length n − m + 1

  For even m, 'same' keeps one more sample on the right than on the left,
  exactly as numpy does.

  Args:
    a: 1D signal of length N.
    b: 1D kernel of length M.
    mode: 'full', 'same' or 'valid' (static).

  Returns:
    The convolution as a floating-point array.
  """
  if mode not in _CONVOLVE_MODES:
    raise ValueError(f'mode must be one of {_CONVOLVE_MODES}, got {mode!r}')
  a, b = _as_float(a, b)
  if a.ndim != 1 or b.ndim != 1 or a.size == 0 or b.size == 0:
    raise ValueError(f'expected two non-empty 1D arrays, got shapes {a.shape} and {b.shape}')
  if b.size > a.size:
    a, b = b, a
  n, m = a.size, b.size
  # Zero padding by m − 1 on both sides gives every partial overlap ('full');
  # flipping b turns lax's correlation into a convolution.
  full = lax.conv_general_dilated(
      a[None, :, None], b[::-1, None, None],
      window_strides=(1,), padding=[(m - 1, m - 1)],
      dimension_numbers=('NWC', 'WIO', 'NWC'),
      precision=lax.Precision.HIGHEST)[0, :, 0]
  start, length = {
      'full': (0, n + m - 1),
      'same': ((m - 1) // 2, n),
      'valid': (m - 1, n - m + 1),
  }[mode]
  return full[start:start + length]


def moving_average(a: ArrayLike, r: int, mode: str = 'same') -> jax.Array:
  """Moving average over a window of 2r + 1 samples.

      c[i] = 1/(2r + 1) · Σ_{j = i−r}^{i+r} a[j]

  This is `convolve1d(a, box_kernel(2r + 1), mode)`, so the modes mean the same:

    'same' (default): c has a's length (when N >= 2r + 1) and c[i] is the
        formula at every i, with a[j] = 0 outside the signal. Index i lines up with
        index i of the input, but within r samples of either end the average
        includes those zeros and is pulled towards 0.
    'valid': only windows that lie fully inside the signal, length N − 2r;
        output k is the formula at i = k + r.
    'full': length N + 2r; output k is the formula at i = k − r.

  Args:
    a: 1D signal.
    r: window radius, a non-negative int (static).
    mode: 'full', 'same' or 'valid' (static).
  """
  if r < 0:
    raise ValueError(f'radius must be >= 0, got {r}')
  return convolve1d(a, box_kernel(2 * r + 1), mode)


# ------------------------------------------------------------------------ kernels


def _expand(kernel_1d: jax.Array, ndim: int) -> jax.Array:
  if ndim == 1:
    return kernel_1d
  if ndim == 2:
    return jnp.outer(kernel_1d, kernel_1d)
  raise ValueError(f'ndim must be 1 or 2, got {ndim}')


def box_kernel(size: int, ndim: int = 1) -> jax.Array:
  """Box (uniform) kernel: k[j] = 1/size for j = 0 … size − 1.

  With ndim=2 the kernel is the outer product k[i]·k[j] (a size x size box
  that sums to 1), as for every kernel builder here.
  """
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}')
  return _expand(jnp.full((size,), 1.0 / size), ndim)


def binomial_kernel(size: int, ndim: int = 1) -> jax.Array:
  """Binomial kernel: row n = size − 1 of Pascal's triangle over 2ⁿ.

      k[j] = C(n, j) / 2ⁿ,   j = 0 … n        (size 5: [1, 4, 6, 4, 1] / 16)

  It is the n-fold convolution of [1/2, 1/2] with itself, a discrete
  approximation of a Gaussian with variance n/4.
  """
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}')
  n = size - 1
  coefficients = jnp.array([math.comb(n, j) for j in range(size)], dtype=float)
  return _expand(coefficients / 2**n, ndim)


def gaussian_kernel(sigma: float, radius: int | None = None, ndim: int = 1) -> jax.Array:
  """Sampled, normalised Gaussian on x = −radius … radius.

      k[x] = exp(−x² / (2σ²)) / Σ_x' exp(−x'² / (2σ²))

  Normalising the samples (rather than dividing by σ√(2π)) makes the weights
  sum to exactly 1, so a blur preserves mean brightness. The default radius is
  int(4σ + 0.5), scipy.ndimage's `truncate=4.0`, which makes the weights equal
  to `scipy.ndimage.gaussian_filter1d`'s.

  Args:
    sigma: standard deviation in samples, > 0. May be traced if `radius` is given.
    radius: half-width of the kernel (static); the kernel has 2·radius + 1 taps.
    ndim: 1 for a vector, 2 for the outer product k[i]·k[j].
  """
  if radius is None:
    radius = int(4.0 * float(sigma) + 0.5)
  x = jnp.arange(-radius, radius + 1, dtype=float)
  weights = jnp.exp(-0.5 * (x / sigma) ** 2)
  return _expand(weights / weights.sum(), ndim)


# ----------------------------------------------------------------------------- 2D


def _to_nhwc(image: jax.Array) -> jax.Array:
  if image.ndim == 2:
    return image[None, :, :, None]
  if image.ndim == 3:
    return image[None]
  if image.ndim == 4:
    return image
  raise ValueError(f'expected an HxW, HxWxC or NxHxWxC image, got shape {image.shape}')


def _pad(x: jax.Array, kernel_shape: tuple[int, int], boundary: str, cval: ArrayLike) -> jax.Array:
  """Pads the H and W axes of an NHWC batch so that a 'valid' convolution keeps HxW."""
  if boundary not in _PAD_MODES:
    raise ValueError(f'boundary must be one of {tuple(_PAD_MODES)}, got {boundary!r}')
  kh, kw = kernel_shape
  # scipy.ndimage.convolve centres a size-n kernel so that
  #   out[i] = Σ_m w[m] · in[i + n//2 − m],
  # which reads (n − 1)//2 samples before i and n//2 after: for even n, one
  # more after than before.
  widths = [(0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)]
  if boundary == 'constant':
    return jnp.pad(x, widths, mode='constant', constant_values=cval)
  # The other modes copy pixels: numpy.pad applied to the index vector 0 … n − 1
  # says which input row (column) each padded row (column) is, and one gather
  # per axis copies them.
  for axis in (1, 2):
    source = np.pad(np.arange(x.shape[axis]), widths[axis], mode=_PAD_MODES[boundary])
    x = jnp.take(x, source, axis=axis)
  return x


def _depthwise_convolve_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'valid' 2D convolution of every channel of an NHWC batch with one kernel."""
  channels = x.shape[-1]
  # Flip for convolution; one (kh, kw, 1) filter per channel, kept apart by
  # feature_group_count. HIGHEST precision keeps accelerators from rounding
  # the products to bfloat16/TF32, so results match the float references.
  filters = jnp.broadcast_to(kernel[::-1, ::-1, None, None], (*kernel.shape, 1, channels))
  return lax.conv_general_dilated(
      x, filters, window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels,
      precision=lax.Precision.HIGHEST)


def separable_factors(kernel: ArrayLike,
                      rtol: float | None = None) -> tuple[jax.Array, jax.Array] | None:
  """Splits a rank-1 2D kernel into (k_row, k_col) with kernel = outer(k_col, k_row).

  A kernel is separable iff it has rank 1, i.e. its second singular value is
  zero. With the SVD  kernel = Σ_i s_i u_i v_iᵀ,  the factors are
  k_col = √s₀ u₀ and k_row = √s₀ v₀.

  Args:
    kernel: a concrete (not traced) 2D kernel.
    rtol: the kernel counts as rank 1 when s₁ <= rtol · s₀. Defaults to
      max(kernel.shape) times the machine epsilon of the kernel's dtype, which
      accepts outer products computed in that precision.

  Returns:
    (k_row, k_col) in the kernel's dtype, or None if the kernel is not rank 1.
  """
  kernel = _as_float(kernel)[0]
  if kernel.ndim != 2:
    raise ValueError(f'expected a 2D kernel, got shape {kernel.shape}')
  dtype = kernel.dtype
  if rtol is None:
    rtol = max(kernel.shape) * jnp.finfo(dtype).eps
  u, s, vt = np.linalg.svd(np.asarray(kernel, np.float64))
  if len(s) > 1 and s[1] > rtol * s[0]:
    return None
  scale = np.sqrt(s[0])
  return jnp.asarray(scale * vt[0], dtype), jnp.asarray(scale * u[:, 0], dtype)


def convolve2d_separable(image: ArrayLike, k_row: ArrayLike, k_col: ArrayLike,
                         boundary: str = 'reflect', cval: ArrayLike = 0.0) -> jax.Array:
  """2D convolution with the separable kernel outer(k_col, k_row), in two 1D passes.

      kernel[m, n] = k_col[m] · k_row[n]
      out = (image ⋆ k_col down each column) ⋆ k_row along each row

  k_col runs along the height axis (vertical), k_row along the width axis
  (horizontal). The image is padded once with the boundary rule and then
  convolved twice in 'valid' mode, so the result equals
  `convolve2d(image, jnp.outer(k_col, k_row), boundary, cval)` for every
  boundary, including 'constant' with a non-zero cval. Cost per pixel:
  len(k_col) + len(k_row) multiplications instead of their product.

  Args:
    image: HxW, HxWxC or NxHxWxC image.
    k_row: 1D kernel along W.
    k_col: 1D kernel along H.
    boundary: 'reflect', 'mirror', 'nearest', 'wrap' or 'constant' (static).
    cval: fill value for boundary='constant'.

  Returns:
    The filtered image, same shape as `image`.
  """
  image, k_row, k_col = _as_float(image, k_row, k_col)
  if k_row.ndim != 1 or k_col.ndim != 1:
    raise ValueError(f'expected 1D kernels, got shapes {k_row.shape} and {k_col.shape}')
  x = _pad(_to_nhwc(image), (k_col.size, k_row.size), boundary, cval)
  x = _depthwise_convolve_valid(x, k_col[:, None])
  x = _depthwise_convolve_valid(x, k_row[None, :])
  return x.reshape(image.shape)


def convolve2d(image: ArrayLike, kernel: ArrayLike, boundary: str = 'reflect',
               cval: ArrayLike = 0.0, separable: bool | None = None) -> jax.Array:
  """2D convolution of every channel with `kernel`, equal to `scipy.ndimage.convolve`.

  For a kh x kw kernel w and each channel,

      out[i, j] = Σ_{m, n} w[m, n] · in[i + kh//2 − m, j + kw//2 − n],

  where `in` outside the image is filled by the boundary rule. This is the
  full convolution (in ⋆ w) cropped to the image, with the kernel's centre at
  index (kh//2, kw//2). For odd sizes that is the middle tap. For even sizes
  it matches scipy.ndimage.convolve (origin=0) and differs by one sample from
  `numpy.convolve(mode='same')`, which centres at (n − 1)//2.

  Implementation: pad by the boundary rule, then one 'valid'
  `lax.conv_general_dilated` with the flipped kernel and
  feature_group_count = C, so channels stay independent.

  Args:
    image: HxW, HxWxC or NxHxWxC image.
    kernel: 2D kernel (the same for all channels).
    boundary: 'reflect' (default, as scipy), 'mirror', 'nearest', 'wrap' or
      'constant' (static).
    cval: fill value for boundary='constant'.
    separable: None (default) factors a concrete rank-1 kernel with
      `separable_factors` and takes the two-pass `convolve2d_separable` path; a
      traced kernel (e.g. a `jax.jit` argument) takes the direct path. True
      requires the separable path and raises if the kernel is traced or not
      rank 1; False always takes the direct path.

  Returns:
    The filtered image, same shape as `image`.
  """
  image, kernel = _as_float(image, kernel)
  if kernel.ndim != 2:
    raise ValueError(f'expected a 2D kernel, got shape {kernel.shape}')
  if separable is not False:
    traced = isinstance(kernel, jax.core.Tracer)
    factors = None if traced else separable_factors(kernel)
    if factors is not None:
      return convolve2d_separable(image, *factors, boundary=boundary, cval=cval)
    if separable:
      reason = 'traced (pass its factors to convolve2d_separable)' if traced else 'not rank 1'
      raise ValueError(f'separable=True but the kernel is {reason}')
  x = _pad(_to_nhwc(image), kernel.shape, boundary, cval)
  return _depthwise_convolve_valid(x, kernel).reshape(image.shape)


# ------------------------------------------------------------------------ filters


def _box_size(sigma: float) -> int:
  # A box of 2r + 1 taps has variance r(r + 1)/3. The root of r(r + 1)/3 = σ² is
  # √(3σ² + 1/4) − 1/2; rounding it to the nearest integer is a floor of √(3σ² + 1/4).
  radius = math.floor(math.sqrt(3 * sigma**2 + 0.25))
  return 2 * radius + 1


def blur(image: ArrayLike, sigma: float = 1.0, kind: str = 'gaussian',
         boundary: str = 'reflect') -> jax.Array:
  """Low-pass filter: separable Gaussian or box blur, per channel.

  'gaussian': `gaussian_kernel(sigma)` along both axes; equals
      `scipy.ndimage.gaussian_filter` over H and W (truncate=4.0).
  'box': a (2r + 1) x (2r + 1) mean with r = round(√(3σ² + 1/4) − 1/2), the
      root of r(r + 1)/3 = σ², so that the box's variance r(r + 1)/3 is about
      σ² (σ = 1 gives 3x3, σ = 2 gives 7x7 with variance exactly 4); equals
      `scipy.ndimage.uniform_filter(size=2r + 1)` over H and W.

  Args:
    image: HxW, HxWxC or NxHxWxC image.
    sigma: blur scale in pixels, a Python number (static).
    kind: 'gaussian' or 'box' (static).
    boundary: boundary mode (static), see the module docstring.
  """
  if kind == 'gaussian':
    kernel = gaussian_kernel(sigma)
  elif kind == 'box':
    kernel = box_kernel(_box_size(sigma))
  else:
    raise ValueError(f"kind must be 'gaussian' or 'box', got {kind!r}")
  return convolve2d_separable(image, kernel, kernel, boundary)


def sharpen(image: ArrayLike, amount: ArrayLike = 1.0, sigma: float = 1.0,
            boundary: str = 'reflect') -> jax.Array:
  """Unsharp masking: image + amount · (image − blur(image, sigma)).

  `image − blur` is the high-frequency detail; adding it back boosts edges.
  The result is not clipped, so it can leave the input's value range.
  """
  image = _as_float(image)[0]
  return image + amount * (image - blur(image, sigma, 'gaussian', boundary))


def sobel_gradients(image: ArrayLike, boundary: str = 'reflect') -> tuple[jax.Array, jax.Array]:
  """Sobel derivatives (gx, gy) along W (x, rightwards) and H (y, downwards).

      gx = image ⋆ ([1, 2, 1]ᵀ ⊗ [1, 0, −1])     ([1, 2, 1] down the columns)
      gy = image ⋆ ([1, 0, −1]ᵀ ⊗ [1, 2, 1])

  Convolving with [1, 0, −1] gives in[j + 1] − in[j − 1], so gx > 0 where the
  image gets brighter to the right and gy > 0 where it gets brighter
  downwards. There is no 1/8 normalisation: a ramp of slope 1 gives 8. These
  are `scipy.ndimage.sobel(x, axis=1)` and `(x, axis=0)` of each 2D channel.
  """
  derivative = jnp.array([1.0, 0.0, -1.0])
  smoothing = jnp.array([1.0, 2.0, 1.0])
  gx = convolve2d_separable(image, k_row=derivative, k_col=smoothing, boundary=boundary)
  gy = convolve2d_separable(image, k_row=smoothing, k_col=derivative, boundary=boundary)
  return gx, gy


def sobel(image: ArrayLike, boundary: str = 'reflect') -> tuple[jax.Array, jax.Array]:
  """Sobel edge magnitude and direction, per channel.

      magnitude = √(gx² + gy²),   direction = arctan2(gy, gx) ∈ [−π, π]

  with gx, gy from `sobel_gradients`. Because y points down (row index), a
  positive direction turns clockwise on screen from +x; 0 means brighter to
  the right, π/2 brighter below.
  """
  gx, gy = sobel_gradients(image, boundary)
  return jnp.hypot(gx, gy), jnp.arctan2(gy, gx)


def laplacian(image: ArrayLike, boundary: str = 'reflect') -> jax.Array:
  """Discrete Laplacian ∂²/∂x² + ∂²/∂y² with the 5-point stencil, per channel.

      out[i, j] = in[i−1, j] + in[i+1, j] + in[i, j−1] + in[i, j+1] − 4·in[i, j]

  Sign and scale are the mathematical ones on a unit grid (positive at a dark
  dot, negative at a bright one), as `scipy.ndimage.laplace` of each 2D channel.
  The stencil has rank 2, so there is no separable shortcut.
  """
  stencil = jnp.array([[0.0, 1.0, 0.0],
                       [1.0, -4.0, 1.0],
                       [0.0, 1.0, 0.0]])
  return convolve2d(image, stencil, boundary, separable=False)
