"""Layers shared by model families.

`ConvTranspose` is `flax.linen.ConvTranspose` (same parameters, same function) whose
strided transposed convolution runs, on a CPU, as one stride-1 convolution per output
phase. XLA lowers a transposed convolution to a convolution of the input dilated with
zeros (`lhs_dilation`); XLA:CPU has no fast path for that form and runs it at a tenth
of an ordinary convolution's FLOP rate while multiplying stride**2 times as many zeros
as numbers (BENCHMARKS.md, "Generative models"). Output pixel o = s*m + r only meets
the kernel taps t = r' (mod s) for one residue r' of r, so each of the s**2 phases
(r_h, r_w) is an ordinary convolution of the undilated input with a sub-kernel, and the
phases interleave into the output grid. On other platforms (chosen when the step is
lowered, by `jax.lax.platform_dependent`) it is XLA's own transposed convolution. Both
forms are plain JAX operations, so every transformation (grad, jvp, vmap, hessian)
works through the layer.
"""

import math

import flax.linen as nn
from flax.linen import linear
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def _phase_taps(kernel: int, stride: int, pad_before: int, phase: int):
  """The taps of output phase `phase` and the input offset of its first tap.

  The dilated form is y[o] = sum_t u[o + t - pad_before] w[t] with u[j] = x[j / s] at
  multiples of s (zero elsewhere), so for o = s*m + r the taps are t = t0, t0 + s, ...
  with t0 = (pad_before - r) mod s, reading x[m + offset + q] for the q-th of them.
  """
  first = (pad_before - phase) % stride
  return list(range(first, kernel, stride)), (phase + first - pad_before) // stride


def _conv_by_phases(x: jax.Array, kernel: jax.Array, strides, pads, precision,
                    preferred_element_type) -> jax.Array:
  """`lax.conv_general_dilated(x, kernel, 1, pads, lhs_dilation=strides)` (NHWC, HWIO).

  With at least 16 output channels (the CPU's vector width in float32) each phase is
  its own convolution; with fewer, the phases' sub-kernels are zero-padded to one
  window and run as one convolution with s**2 times the outputs, which vectorises
  where single channels do not (`python -m vision_jax.benchmark_conv_transpose`).
  """
  d = len(strides)
  spatial, kernel_size, features = x.shape[1:-1], kernel.shape[:-2], kernel.shape[-1]
  sizes = [(n - 1) * s + 1 + a + b - k + 1
           for n, s, (a, b), k in zip(spatial, strides, pads, kernel_size)]
  per_phase = [math.ceil(size / s) for size, s in zip(sizes, strides)]
  # Per dimension and phase: the taps and the input offset of the first.
  taps = [[_phase_taps(k, s, a, r) for r in range(s)]
          for k, s, (a, _) in zip(kernel_size, strides, pads)]
  dims = lax.conv_dimension_numbers(x.shape, kernel.shape, {
      1: ('NWC', 'WIO', 'NWC'), 2: ('NHWC', 'HWIO', 'NHWC'),
      3: ('NDHWC', 'DHWIO', 'NDHWC')}[d])

  def conv(sub_kernel, offsets):
    # Output m reads x[m + offset ...]: pad (crop, when negative) to `per_phase` outputs.
    padding = [(-offset, count - 1 + offset + window - n) for offset, window, n, count
               in zip(offsets, sub_kernel.shape[:-2], spatial, per_phase)]
    return lax.conv_general_dilated(
        x, sub_kernel, (1,) * d, padding, dimension_numbers=dims, precision=precision,
        preferred_element_type=preferred_element_type)

  if features >= 16:
    phases = []
    for phase in np.ndindex(*strides):
      chosen = [taps[i][r] for i, r in enumerate(phase)]
      if any(not t for t, _ in chosen):  # a kernel smaller than the stride
        phases.append(jnp.zeros((x.shape[0], *per_phase, features),
                                preferred_element_type or jnp.result_type(x, kernel)))
      else:
        phases.append(conv(kernel[np.ix_(*[np.array(t) for t, _ in chosen])],
                           [offset for _, offset in chosen]))
    y = jnp.stack(phases, axis=-2)  # [N, m..., phases, C]
  else:
    # One window covering every phase's taps; tap index k (past the kernel) is zero.
    first = [min(o for t, o in dim if t) for dim in taps]
    last = [max(o + len(t) - 1 for t, o in dim if t) for dim in taps]
    tables = []
    for i, dim in enumerate(taps):
      table = np.full((strides[i], last[i] - first[i] + 1), kernel_size[i])
      for r, (t, offset) in enumerate(dim):
        table[r, offset - first[i]:offset - first[i] + len(t)] = t
      shape = [1] * (2 * d)
      shape[i], shape[d + i] = table.shape
      tables.append(table.reshape(shape))
    padded = jnp.pad(kernel, [(0, 1)] * d + [(0, 0)] * 2)
    window = padded[tuple(tables)]  # [s..., K..., C_in, C]
    window = jnp.moveaxis(window, list(range(d)), list(range(d + 1, 2 * d + 1)))
    y = conv(window.reshape(*window.shape[:d + 1], -1), first)  # [N, m..., phases * C]
  # [N, m..., s..., C] -> [N, (m_1 s_1), ..., (m_d s_d), C], cropped to the output size.
  y = y.reshape(x.shape[0], *per_phase, *strides, features)
  y = y.transpose([0, *[i for j in range(d) for i in (1 + j, 1 + d + j)], 2 * d + 1])
  y = y.reshape(x.shape[0], *[m * s for m, s in zip(per_phase, strides)], features)
  return y[(slice(None), *[slice(0, size) for size in sizes])]


def _transpose_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
  """The padding of the dilated input that `lax.conv_transpose` uses for a named mode."""
  if padding == 'SAME':
    total = kernel + stride - 2
    before = kernel - 1 if stride > kernel - 1 else math.ceil(total / 2)
  elif padding == 'VALID':
    total = kernel + stride - 2 + max(kernel - stride, 0)
    before = kernel - 1
  else:
    raise ValueError(f"padding must be 'SAME', 'VALID' or (before, after) pairs, got {padding!r}")
  return before, total - before


def conv_transpose(x: jax.Array, kernel: jax.Array, strides, padding, *, precision=None,
                   preferred_element_type=None) -> jax.Array:
  """`jax.lax.conv_transpose(x, kernel, strides, padding)` for NHWC inputs and HWIO
  kernels (any number of spatial dimensions), by phases on a CPU.

  `padding` is 'SAME', 'VALID' or a sequence of (before, after) pairs, as lax takes it.
  """
  strides = tuple(strides)
  kernel_size = kernel.shape[:-2]
  if isinstance(padding, str):
    pads = [_transpose_padding(k, s, padding) for k, s in zip(kernel_size, strides)]
  else:
    pads = [tuple(p) for p in padding]

  def xla(x, kernel):
    return lax.conv_transpose(x, kernel, strides, padding, precision=precision,
                              preferred_element_type=preferred_element_type)

  if all(s == 1 for s in strides):
    return xla(x, kernel)

  def by_phases(x, kernel):
    return _conv_by_phases(x, kernel, strides, pads, precision, preferred_element_type)

  return lax.platform_dependent(x, kernel, cpu=by_phases, default=xla)


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` that runs by phases on a CPU (the module docstring).

  The same attributes, parameters and outputs; kernel dilation, masks, circular
  padding and `transpose_kernel` are Flax's own layer (they are rare in these models
  and keep XLA's form).
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = ((self.kernel_size,) if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    dilation = self.kernel_dilation
    if (self.transpose_kernel or self.mask is not None or self.padding == 'CIRCULAR'
        or (dilation is not None and set(np.ravel(dilation)) != {1})):
      return super().__call__(inputs)
    spatial = len(kernel_size)
    batch_shape = inputs.shape[:inputs.ndim - spatial - 1]
    if len(batch_shape) != 1:  # one leading batch axis, as Flax's layer does
      inputs = inputs.reshape((-1,) + inputs.shape[-spatial - 1:])
    strides = ((self.strides,) * spatial if isinstance(self.strides, int)
               else (1,) * spatial if self.strides is None else tuple(self.strides))
    kernel = self.param('kernel', self.kernel_init,
                        kernel_size + (inputs.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    padding = linear.canonicalize_padding(self.padding, spatial)
    y = conv_transpose(inputs, kernel, strides, padding, precision=self.precision,
                       preferred_element_type=self.preferred_element_type)
    if bias is not None:
      y += bias
    if len(batch_shape) != 1:
      y = y.reshape(batch_shape + y.shape[1:])
    return y
