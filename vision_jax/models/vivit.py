"""ViViT's factorised encoder (Arnab et al., 2021, "ViViT: A Video Vision Transformer",
model 2), on clips [B, T, H, W, C].

Tubelet embedding: a convolution whose kernel and stride are t x p x p cuts the clip
into non-overlapping tubes, each a token. A spatial Transformer encoder mixes the tokens
of each time index, with its own class token, and gives one vector per time index; a
temporal Transformer encoder mixes those, with a second class token, whose output is
classified. Attention is therefore spatial then temporal, and costs
O((h w)^2 T' + T'^2) rather than O((h w T')^2). Position embeddings are learned, as in
scenic's `projects/vivit`. The blocks are the ViT's (`models.transformer`).

Where the factorisation lives: in two separate encoders, one after the other (the paper's
model 2, "factorised encoder", a late fusion of time), not inside each block (model 3,
"factorised self-attention", which alternates spatial and temporal attention in every
block, as TimeSformer's divided attention does). Initialisation: everything from scratch
with the ViT's initialisers (Xavier-uniform kernels, zero class tokens, position
embeddings N(0, 0.02)). The paper starts the spatial encoder and the tubelet embedding
from an image ViT ("central frame" inflation of the 2D patch kernel) and the temporal
encoder from scratch; loading such weights is `config.init_from`'s work, not the model's.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.models import transformer


def _with_class_token(x: jax.Array, name: str, parent: nn.Module) -> jax.Array:
  """Prepends a learned class token to tokens [N, L, D] and adds learned positions."""
  n, length, width = x.shape
  cls = parent.param(f'{name}_cls', nn.initializers.zeros, (1, 1, width), jnp.float32)
  x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, width)), x], axis=1)
  posemb = parent.param(f'{name}_posemb', nn.initializers.normal(stddev=0.02),
                        (1, length + 1, width), jnp.float32)
  return x + posemb.astype(x.dtype)


class Model(nn.Module):
  """Tubelet embedding, spatial encoder per time index, temporal encoder, linear head.

  `feature_maps(x, train=...)` returns the named outputs: 'stem' (the tubelet
  embeddings [B, T', H', W', D]), 'tokens' (the spatial encoder's output for the
  patches, same shape), 'frames' (the spatial class tokens [B, T', D]: one vector per
  time index, before the temporal encoder), 'pre_logits' ([B, D], the temporal class
  token) and, unless `num_classes` is None, 'logits'. `__call__` returns 'logits', or
  'pre_logits' for a headless model.

  The encoders are the submodules 'spatial_encoder' and 'temporal_encoder'; with
  `sow_attention_weights` the temporal encoder's attention weights land in
  'intermediates' (`models.transformer`): row 0 of the last block's is the class
  token's attention over time.

  Attributes:
    width: token width D.
    spatial_depth: blocks of the spatial encoder.
    temporal_depth: blocks of the temporal encoder.
    num_heads: attention heads of every block.
    mlp_dim: hidden width of the MLPs; None for 4 * width.
    patch_size: p, the tubelet's height and width in pixels.
    tubelet_frames: t, the tubelet's length in frames.
    dropout_rate: dropout on the residual branches, when training.
    num_classes: size of the logits; None for a headless encoder.
    dtype: compute dtype; parameters stay float32 and logits are float32.
    sow_attention_weights: store the temporal encoder's attention weights in
      'intermediates', for figures.
  """
  width: int = 768
  spatial_depth: int = 12
  temporal_depth: int = 4
  num_heads: int = 12
  mlp_dim: int | None = None
  patch_size: int = 16
  tubelet_frames: int = 2
  dropout_rate: float = 0.0
  num_classes: int | None = 400
  dtype: Any = jnp.float32
  sow_attention_weights: bool = False

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if x.ndim != 5:
      raise ValueError(f'vivit takes clips [B, T, H, W, C], got shape {x.shape}')
    t, p = self.tubelet_frames, self.patch_size
    if x.shape[1] % t or x.shape[2] % p or x.shape[3] % p:
      raise ValueError(f'vivit: clips of {x.shape[1]} frames of {x.shape[2]}x{x.shape[3]} '
                       f'do not divide into tubelets of {t} frames of {p}x{p}')
    mlp_dim = self.mlp_dim or 4 * self.width
    x = nn.Conv(self.width, (t, p, p), strides=(t, p, p), padding='VALID',
                dtype=self.dtype, name='embedding')(x.astype(self.dtype))
    maps = {'stem': x}
    b, frames, h, w, d = x.shape

    tokens = _with_class_token(x.reshape(b * frames, h * w, d), 'spatial', self)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    tokens = transformer.Encoder(
        self.spatial_depth, self.num_heads, mlp_dim, self.dropout_rate, dtype=self.dtype,
        name='spatial_encoder')(tokens, train=train)
    maps['tokens'] = tokens[:, 1:].reshape(b, frames, h, w, d)
    maps['frames'] = tokens[:, 0].reshape(b, frames, d)

    tokens = _with_class_token(maps['frames'], 'temporal', self)
    tokens = transformer.Encoder(
        self.temporal_depth, self.num_heads, mlp_dim, self.dropout_rate, dtype=self.dtype,
        sow_attention_weights=self.sow_attention_weights,
        name='temporal_encoder')(tokens, train=train)
    return models.classifier_outputs(maps, tokens[:, 0], self.num_classes, self.dtype)
