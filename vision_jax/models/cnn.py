"""LeNet-style CNNs: stages of convolutions and 2x2 pooling, then dense layers."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.kernels import cpu_batch_norm, cpu_conv

POOLINGS = ('max', 'avg', 'none')


def _window_max(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Maximum of each 2x2 window and the position (0..3, row-major) of its first maximum."""
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  a, b = windows[:, :, 0, :, 0], windows[:, :, 0, :, 1]
  c_, d = windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]
  top, bottom = jnp.maximum(a, b), jnp.maximum(c_, d)
  top_position = jnp.where(b > a, 1, 0).astype(jnp.int8)
  bottom_position = jnp.where(d > c_, 3, 2).astype(jnp.int8)
  return (jnp.maximum(top, bottom),
          jnp.where(bottom > top, bottom_position, top_position))


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 max pooling with stride 2 of an NHWC array with even height and width.

  The gradient goes to the first maximum of each window, as with `nn.max_pool`. It is
  one elementwise pass: the forward pass keeps each window's argmax (int8), where
  `nn.max_pool`'s gradient is XLA's select-and-scatter and a max-reduction's gradient
  counts the ties of every window, both several times slower on a CPU.
  """
  return _window_max(x)[0]


def _max_pool_2x2_fwd(x):
  pooled, position = _window_max(x)
  return pooled, (position, x.shape)


def _max_pool_2x2_bwd(residuals, grad):
  position, shape = residuals
  window = jnp.arange(4, dtype=jnp.int8).reshape(2, 2)
  first_max = position[:, :, None, :, None, :] == window[:, None, :, None]
  dx = jnp.where(first_max, grad[:, :, None, :, None, :], 0)
  return (dx.reshape(shape).astype(grad.dtype),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def pool_2x2(x: jnp.ndarray, pooling: str) -> jnp.ndarray:
  """2x2 pooling with stride 2 ('VALID': an odd last row or column is dropped).

  The windows do not overlap, so they are a reshape away.
  """
  if pooling == 'none':
    return x
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  if pooling == 'max':
    return max_pool_2x2(x)
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Model(nn.Module):
  """A LeNet-style CNN: conv stages with 2x2 pooling, then a dense classifier.

  Each stage is `convs_per_stage` convolutions ('SAME' padding, ReLU, optional
  BatchNorm before the ReLU) followed by 2x2 pooling with stride 2. The last
  feature map is flattened, as in LeNet, so the first dense layer's size
  depends on the image size.

  Attributes:
    features: channels of the convolutions of each stage.
    kernel_size: side of the square convolution kernels, e.g. 3 or 5.
    convs_per_stage: convolutions in each stage before its pooling.
    pooling: 'max' or 'avg' for 2x2 pooling with stride 2 after each stage, or
      'none' to keep the resolution.
    dense_features: widths of the hidden dense layers.
    dropout_rate: dropout after each hidden dense layer, only when training
      (needs `rngs={'dropout': key}` in `apply`).
    use_batchnorm: BatchNorm after each convolution; its statistics live in
      the `batch_stats` collection.
    num_classes: size of the logits.
    dtype: compute dtype, e.g. jnp.bfloat16; parameters stay float32 and the
      logits are returned in float32.
  """
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  convs_per_stage: int = 1
  pooling: str = 'max'
  dense_features: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  use_batchnorm: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    if self.pooling not in POOLINGS:
      raise ValueError(
          f'pooling must be one of {POOLINGS}, got {self.pooling!r}.')
    for stage, width in enumerate(self.features):
      for i in range(self.convs_per_stage):
        name = f'stage{stage + 1}_conv{i + 1}'
        # BatchNorm's bias makes a convolution bias redundant.
        x = cpu_conv.Conv(width, (self.kernel_size, self.kernel_size),
                          use_bias=not self.use_batchnorm, dtype=self.dtype,
                          name=name)(x)
        if self.use_batchnorm:
          x = cpu_batch_norm.BatchNorm(use_running_average=not train, momentum=0.9,
                                       epsilon=1e-5, dtype=self.dtype,
                                       name=f'stage{stage + 1}_bn{i + 1}')(x)
        x = nn.relu(x)
      x = pool_2x2(x, self.pooling)

    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'dense{i + 1}')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    # Float32 logits keep the softmax and the loss at full precision.
    return x.astype(jnp.float32)
