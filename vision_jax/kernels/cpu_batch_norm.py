"""Batch normalization whose reductions take one pass over memory on a CPU.

Training-mode batch norm reduces its input twice in the forward pass (the mean and the
mean square) and its output gradient twice in the backward pass; XLA:CPU runs each
reduction as its own pass over the activations, and keeps `x - mean` for the backward
pass. `BatchNorm` is `flax.linen.BatchNorm` (same variables, initialisers, running
averages, float32 statistics and output dtype; normalisation over the last axis, fast
variance E[x^2] - E[x]^2) whose gradient is written out, so that each pair of
reductions is one `channel_sums` and the backward pass recomputes the normalised input
from x. On a CPU, `channel_sums` is the kernel of `cpu_batch_norm.cc` (float32, channels
a multiple of 16); elsewhere, and otherwise, it is two `jnp.sum`s.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from vision_jax.kernels import library


def _xla_channel_sums(a, b, shift):
  axes = tuple(range(a.ndim - 1))
  return jnp.sum(a, axes), jnp.sum(a * (b - shift), axes)


def _kernel_channel_sums(a, b, shift):
  out = jax.ShapeDtypeStruct(shift.shape, jnp.float32)
  def local(a, b, shift):
    return tuple(jax.ffi.ffi_call('vision_jax_channel_sums', (out, out),
                                  vmap_method='sequential')(a, b, shift))
  return library.per_device(local, a.shape[0], (library.BATCH, library.BATCH, jax.P()),
                            (jax.P(), jax.P()), a, b, shift)


def channel_sums(a, b, shift):
  """(sum of a, sum of a * (b - shift)) over every axis but the last, in one pass."""
  if (a.dtype == b.dtype == shift.dtype == jnp.float32 and a.ndim >= 2
      and a.shape[-1] % library.LANES == 0 and library.enabled()):
    return library.on_cpu((a, b, shift), lambda args: _kernel_channel_sums(*args),
                          lambda args: _xla_channel_sums(*args))
  return _xla_channel_sums(a, b, shift)


def _moments(x):
  count = x.size // x.shape[-1]
  total, squares = channel_sums(x, x, jnp.zeros(x.shape[-1], x.dtype))
  mean = total / count
  return mean, jnp.maximum(0.0, squares / count - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x, scale, bias, epsilon: float):
  """Normalises float32 x over all but its last axis with its batch statistics.

  Returns (y, mean, var); y = (x - mean) * scale / sqrt(var + epsilon) + bias.
  """
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
  mean, var = _moments(x)
  rstd = lax.rsqrt(var + epsilon)
  y = (x - mean) * (scale * rstd) + bias
  return (y, mean, var), (x, scale, mean, rstd)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd = residuals
  dy, dmean, dvar = cotangents
  count = x.size // x.shape[-1]
  sum_dy, sum_dy_centred = channel_sums(dy, x, mean)
  sum_dy_xhat = sum_dy_centred * rstd
  xhat = (x - mean) * rstd
  dx = (scale * rstd) * (dy - sum_dy / count - xhat * (sum_dy_xhat / count))
  # The batch statistics are outputs too (for the running averages).
  dx = dx + dmean / count + dvar * (2.0 / count) * (x - mean)
  return dx, sum_dy_xhat, sum_dy


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis, with one-pass reductions on a CPU.

  Attributes are those of `flax.linen.BatchNorm` that apply to it.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = nn.initializers.zeros
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = (self.param('scale', self.scale_init, features, self.param_dtype)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = (self.param('bias', self.bias_init, features, self.param_dtype)
            if self.use_bias else jnp.zeros(features, jnp.float32))
    out_dtype = jnp.result_type(x, *([scale] if self.use_scale else []),
                                *([bias] if self.use_bias else []))
    out_dtype = self.dtype or out_dtype
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    scale, bias = scale.astype(x32.dtype), bias.astype(x32.dtype)
    if use_running_average:
      rstd = lax.rsqrt(ra_var.value + self.epsilon)
      y = (x32 - ra_mean.value) * (scale * rstd) + bias
    else:
      y, mean, var = batch_norm(x32, scale, bias, self.epsilon)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(out_dtype)
