r"""Bernoulli Naive Bayes on MNIST (28x28 handwritten digits, 60,000 training images).

  python -m vision_jax.train --config experiments/classification/nb_mnist.py \
      --workdir /tmp/nb_mnist [--config.data.data_dir=DIR]

MNIST comes from TFDS: downloaded on first use when online, or prepared elsewhere with
`tfds build mnist --data_dir DIR`. The same images as PNG files work too:
`--config.data.name=folder:/data/mnist` with `/data/mnist/{train,test}/<digit>/*.png`
(`decode(1)` makes any PNG grey; for other sizes add `|resize(28)` to `data.pp_train`
and `evals.eval.pp`).

Pixels are binarised at 0.5 and counted per class in one pass: 60 batches of 1,000,
every training image exactly once on 1, 2, 4 or 8 devices. Expect about 84% test
accuracy, scikit-learn's BernoulliNB figure for MNIST (Fashion-MNIST as a folder gives
64.8%, as scikit-learn does). `:local` counts 5 batches of 200.
"""

from vision_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'naive_bayes'
  config.naive_bayes = dict(smoothing=1.0, threshold=0.5)
  config.batch_size = 1000
  config.total_epochs = 1  # The fit is one pass of counting.
  config.log_every_steps = 10
  config.checkpoint_every_steps = 0  # Only the final state.

  config.data.name = 'mnist'
  # `keep` drops the file names an image folder adds to each example.
  config.data.pp_train = 'decode(1)|value_range(0, 1)|keep("image", "label")'
  pp_eval = config.data.pp_train

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=1000, num_figure_images=32)
  config.evals.naive_bayes = config_lib.evaluator_config(type='naive_bayes')

  if arg == 'local':
    config.batch_size = 200
    config.total_epochs = None
    config.total_steps = 5
    config.log_every_steps = 1
  elif arg:
    raise ValueError(f'unknown argument {arg!r}; use :local or nothing')
  return config
