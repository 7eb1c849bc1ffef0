r"""Rotation prediction (Gidaris et al. 2018): which of four rotations was applied?

Each training image x is rotated by r x 90 degrees counter-clockwise for every
r = 0, 1, 2, 3 (`rotate_all`), all four rotations of an image in the same batch, and
a 4-way classifier on the encoder's features h = f(rot(x, r)) learns r with the
softmax cross-entropy, averaged over the 4N rotated images (the paper's loss with
its K = 4 rotations of 90 degrees). The encoder is `config.model` (headless: pooled
features) and the classifier a linear layer on h, or an MLP with
`rotation.head_hidden`. The paper reports that feeding all four rotated copies of an
image in the same mini-batch trains better than one random rotation per image.

The rotation happens on the device, inside the step, so the pipeline delivers plain
(square) images. After pretraining the classifier is thrown away: the probes and
fine-tuning read h (`embed_image`). `predict_rotations` gives the classifier's logits
for every rotation of each test image, which the `rotation` evaluator scores and draws.
"""

import jax
import jax.numpy as jnp

from vision_jax import losses
from vision_jax.methods import base, self_supervised
from vision_jax.models.self_supervised import EncoderWithHead, ProjectionHead

NUM_ROTATIONS = 4


def rotate_all(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Every rotation of every image: `(rotated [4N, H, W, C], labels [4N])`, rows 4i + r
  holding image i rotated by r x 90 degrees counter-clockwise (`np.rot90(image, r)`),
  with label r."""
  n, height, width = images.shape[:3]
  if height != width:
    raise ValueError(f'rotation prediction needs square images, got {height}x{width}')
  rotated = jnp.stack([jnp.rot90(images, r, axes=(1, 2)) for r in range(NUM_ROTATIONS)], 1)
  labels = jnp.tile(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), n)
  return rotated.reshape(n * NUM_ROTATIONS, *images.shape[1:]), labels


class Method(self_supervised.Method):
  """Rotation prediction; see the module docstring.

  Config: `model` (the encoder), `rotation.head_hidden` (hidden widths of the
  classifier; () for a linear one), and the shared optimizer fields. The batch size
  counts images: a step sees 4 x `batch_size` rotated images.

  Attributes:
    model: the encoder with the 4-way rotation classifier.
  """
  name = 'rotation'
  OPTIONS = {'head_hidden': ()}
  PREDICTIONS = ('embed_image', 'predict_rotations')

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    head = ProjectionHead(features=NUM_ROTATIONS, hidden_features=tuple(self.options.head_hidden),
                          dtype=self.compute_dtype)
    self.model = EncoderWithHead(encoder=self.encoder, head=head)

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    rotated, labels = rotate_all(batch['image'])
    (_, logits), model_state = base.apply_model(self.model, params, model_state, rotated,
                                                train=True, rng=rng)
    loss = losses.softmax_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, ({'rotation_accuracy': accuracy}, model_state)

  def predict_rotations(self, state, batch):
    """Eval-mode rotation logits [N, 4, 4]: for image i rotated by r x 90 degrees,
    the classifier's logits over the four rotations, float32."""
    rotated, _ = rotate_all(batch['image'])
    (_, logits), _ = base.apply_model(self.model, state.params, state.model_state, rotated,
                                      train=False)
    return logits.reshape(-1, NUM_ROTATIONS, NUM_ROTATIONS).astype(jnp.float32)
