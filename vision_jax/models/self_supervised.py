"""The heads of the self-supervised methods, on an encoder from any model family.

`EncoderWithHead(encoder, head)` puts a head on the pooled features h = f(x) of a
headless encoder (any family built with `num_classes=None`): SimCLR's projection
g(h) (Chen et al. 2020), or rotation prediction's 4-way classifier (Gidaris et al.
2018). Its variables are `{'encoder': ..., 'head': ...}` in every collection, so a
classifier can start from the encoder alone (`init_from.subtrees =
('params/encoder:params', 'model_state/batch_stats/encoder:model_state/batch_stats')`)
and the head is thrown away after pretraining.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """An MLP on pooled features: Dense (+ BatchNorm) + ReLU per hidden layer, then Dense.

  SimCLR's g is one hidden layer, g(h) = W2 ReLU(W1 h), as wide as h (2048 for a
  ResNet-50); with no hidden layer it is a linear classifier.

  Attributes:
    features: the output width (128 in SimCLR; 4 rotation classes).
    hidden_features: widths of the hidden layers; None in it means as wide as the input.
    use_batchnorm: BatchNorm after each hidden Dense (SimCLR's code has it; the paper's
      Algorithm 1 does not).
    dtype: compute dtype; the output is float32.
  """
  features: int = 128
  hidden_features: Sequence[int | None] = (None,)
  use_batchnorm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    x = h
    for i, width in enumerate(self.hidden_features):
      x = nn.Dense(width or h.shape[-1], use_bias=not self.use_batchnorm, dtype=self.dtype,
                   name=f'hidden{i + 1}')(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name=f'bn{i + 1}')(x)
      x = nn.relu(x)
    x = nn.Dense(self.features, dtype=self.dtype, name='out')(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class EncoderWithHead(nn.Module):
  """`(h, head(h))` for h = encoder(x), the encoder's pooled features.

  Attributes:
    encoder: a headless model (`num_classes=None`) mapping images to [N, D] features.
    head: a module on those features, called as `head(h, train=...)`.
  """
  encoder: nn.Module
  head: nn.Module

  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    h = self.encoder(x, train=train)
    return h, self.head(h, train=train)

  def embed(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The encoder's features h alone (what probes and fine-tuning use)."""
    return self.encoder(x, train=train)
