r"""Contrastive Predictive Coding (Oord et al. 2018) on images, as Henaff et al. 2019.

Each image x of a minibatch of N is cut into a Gh x Gw grid of overlapping p x p
patches (stride s: G = (side - p) // s + 1). The encoder f (`config.model`, headless)
gives every patch its features z[n, i, j] = f(x[n, i, j]) in R^D; a context network g
of masked convolutions, causal in rows, gives c[n, i, j] = g(z[n, <= i, :]); and for
each k = 1..K a bias-free linear map W_k predicts z^k[n, i, j] = W_k c[n, i, j] for
the patch k rows below (`vision_jax.models.cpc.CPC`). With CPC's score
f_k(z, c) = exp(z^T W_k c), the candidates of a prediction are every patch of every
image of the global batch, Z = {z[m, a, b]} (its negatives: the other patches of the
same image and all patches of the other images), and the InfoNCE loss is

  l_k(n, i, j) = -log exp(z[n, i+k, j] . z^k[n, i, j])
                       / sum_{z' in Z} exp(z' . z^k[n, i, j])
  L_k = mean over n, i = 0..Gh-k-1, j of l_k(n, i, j)
  L = 1/K sum_k L_k

(`info_nce_loss`). All patches of all images go through f in one pass, so under the
sharded jit the candidate matrix, and so the negatives, span the global batch of every
device and process. After pretraining, g and the W_k are thrown away: the probes read
the patch features mean-pooled over the grid, h = mean_ij z[i, j] (`embed_image`).

BatchNorm in the encoder would let the patches of one batch share statistics, a
shortcut for telling patches apart (Henaff et al. replace it with layer norm), so use
an encoder without it, e.g. `model.name = 'cnn'`, `model.use_batchnorm = False`. The
cnn's `pre_logits` flattens its last map, which ties its dense layers to p x p inputs:
fine for CPC and for the probes, which read patches, but a classifier fine-tuned from
it must also see p x p inputs; an encoder ending in a global pool (ResNet) has no such
tie. Gradient accumulation would compute the loss over each micro-batch alone, with
fewer negatives, so `grad_accum_steps > 1` is refused. Step k scores
M_k = N (Gh - k) Gw predictions against N Gh Gw candidates, logits of M_k x N Gh Gw
floats (0.54 GB per step at N = 256 on a 7x7 grid): memory, more than the encoder,
bounds the batch size.

Metrics: `loss` and `cpc_accuracy_k1` .. `cpc_accuracy_kK`, the fraction of
predictions whose highest-scoring candidate is their target (chance 1 / (N Gh Gw)).
"""

import jax
import jax.numpy as jnp

from vision_jax import config_lib
from vision_jax.methods import base, self_supervised
from vision_jax.models import cpc as cpc_model


def info_nce_loss(z: jax.Array, predictions: jax.Array, prediction_steps: int
                  ) -> tuple[jax.Array, jax.Array]:
  """CPC's InfoNCE loss (see the module docstring): `(loss, accuracies [K])`.

  `z` is [N, Gh, Gw, D], `predictions` [K', N, Gh, Gw, D] with K' >= K =
  `prediction_steps`, predictions[k - 1][n, i, j] predicting z[n, i + k, j]. For each
  k the queries are the predictions at rows 0 .. Gh - k - 1, the candidates every
  patch feature of the batch, one positive each, and the cross-entropy runs over the
  candidates. Computed in float32 (or wider). Under `jax.jit` with `z` sharded over
  devices, the candidates are global, so the negatives span the global batch.
  """
  if z.ndim != 4:
    raise ValueError(f'info_nce_loss needs z [N, Gh, Gw, D], got {z.shape}')
  n, gh, gw, d = z.shape
  if predictions.ndim != 5 or predictions.shape[1:] != z.shape:
    raise ValueError(f'info_nce_loss needs predictions [K, {n}, {gh}, {gw}, {d}] like z, '
                     f'got {predictions.shape}')
  if not 1 <= prediction_steps <= predictions.shape[0] or prediction_steps >= gh:
    raise ValueError(f'prediction_steps must be in 1 .. {min(predictions.shape[0], gh - 1)}'
                     f' ({predictions.shape[0]} predictors, {gh} grid rows), got '
                     f'{prediction_steps}')
  dtype = jnp.promote_types(z.dtype, jnp.float32)
  candidates = z.astype(dtype).reshape(n * gh * gw, d)
  flat_index = jnp.arange(n * gh * gw).reshape(n, gh, gw)
  losses, accuracies = [], []
  for k in range(1, prediction_steps + 1):
    queries = predictions[k - 1, :, :gh - k].astype(dtype).reshape(-1, d)
    labels = flat_index[:, k:].reshape(-1)  # the target of (n, i, j) is z[n, i + k, j]
    logits = queries @ candidates.T  # [M_k, N Gh Gw]: a row's softmax is over candidates
    positives = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    losses.append(jnp.mean(jax.nn.logsumexp(logits, axis=1) - positives))
    accuracies.append(jnp.mean(jnp.argmax(logits, axis=1) == labels))
  return jnp.mean(jnp.stack(losses)), jnp.stack(accuracies)


class Method(self_supervised.Method):
  """CPC; see the module docstring.

  Config: `model` (the patch encoder, headless, preferably without BatchNorm),
  `cpc.patch_size` (p), `cpc.patch_stride` (s; p / 2 overlaps patches by half, as in
  Henaff et al.), `cpc.prediction_steps` (K, < the grid rows), the context network's
  `cpc.context_features`, `cpc.context_layers` and `cpc.kernel_size`, and the shared
  optimizer fields. Defaults suit 32x32 images: a 7x7 grid of 8x8 patches.

  Attributes:
    model: the CPC module (encoder, context network, predictors).
  """
  name = 'cpc'
  OPTIONS = {'patch_size': 8, 'patch_stride': 4, 'prediction_steps': 2,
             'context_features': 64, 'context_layers': 2, 'kernel_size': 3}
  CONTRASTIVE = True

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    o = self.options
    for field in self.OPTIONS:  # All of them are counts or sizes.
      value = o[field]
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise config_lib.ConfigError(f'cpc.{field} must be an integer >= 1, got {value!r}')
    input_shape = config.data.get('input_shape')
    if input_shape is not None:
      self.check_image_shape(tuple(input_shape))
    self.model = cpc_model.CPC(
        encoder=self.encoder, patch_size=o.patch_size, patch_stride=o.patch_stride,
        context_features=o.context_features, context_layers=o.context_layers,
        kernel_size=o.kernel_size, prediction_steps=o.prediction_steps,
        dtype=self.compute_dtype)

  def check_image_shape(self, shape: tuple[int, ...]) -> None:
    """Raises `ConfigError` unless images of `shape` (H, W, C) make a grid with more
    than `prediction_steps` rows."""
    o = self.options
    height, width = shape[:2]
    if height < o.patch_size or width < o.patch_size:
      raise config_lib.ConfigError(
          f'cpc.patch_size {o.patch_size} is larger than the {height}x{width} images')
    rows, cols = cpc_model.grid_size(height, width, o.patch_size, o.patch_stride)
    if o.prediction_steps >= rows:
      raise config_lib.ConfigError(
          f'cpc.prediction_steps must be < the {rows} grid rows of {o.patch_size}x'
          f'{o.patch_size} patches at stride {o.patch_stride} in {height}x{width} images, '
          f'got {o.prediction_steps}')

  def init_variables(self, rng, batch):
    self.check_image_shape(batch['image'].shape[1:])
    return self.model.init(rng, batch['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    images = batch['image']
    self.check_image_shape(images.shape[1:])
    (z, predictions), model_state = base.apply_model(self.model, params, model_state, images,
                                                     train=True, rng=rng)
    k = self.options.prediction_steps
    loss, accuracies = info_nce_loss(z, predictions, k)
    metrics = {f'cpc_accuracy_k{i + 1}': accuracies[i] for i in range(k)}
    return loss, (metrics, model_state)
