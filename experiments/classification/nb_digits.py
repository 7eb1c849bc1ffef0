r"""Bernoulli Naive Bayes on `digits` (scikit-learn's real 8x8 handwritten digits).

  python -m vision_jax.train --config experiments/classification/nb_digits.py \
      --workdir /tmp/nb_digits

Pixels are binarised at 0.5, counted per class in one pass over the 1,437 training
images (3 batches of 479: every example exactly once), and the test split is scored
with log P(c) + log P(x | c): 90.0% test accuracy, the same predictions as
scikit-learn's `BernoulliNB(alpha=1, binarize=0.5)`, in about 20 s on 2 CPU cores
(mostly start-up). The fitted per-class pixel probabilities are drawn in
class_pixel_probabilities.png.

The batch size must divide over the devices: 479 (or 1437) suits one device; on 8
devices use `--config.batch_size=1432`, which counts 1,432 of the 1,437 (the stream
drops the shuffled remainder). `--config.naive_bayes.smoothing=0.5` changes the Laplace
smoothing k. `:local` counts only 4 batches of 160 (a smoke run for 1, 2, 4, 8, 16
or 32 devices).
"""

from vision_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'naive_bayes'
  config.naive_bayes = dict(smoothing=1.0, threshold=0.5)
  config.batch_size = 479
  config.total_epochs = 1  # The fit is one pass of counting.
  config.log_every_steps = 1
  config.checkpoint_every_steps = 0  # Only the final state.

  config.data.name = 'digits'
  config.data.pp_train = 'decode|value_range(0, 1)'
  pp_eval = 'decode|value_range(0, 1)'

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=120, num_figure_images=32)
  config.evals.naive_bayes = config_lib.evaluator_config(type='naive_bayes')

  if arg == 'local':
    config.batch_size = 160
    config.total_epochs = None
    config.total_steps = 4
  elif arg:
    raise ValueError(f'unknown argument {arg!r}; use :local or nothing')
  return config
