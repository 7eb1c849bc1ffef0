r"""Bernoulli Naive Bayes on binarised pixels, fitted by counting in one pass.

Each pixel d is binarised, x_d = [pixel_d > threshold], and modelled as independent
given the class c with P(x_d = 1 | c) = p_cd. The fit is counting:

  p_cd = (count_cd + k) / (N_c + 2k)       (Laplace smoothing k)
  P(c) = N_c / N                           (the empirical prior)

and the score of class c is the log joint probability

  log P(c) + sum_d [x_d log p_cd + (1 - x_d) log(1 - p_cd)],

which differs from the log posterior log P(c | x) by a constant per image, so its
argmax and softmax are those of the posterior. These are scikit-learn's
`BernoulliNB(alpha=k, binarize=threshold)` estimates.

The counts are the state's `params`: `pixel_counts` [C, H, W, channels] and
`class_counts` [C]. `update` adds a batch's counts, a sum over the global batch that
XLA turns into an all-reduce over the `data` axis; counts are integers held exactly in
float32 (up to 2^24 per entry), so any device count gives the same fit bit for bit.
There is no gradient and no optimizer (`optax.identity`); one epoch is the whole fit.

Config: `naive_bayes.smoothing` (k > 0, default 1) and `naive_bayes.threshold`
(default 0.5, on the [0, 1] intensity range).
"""

import jax
import jax.numpy as jnp
import optax

from vision_jax import config_lib
from vision_jax.methods import base

# Scoring multiplies by log-probabilities, which a lower default matmul precision
# (TF32 on GPUs, bfloat16 passes on TPUs) would round; counting needs no such care, as
# zeros and ones are exact in every format and the sums accumulate in float32.
_HIGHEST = jax.lax.Precision.HIGHEST


class Method(base.Method):
  """Counts binarised pixels per class; `predict` gives log P(c) + log P(x | c)."""
  name = 'naive_bayes'
  OPTIONS = {'smoothing': 1.0, 'threshold': 0.5}
  PREDICTIONS = ('predict',)

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    if not data_info.num_classes:
      raise config_lib.ConfigError(
          f'dataset {data_info.name} has no class label feature `label`')
    self.smoothing = float(self.options.smoothing)
    self.threshold = float(self.options.threshold)
    if self.smoothing <= 0:
      # k = 0 gives log 0 for any pixel never (or always) on in a class.
      raise config_lib.ConfigError(
          f'naive_bayes.smoothing must be > 0, got {self.smoothing}')

  def make_optimizer(self, key='optimizer', schedule_key='schedule'):
    del key, schedule_key
    return optax.constant_schedule(0.0), optax.identity()

  def init_variables(self, rng, batch):
    del rng
    num_classes = self.data_info.num_classes
    return {'params': {
        'pixel_counts': jnp.zeros((num_classes, *batch['image'].shape[1:]), jnp.float32),
        'class_counts': jnp.zeros((num_classes,), jnp.float32)}}

  def binarise(self, images):
    """[N, ...] images in [0, 1] -> [N, D] float32 zeros and ones."""
    return (images.reshape(images.shape[0], -1) > self.threshold).astype(jnp.float32)

  def pixel_probabilities(self, params):
    """p_cd = P(x_d = 1 | c), shaped like `pixel_counts` ([C, H, W, channels])."""
    pixel_counts, class_counts = params['pixel_counts'], params['class_counts']
    class_counts = class_counts.reshape(-1, *[1] * (pixel_counts.ndim - 1))
    return (pixel_counts + self.smoothing) / (class_counts + 2 * self.smoothing)

  def update(self, state, batch, rng):
    """Adds the batch's counts.

    Metrics: `loss` and `accuracy` are the batch's mean -log P(label | image) and
    accuracy under the counts including this batch, i.e. training-set figures of the fit
    so far. They are taken after the update because a class absent from the counts has
    P(c) = 0, which would make a loss before the update infinite.
    """
    del rng
    x = self.binarise(batch['image'])
    one_hot = jax.nn.one_hot(batch['label'], self.data_info.num_classes, dtype=jnp.float32)
    params = state.params
    params = {
        'pixel_counts': params['pixel_counts'] + jnp.einsum(
            'nc,nd->cd', one_hot, x).reshape(params['pixel_counts'].shape),
        'class_counts': params['class_counts'] + one_hot.sum(0)}
    scores = self._scores(params, x)
    log_posterior = jax.nn.log_softmax(scores)  # Classes without counts: -inf, no NaN.
    label_log_posterior = jnp.take_along_axis(log_posterior, batch['label'][:, None], -1)
    metrics = {'loss': -jnp.mean(label_log_posterior),
               'accuracy': jnp.mean(jnp.argmax(scores, -1) == batch['label'])}
    return state.replace(step=state.step + 1, params=params), metrics

  def _scores(self, params, x):
    """Log joint probabilities of the binary images `x` [N, D] under `params`."""
    class_counts = params['class_counts']
    pixel_counts = params['pixel_counts'].reshape(class_counts.shape[0], -1)
    log_total = jnp.log(class_counts + 2 * self.smoothing)[:, None]
    log_on = jnp.log(pixel_counts + self.smoothing) - log_total  # log p_cd
    # log(1 - p_cd) from the complementary count, without cancellation near p_cd = 1.
    log_off = jnp.log(class_counts[:, None] - pixel_counts + self.smoothing) - log_total
    log_prior = jnp.log(class_counts) - jnp.log(class_counts.sum())
    # sum_d x_d log p + (1 - x_d) log(1 - p) = x . (log p - log(1 - p)) + sum_d log(1 - p).
    return (jnp.dot(x, (log_on - log_off).T, precision=_HIGHEST)
            + log_off.sum(1) + log_prior)

  def predict(self, state, batch):
    """[N, C] float32 log joint probabilities log P(c) + log P(x | c) (see module doc)."""
    return self._scores(state.params, self.binarise(batch['image']))
