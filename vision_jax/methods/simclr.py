r"""SimCLR (Chen et al. 2020), exactly as its Algorithm 1.

For a minibatch of N images, the pipeline draws two augmentations t, t' independently
per image (`simclr_augment` on the copies `view1` and `view2`; see
`vision_jax.data.ops_color`). The encoder f gives h = f(x~) (`config.model`, headless:
pooled features) and the projection head g, an MLP with one hidden layer
(`models.self_supervised.ProjectionHead`), gives z = g(h). With z arranged [2N, D] so
that rows 2k and 2k + 1 are the two views of image k, the loss is NT-Xent
(`losses.nt_xent`):

  s_ij = z_i . z_j / (|z_i| |z_j|)
  l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)
  L = 1/(2N) sum_k [l(2k, 2k+1) + l(2k+1, 2k)]

Both views go through f and g in one pass of 2N images, so under the sharded jit the
similarities, and so the negatives, span the whole global batch of every device and
process, and BatchNorm's statistics are global (synchronised BN by construction). g is
thrown away after pretraining: the probes and fine-tuning read h (`embed_image`).

Gradient accumulation would compute NT-Xent over each micro-batch alone, shrinking the
negatives, so `grad_accum_steps > 1` is refused. The paper's optimiser is LARS with the
learning rate 0.3 x B / 256 (`optimizer.name='lars'`, `lr=0.3`, `lr_batch_base=256`),
10 epochs of warm-up and cosine decay; Adam and SGD are options as for any method.

Metrics: `loss` and `contrastive_accuracy`, the fraction of the 2N views whose most
similar other view is their positive (chance 1 / (2N - 1)).
"""

import jax
import jax.numpy as jnp

from vision_jax import config_lib, losses
from vision_jax.methods import base, self_supervised
from vision_jax.models.self_supervised import EncoderWithHead, ProjectionHead


def interleave_views(z1: jax.Array, z2: jax.Array) -> jax.Array:
  """[N, D] and [N, D] -> [2N, D] with rows 2k = z1[k] and 2k + 1 = z2[k]."""
  return jnp.stack([z1, z2], axis=1).reshape(2 * z1.shape[0], *z1.shape[1:])


def contrastive_accuracy(z: jax.Array) -> jax.Array:
  """The fraction of rows of z [2N, D] (views 2k, 2k + 1) whose most cosine-similar
  other row is the other view of their image."""
  z = losses.l2_normalize(z)
  rows = jnp.arange(z.shape[0])
  similarity = jnp.where(rows[:, None] == rows[None, :], -jnp.inf, z @ z.T)
  return jnp.mean(jnp.argmax(similarity, -1) == rows ^ 1)


class Method(self_supervised.Method):
  """SimCLR; see the module docstring.

  Config: `model` (the encoder), `simclr.temperature` (tau; 0.5 for CIFAR-10 in the
  paper, 0.1 for ImageNet at large batches), the projection head's
  `projection_features` (128), `projection_hidden` (its hidden width; None: as wide as
  h) and `projection_batchnorm`, and the shared optimizer fields. Each training batch
  has the two views `view1` and `view2`.

  Attributes:
    model: the encoder with the projection head.
  """
  name = 'simclr'
  OPTIONS = {'temperature': 0.5, 'projection_features': 128,
             'projection_hidden': config_lib.placeholder(int), 'projection_batchnorm': False}
  TRAIN_IMAGE_KEYS = ('view1', 'view2')
  CONTRASTIVE = True

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    o = self.options
    if not o.temperature > 0:
      raise config_lib.ConfigError(f'simclr.temperature must be > 0, got {o.temperature}')
    head = ProjectionHead(features=o.projection_features,
                          hidden_features=(o.projection_hidden,),
                          use_batchnorm=o.projection_batchnorm, dtype=self.compute_dtype)
    self.model = EncoderWithHead(encoder=self.encoder, head=head)

  def _views(self, batch):
    for key in self.TRAIN_IMAGE_KEYS:
      if key not in batch:
        raise ValueError(
            f'simclr needs two views per image in the batch fields view1 and view2 (e.g. '
            f"data.pp_train = \"copy('image', 'view1')|copy('image', 'view2')|"
            f"simclr_augment(32, key='view1')|...\"), got fields {sorted(batch)}")
    return batch['view1'], batch['view2']

  def init_variables(self, rng, batch):
    view1, _ = self._views(batch)
    return self.model.init(rng, view1, train=False)

  def loss(self, params, model_state, batch, rng):
    view1, view2 = self._views(batch)
    n = view1.shape[0]
    (_, z), model_state = base.apply_model(
        self.model, params, model_state, jnp.concatenate([view1, view2]), train=True,
        rng=rng)
    z = interleave_views(z[:n], z[n:])
    loss = losses.nt_xent(z, self.options.temperature)
    return loss, ({'contrastive_accuracy': contrastive_accuracy(z)}, model_state)
