"""Faster 2-D convolutions on CPU: direct kernels called through XLA's FFI.

XLA:CPU runs the 3x3 and 5x5 convolutions of small CNNs at about 210-240 GFLOP/s on
two cores and computes their weight gradients after transposing activations into
feature-major layouts; the direct kernels of `cpu_conv.cc` run the forward pass, input
gradients and weight gradients of the same convolutions at 390-500 GFLOP/s
(BENCHMARKS.md). `Conv` is `flax.linen.Conv` with `conv_general_dilated` below, a
drop-in for `jax.lax.conv_general_dilated` that uses these kernels for the
convolutions they cover: float32, NHWC/HWIO, any strides and padding, no dilation or
groups, output channels a multiple of 16 (input gradients: input channels too).
Everything else, and every platform but the CPU (chosen when the step is lowered, by
`jax.lax.platform_dependent`), is XLA's own convolution. How the kernels are built,
turned off, and run per device of a sharded batch: `vision_jax.kernels.library`.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from vision_jax.kernels import library

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


# ---------------------------------------------------------------------------
# The kernels as JAX functions of one device's arrays.

def _forward_kernel(x, w, strides, pads):
  """y = conv(x, w) with explicit padding pads=((top, bottom), (left, right))."""
  (top, bottom), (left, right) = pads
  kh, kw, _, co = w.shape
  out_shape = (x.shape[0], (x.shape[1] + top + bottom - kh) // strides[0] + 1,
               (x.shape[2] + left + right - kw) // strides[1] + 1, co)
  return jax.ffi.ffi_call(
      'vision_jax_conv_forward', jax.ShapeDtypeStruct(out_shape, x.dtype),
      vmap_method='sequential')(x, w, stride_h=strides[0], stride_w=strides[1],
                                pad_top=top, pad_left=left)


def _weight_grad_kernel(x, dy, kernel_shape, strides, pads):
  (top, _), (left, _) = pads
  return jax.ffi.ffi_call(
      'vision_jax_conv_weight_grad', jax.ShapeDtypeStruct(kernel_shape, x.dtype),
      vmap_method='sequential')(x, dy, stride_h=strides[0], stride_w=strides[1],
                                pad_top=top, pad_left=left)


def _input_grad_kernel(dy, w, input_shape, strides, pads):
  """The input gradient as forward convolutions of dy (the transposed convolution).

  With stride s, input row i = q*s + r only receives kernel rows k = m*s + c with
  c = (r + pad) mod s, from dy rows q + (r + pad) // s - m: for each phase (r_y, r_x),
  a stride-1 convolution of dy with that flipped sub-kernel, channels transposed.
  The s*s phases are interleaved into the input's grid.
  """
  n, h, wd, ci = input_shape
  phase_rows = [_phase(r, strides[0], pads[0][0], w.shape[0], dy.shape[1], h)
                for r in range(strides[0])]
  phase_cols = [_phase(r, strides[1], pads[1][0], w.shape[1], dy.shape[2], wd)
                for r in range(strides[1])]
  rows = []
  for taps_y, count_y, pads_y, size_y in phase_rows:
    cols = []
    for taps_x, count_x, pads_x, size_x in phase_cols:
      if not count_y or not count_x:
        # No kernel tap reaches this phase (e.g. a 1x1 kernel with stride 2).
        cols.append(jnp.zeros((n, size_y, size_x, ci), dy.dtype))
        continue
      sub = jnp.swapaxes(w[taps_y][::-1][:, taps_x][:, ::-1], 2, 3)
      cols.append(_forward_kernel(dy, sub, (1, 1), (pads_y, pads_x)))
    rows.append(jnp.stack(cols, axis=3) if len(cols) > 1 else cols[0][:, :, :, None])
  grid = jnp.stack(rows, axis=2)  # (n, size_y, s_y, size_x, s_x, ci)
  grid = grid.reshape(n, grid.shape[1] * strides[0], grid.shape[3] * strides[1], ci)
  return grid[:, :h, :wd]


def _phase(r, stride, pad, kernel, dy_size, size):
  """Kernel taps (a slice) and their count, padding of dy and output length of phase r
  along one axis.

  Every phase produces ceil(size / stride) rows, so the phases stack; rows beyond
  `size` are cropped after interleaving.
  """
  taps = slice((r + pad) % stride, kernel, stride)
  count = len(range(kernel)[taps])
  rows = -(-size // stride)
  top = count - 1 - (r + pad) // stride
  return taps, count, (top, rows + count - 1 - dy_size - top), rows


def _xla_conv(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


# ---------------------------------------------------------------------------
# Differentiable convolution: the kernels on the CPU, XLA elsewhere.

def _cpu_forward(x, w, strides, pads):
  return library.per_device(lambda x, w: _forward_kernel(x, w, strides, pads), x.shape[0],
                            (library.BATCH, jax.P()), library.BATCH, x, w)


def _cpu_input_grad(dy, w, input_shape, strides, pads):
  def local(dy, w):
    return _input_grad_kernel(dy, w, (dy.shape[0], *input_shape[1:]), strides, pads)
  return library.per_device(local, dy.shape[0], (library.BATCH, jax.P()), library.BATCH,
                            dy, w)


def _cpu_weight_grad(x, dy, kernel_shape, strides, pads):
  return library.per_device(
      lambda x, dy: _weight_grad_kernel(x, dy, kernel_shape, strides, pads), x.shape[0],
      (library.BATCH, library.BATCH), jax.P(), x, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return library.on_cpu(x, lambda x: _cpu_forward(x, w, strides, pads),
                        lambda x: _xla_conv(x, w, strides, pads))


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  def xla_input_grad(dy):
    return jax.vjp(lambda x: _xla_conv(x, w, strides, pads), x)[1](dy)[0]
  def xla_weight_grad(dy):
    return jax.vjp(lambda w: _xla_conv(x, w, strides, pads), w)[1](dy)[0]
  if x.shape[-1] % library.LANES == 0:
    dx = library.on_cpu(dy, lambda dy: _cpu_input_grad(dy, w, x.shape, strides, pads),
                        xla_input_grad)
  else:
    dx = xla_input_grad(dy)
  dw = library.on_cpu(dy, lambda dy: _cpu_weight_grad(x, dy, w.shape, strides, pads),
                      xla_weight_grad)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _explicit_padding(padding, x_shape, w_shape, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def covered(x, w, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
            dimension_numbers=None, feature_group_count=1, batch_group_count=1,
            precision=None, preferred_element_type=None) -> bool:
  """Whether `conv_general_dilated` runs this convolution on the kernels (on a CPU)."""
  del precision  # float32 arithmetic either way
  if x.ndim != 4 or w.ndim != 4 or x.dtype != jnp.float32 or w.dtype != jnp.float32:
    return False
  if preferred_element_type not in (None, jnp.float32):
    return False
  if len(window_strides) != 2 or min(window_strides) < 1:
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d not in (None, 1) and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
    return False
  if lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers) != _NHWC:
    return False
  if w.shape[3] % library.LANES != 0 or x.shape[0] == 0:
    return False
  pads = _explicit_padding(padding, x.shape, w.shape, tuple(window_strides))
  out_h = x.shape[1] + sum(pads[0]) - w.shape[0] + 1
  out_w = x.shape[2] + sum(pads[1]) - w.shape[1] + 1
  return out_h > 0 and out_w > 0 and library.enabled()


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding: Any,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`jax.lax.conv_general_dilated`, on the CPU kernels where they cover the case."""
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  if not covered(lhs, rhs, window_strides, padding, **kwargs):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  strides = tuple(int(s) for s in window_strides)
  return _conv(lhs, rhs, strides, _explicit_padding(padding, lhs.shape, rhs.shape, strides))


class Conv(nn.Conv):
  """`flax.linen.Conv` on the CPU kernels where they cover the convolution."""
  conv_general_dilated: Any = conv_general_dilated
