r"""A text-conditioned DDPM U-Net: a Transformer text encoder feeding `models/unet`.

The diffusion route to text-to-image (GLIDE, Nichol et al. 2022; Imagen, Saharia et al.
2022), trained from scratch with the U-Net, as GLIDE trains its text encoder:

- the caption's token ids [N, L] (the dataset's word vocabulary; bos, words, eos,
  padding) are embedded with learned positions and run through a pre-LayerNorm
  Transformer encoder (`models/transformer`) in which padding is masked out as a key;
- the token features, with the padding mask, are the U-Net's `context`: cross-attention
  from every attention resolution of the U-Net to the tokens;
- their mean over the real tokens (Imagen's mean pooling) is the U-Net's `cond`, added
  to the timestep embedding.

The null text of classifier-free guidance is the empty caption (bos, eos, padding),
as in GLIDE: the encoder sees a sequence like any other and the method swaps it in.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.data import text
from vision_jax.models import transformer, unet


class Model(nn.Module):
  """eps_theta(x_t, t, caption tokens).

  `model.apply(variables, x, t, tokens, train=False)`: x [N, H, W, C] in about [-1, 1],
  t int [N], tokens int [N, L <= text_len]; returns the predicted noise [N, H, W, C].

  Attributes:
    vocab_size: the number of token ids.
    text_len: the most tokens a caption has (the learned positions).
    text_width: the text encoder's width.
    text_depth: its number of blocks.
    text_heads: its attention heads.
    unet: `models/unet.Model`'s attributes (channels, channel_multipliers, ...);
      `attention_resolutions` are where the image attends to the text.
    pad_id: the padding token id.
    dtype: compute dtype; parameters stay float32.
  """
  vocab_size: int
  text_len: int = 32
  text_width: int = 64
  text_depth: int = 2
  text_heads: int = 4
  unet: Any = None
  pad_id: int = text.Vocabulary.pad_id
  dtype: Any = jnp.float32

  def encode_text(self, tokens: jax.Array, *, train: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(token features [N, L, text_width], real-token mask [N, L], pooled [N, text_width])."""
    if tokens.ndim != 2 or tokens.shape[1] > self.text_len:
      raise ValueError(f'text_unet: tokens must be [batch, length <= {self.text_len}], got '
                       f'shape {tokens.shape}')
    real = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.text_width, embedding_init=nn.initializers.normal(0.02),
                 dtype=self.dtype, name='token_embedding')(tokens)
    positions = self.param('positions', nn.initializers.normal(0.01),
                           (self.text_len, self.text_width))
    x = x + positions[:tokens.shape[1]].astype(x.dtype)
    x = transformer.Encoder(num_layers=self.text_depth, num_heads=self.text_heads,
                            mlp_dim=4 * self.text_width, dtype=self.dtype,
                            name='text_encoder')(x, nn.make_attention_mask(real, real),
                                                 train=train)
    weights = real.astype(x.dtype)[..., None]
    pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)
    return x, real, pooled

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, tokens: jax.Array, *,
               train: bool = False) -> jax.Array:
    features, real, pooled = self.encode_text(tokens, train=train)
    unet_kwargs = dict(self.unet or {})
    if unet_kwargs.get('num_classes') is not None:
      raise ValueError('text_unet: the U-Net is conditioned on text, not labels '
                       '(unet.num_classes must be unset)')
    return unet.Model(**unet_kwargs, dtype=self.dtype, name='unet')(
        x, t, cond=pooled, context=features, context_mask=real, train=train)
