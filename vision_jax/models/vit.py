"""Vision Transformers (Dosovitskiy et al., 2021), sized as in the ViT and DeiT papers.

An image is cut into non-overlapping patches, each linearly embedded (a convolution
whose kernel and stride are the patch size), position embeddings are added, and a
pre-LayerNorm Transformer encoder (`models.transformer.Encoder`) mixes the tokens. The
image is summarised by a class token prepended to the patches ('cls') or by the mean of
the patch tokens ('gap').

With learned position embeddings and a class token the parameters are torchvision's
(`vit_b_16`: 86,567,656 with 1000 classes at 224x224; its position embedding covers the
class token too) and timm's; `sincos2d` embeddings are fixed and hold no parameters, and
then the class token gets none, as in big_vision.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.models import transformer

# name -> (width, depth, mlp_dim, num_heads): ViT (Dosovitskiy et al., 2021, table 1)
# and DeiT (Touvron et al., 2021) for Ti and S.
SIZES: dict[str, tuple[int, int, int, int]] = {
    'Ti': (192, 12, 768, 3),
    'S': (384, 12, 1536, 6),
    'B': (768, 12, 3072, 12),
    'L': (1024, 24, 4096, 16),
    'H': (1280, 32, 5120, 16),
}
POOLS = ('cls', 'gap')
POSEMBS = ('learn', 'sincos2d')


def decode_variant(variant: str | None) -> dict[str, Any]:
  """'B/16' -> width, depth, mlp_dim, num_heads and patch_size; 'B' leaves out the patch.

  Like big_vision's `decode_variant`; None gives {}.
  """
  if variant is None:
    return {}
  size, _, patch = variant.partition('/')
  if size not in SIZES or (patch and not patch.isdigit()):
    raise ValueError(f'ViT variant must be <size>[/<patch>] with size one of '
                     f'{sorted(SIZES)} and an integer patch, e.g. B/16; got {variant!r}.')
  width, depth, mlp_dim, num_heads = SIZES[size]
  sizes = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    sizes['patch_size'] = int(patch)
  return sizes


class Model(nn.Module):
  """ViT: patch embedding, position embeddings, Transformer encoder, pool, dense.

  The sizes come from `variant` (e.g. 'Ti/16', 'S/16', 'B/16', 'L/16', 'B/32'), and any
  of `width`, `depth`, `mlp_dim`, `num_heads`, `patch_size` given explicitly overrides
  the variant's; with `variant=None` all but `mlp_dim` (default 4 * width) must be
  given, which is how the tiny test variants are built.

  `feature_maps(x, train=...)` (`model.apply(variables, x, method='feature_maps')`)
  returns the named outputs: 'stem' (the patch embeddings, a grid [B, H/p, W/p, D]
  before the position embeddings), 'tokens' (the encoder's output for the patches, the
  same grid, without the class token: what decoders and detection heads attend to),
  'pre_logits' ([B, D], or [B, representation_size]) and, unless `num_classes` is
  None, 'logits'. `__call__` returns 'logits', or 'pre_logits' for a headless model.
  Maps are in the compute dtype, logits in float32.

  The encoder is the submodule 'Transformer', its blocks 'encoderblock_{i}' (their
  outputs can be read with `capture_intermediates`); with `sow_attention_weights`
  each block's attention weights land in 'intermediates' (see `models.transformer`).

  Attributes:
    variant: '<size>/<patch>' with size Ti, S, B, L or H and an integer patch size
      (e.g. 16, 32, 8); the patch may be left out ('B') if `patch_size` is given.
      None: every size is given explicitly.
    width: token width D; overrides the variant's.
    depth: number of encoder blocks; overrides the variant's.
    mlp_dim: hidden width of the MLPs; overrides the variant's.
    num_heads: attention heads; overrides the variant's.
    patch_size: side of the square patches, or (height, width); overrides the
      variant's.
    pool: 'cls' (a learned class token, whose output is the representation) or
      'gap' (the mean of the patch tokens; no class token).
    posemb: 'learn' (learned, initialised N(0, 0.02^2), one per token, the class
      token's included) or 'sincos2d' (fixed 2-D sine-cosine, `transformer.sincos_2d`).
      Learned embeddings fix the image size to that of `init`.
    dropout_rate: dropout on the embedded tokens and on every residual branch.
    attention_dropout_rate: dropout on the attention weights.
    representation_size: if not None, a Dense layer 'pre_logits' of this width and a
      tanh before the head (the original ViT's pre-training head).
    num_classes: size of the logits; None for a headless backbone that returns
      its pooled features and has no head parameters.
    dtype: compute dtype, e.g. jnp.bfloat16; parameters stay float32 and the logits
      are returned in float32.
    sow_attention_weights: store the attention weights of every block in the
      'intermediates' collection (for figures; apply with `mutable=['intermediates']`).
    patch_bias: whether the patch embedding has a bias (CLIP's has none).
    pre_norm: a LayerNorm 'pre_norm' on the embedded tokens before the encoder (CLIP's
      `ln_pre`).
    layer_norm_epsilon: every LayerNorm's epsilon (1e-6, torchvision's and big_vision's;
      1e-5 for OpenAI's CLIP weights).
    mlp_activation: 'gelu' (exact) or 'quick_gelu' (OpenAI's CLIP weights).
  """
  variant: str | None = 'B/16'
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int | tuple[int, int] | None = None
  pool: str = 'cls'
  posemb: str = 'learn'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  representation_size: int | None = None
  num_classes: int | None = 1000
  dtype: Any = jnp.float32
  sow_attention_weights: bool = False
  patch_bias: bool = True
  pre_norm: bool = False
  layer_norm_epsilon: float = 1e-6
  mlp_activation: str = 'gelu'

  def sizes(self) -> dict[str, Any]:
    """width, depth, mlp_dim, num_heads and patch_size (a pair), the explicit ones
    over the variant's."""
    sizes = decode_variant(self.variant)
    for name in ('width', 'depth', 'mlp_dim', 'num_heads', 'patch_size'):
      if getattr(self, name) is not None:
        sizes[name] = getattr(self, name)
    if 'mlp_dim' not in sizes and 'width' in sizes:
      sizes['mlp_dim'] = 4 * sizes['width']
    missing = [name for name in ('width', 'depth', 'num_heads', 'patch_size')
               if name not in sizes]
    if missing:
      raise ValueError(f'ViT variant {self.variant!r} leaves {", ".join(missing)} unset; '
                       'give them explicitly.')
    patch = sizes['patch_size']
    sizes['patch_size'] = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if sizes['width'] % sizes['num_heads']:
      raise ValueError(f'ViT width {sizes["width"]} is not a multiple of num_heads '
                       f'{sizes["num_heads"]}.')
    return sizes

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    maps = self.feature_maps(x, train=train)
    return maps['pre_logits' if self.num_classes is None else 'logits']

  @nn.compact
  def feature_maps(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """The named outputs of the model (see the class docstring)."""
    if self.pool not in POOLS:
      raise ValueError(f'ViT pool must be one of {POOLS}, got {self.pool!r}.')
    if self.posemb not in POSEMBS:
      raise ValueError(f'ViT posemb must be one of {POSEMBS}, got {self.posemb!r}.')
    sizes = self.sizes()
    patch, width = sizes['patch_size'], sizes['width']
    if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
      raise ValueError(f'ViT image size {x.shape[1]}x{x.shape[2]} is not a multiple of the '
                       f'patch size {patch[0]}x{patch[1]}.')

    maps = {}
    x = maps['stem'] = nn.Conv(width, patch, strides=patch, padding='VALID',
                               use_bias=self.patch_bias, dtype=self.dtype,
                               name='embedding')(x)
    batch, h, w, _ = x.shape
    x = x.reshape(batch, h * w, width)
    cls = self.pool == 'cls'

    def class_token(x):
      token = self.param('cls', nn.initializers.zeros, (1, 1, width))
      token = jnp.broadcast_to(token.astype(x.dtype), (batch, 1, width))
      return jnp.concatenate([token, x], axis=1)

    if self.posemb == 'learn':
      if cls:
        x = class_token(x)
      x = x + self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                         (1, x.shape[1], width)).astype(x.dtype)
    else:
      x = x + transformer.sincos_2d(h, w, width, dtype=x.dtype)
      if cls:
        x = class_token(x)
    if self.pre_norm:
      x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name='pre_norm')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    x = transformer.Encoder(
        num_layers=sizes['depth'], num_heads=sizes['num_heads'], mlp_dim=sizes['mlp_dim'],
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, sow_attention_weights=self.sow_attention_weights,
        layer_norm_epsilon=self.layer_norm_epsilon, mlp_activation=self.mlp_activation,
        name='Transformer')(x, train=train)
    tokens = x[:, 1:] if cls else x
    maps['tokens'] = tokens.reshape(batch, h, w, width)
    pre_logits = x[:, 0] if cls else jnp.mean(tokens, axis=1)
    if self.representation_size is not None:
      pre_logits = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                     name='pre_logits')(pre_logits))
    return models.classifier_outputs(maps, pre_logits, self.num_classes, self.dtype)
