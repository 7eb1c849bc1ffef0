r"""VQ-VAE (van den Oord et al., 2017): the discrete autoencoder of the DALL-E route.

The model is `vision_jax.models.vqvae` (an EMA codebook in the non-trained collection
'vq_stats'). The pipeline's images x in [0, 1] are mapped to [-1, 1] for the model and
its reconstructions back to [0, 1] for every output. Training loss, on the model's
[-1, 1] scale:

  L = mean_{pixels, batch} (x_hat - x)^2 + beta mean |z - sg(z_q)|^2

The reconstruction term is the MEAN squared error over the pixel values and the batch,
because the model's commitment loss (weight beta = `model.commitment_cost`, 0.25 in the
paper) is a mean over the latent values too: the paper's beta is chosen against a
per-element reconstruction error, and a per-image sum would multiply the reconstruction
term by H W C (3,072 for 32x32 colour) and make beta meaningless. The codebook gets no
gradient; its EMA statistics update inside the training step through
`model_state['vq_stats']` (the trainer's rng stream revives dead codes).

Training metrics: `reconstruction_mse` (model scale), `commitment_loss`, `perplexity`
(exp of the entropy of the batch's code frequencies) and `codebook_usage` (the fraction
of codes the batch uses). Capabilities: `reconstruct` (the input and its decoded token
grid) and `test_metrics` (per image: `reconstruction_mse` on the model's [-1, 1] scale,
as trained, and `psnr` in dB on [0, 1]). A VQ-VAE has no prior of its own (the DALL-E
prior, `methods/dalle`, is one), so it has no `generate`.

For the prior: `encode_tokens(state, images)` ([B, H, W, C] in [0, 1] -> int32 [B, h, w])
and `decode_tokens(state, tokens)` (-> float32 images in [0, 1]).
"""

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import models
from vision_jax.methods import base, generative


def _per_image_mean(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).mean(-1)


class Method(generative.Method):
  """Trains a VQ-VAE `config.model` (name 'vqvae') on `batch['image']` in [0, 1].

  Attributes:
    model: the `vision_jax.models.vqvae.Model`, its `channels` those of the images.
    grid_shape: (h, w), the token grid of one image.
  """
  name = 'vqvae'
  CAPABILITIES = ('reconstruct', 'test_metrics')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    self.model = models.get_model(config.model, channels=self.image_shape[-1],
                                  dtype=self.compute_dtype)
    factor = 2 ** self.model.downsample_steps
    height, width = self.image_shape[:2]
    if height % factor or width % factor:
      raise ValueError(f'vqvae: data.input_shape {self.image_shape} does not divide by '
                       f'2**model.downsample_steps = {factor}')
    self.grid_shape = (height // factor, width // factor)

  @property
  def num_codes(self) -> int:
    return self.model.num_codes

  def _variables(self, state_or_params, model_state=None):
    if model_state is None:
      return {'params': state_or_params.params, **state_or_params.model_state}
    return {'params': state_or_params, **model_state}

  # The trainer's interface.

  def synthetic_batch(self, batch_size, input_shape, rng):
    """Uniform images in [0, 1], the pipeline's range."""
    return {'image': rng.uniform(size=(batch_size, *input_shape)).astype(np.float32)}

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    return self.model.init(rng, 2 * batch['image'] - 1)

  def loss(self, params, model_state, batch, rng):
    images = 2 * batch['image'] - 1
    out, model_state = base.apply_model(self.model, params, model_state, images,
                                        train=True, rng=rng)
    mse = jnp.mean((out['reconstruction'] - images) ** 2)
    loss = mse + out['commitment_loss']
    metrics = {'reconstruction_mse': mse, 'commitment_loss': out['commitment_loss'],
               'perplexity': out['perplexity'], 'codebook_usage': out['codebook_usage']}
    return loss, (metrics, model_state)

  # Tokens, for the prior.

  def encode_tokens(self, state, images: jax.Array) -> jax.Array:
    """Images [B, H, W, C] in [0, 1] -> their token grids [B, h, w], int32."""
    return self.model.apply(self._variables(state), 2 * images - 1, method='encode')

  def decode_tokens(self, state, tokens: jax.Array) -> jax.Array:
    """Token grids [B, h, w] -> images [B, H, W, C], float32 in [0, 1]."""
    decoded = self.model.apply(self._variables(state), tokens, method='decode_indices')
    return jnp.clip((decoded + 1) / 2, 0, 1).astype(jnp.float32)

  # Capabilities.

  def reconstruct(self, state, batch, rng):
    del rng  # Nearest codes: deterministic.
    images = batch['image']
    return {'input': images,
            'reconstruction': self.decode_tokens(state, self.encode_tokens(state, images))}

  def test_metrics(self, state, batch, rng):
    del rng
    images = batch['image']
    out = self.model.apply(self._variables(state), 2 * images - 1)
    mse = _per_image_mean((out['reconstruction'] - (2 * images - 1)) ** 2)
    shown = jnp.clip((out['reconstruction'] + 1) / 2, 0, 1)
    mse_unit = _per_image_mean((shown - images) ** 2)
    return {'reconstruction_mse': mse,
            'psnr': -10 * jnp.log10(jnp.maximum(mse_unit, 1e-10))}
