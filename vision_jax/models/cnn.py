"""LeNet-style CNNs: stages of convolutions and 2x2 pooling, then dense layers."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models

POOLINGS = ('max', 'avg', 'none')
ModuleDef = Any


def cpu_kernel_layers() -> dict[str, ModuleDef]:
  """The layers `models.get_model` injects for `config.model.cpu_kernels`."""
  from vision_jax.kernels import cpu_batch_norm, cpu_conv  # pylint: disable=g-import-not-at-top
  return {'conv': cpu_conv.Conv, 'norm': cpu_batch_norm.BatchNorm}


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 of an NHWC array with even height and width.

  Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))`, gradient included: it goes to the
  first maximum of each window (row-major), since each `where` keeps the earlier
  element on a tie. Selects are elementwise, so XLA fuses the pass and its gradient,
  where `nn.max_pool`'s gradient is a select-and-scatter, about 30 times slower on a
  CPU. Plain JAX, so every transformation (jvp, hessian, vmap) applies.
  """
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  a, b = windows[:, :, 0, :, 0], windows[:, :, 0, :, 1]
  c_, d = windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]
  top, bottom = jnp.where(b > a, b, a), jnp.where(d > c_, d, c_)
  return jnp.where(bottom > top, bottom, top)


def pool_2x2(x: jax.Array, pooling: str) -> jax.Array:
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

  `feature_maps(x, train=...)` (`model.apply(variables, x, method='feature_maps')`)
  returns the named outputs: 'stage1'..'stageK' (after each stage's pooling, at
  1/2**k of the input with 'max' or 'avg' pooling), 'pre_logits' ([N, D], the input
  of the head: the flattened last map after the hidden dense layers) and, unless
  `num_classes` is None, 'logits'. `__call__` returns 'logits', or 'pre_logits' for
  a headless model. Maps are in the compute dtype, logits in float32.

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
    num_classes: size of the logits; None for a headless backbone that returns
      its pre-logits features and has no head parameters.
    dtype: compute dtype, e.g. jnp.bfloat16; parameters stay float32 and the
      logits are returned in float32.
    conv: the convolution layer, `nn.Conv` or a drop-in with its interface and
      parameters (`cpu_kernel_layers()`).
    norm: the batch-norm layer, `nn.BatchNorm` or a drop-in.
  """
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  convs_per_stage: int = 1
  pooling: str = 'max'
  dense_features: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  use_batchnorm: bool = False
  num_classes: int | None = 10
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if self.pooling not in POOLINGS:
      raise ValueError(
          f'pooling must be one of {POOLINGS}, got {self.pooling!r}.')
    maps = {}
    for stage, width in enumerate(self.features):
      for i in range(self.convs_per_stage):
        name = f'stage{stage + 1}_conv{i + 1}'
        # BatchNorm's bias makes a convolution bias redundant.
        x = self.conv(width, (self.kernel_size, self.kernel_size),
                      use_bias=not self.use_batchnorm, dtype=self.dtype, name=name)(x)
        if self.use_batchnorm:
          x = self.norm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=self.dtype, name=f'stage{stage + 1}_bn{i + 1}')(x)
        x = nn.relu(x)
      x = maps[f'stage{stage + 1}'] = pool_2x2(x, self.pooling)

    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'dense{i + 1}')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return models.classifier_outputs(maps, x, self.num_classes, self.dtype)
