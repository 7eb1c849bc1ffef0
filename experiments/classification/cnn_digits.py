r"""A small CNN on `digits` (scikit-learn's real 8x8 handwritten digits).

  python -m vision_jax.train --config experiments/classification/cnn_digits.py \
      --workdir /tmp/cnn_digits

Reaches about 99% test accuracy in under a minute on 2 CPU cores. `:local` is a
seconds-long smoke run. Any classification dataset works with only a config change, e.g.
`--config.data.name=scenes/single` or `--config.data.name=folder:/data/my_digits`
(images of mixed sizes need a `resize(...)` op in the pp strings).
"""

from vision_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 64
  config.total_epochs = 40
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200

  config.data.name = 'digits'
  # Size-agnostic ops, so the same config trains on other datasets unchanged.
  keep = '|keep("image", "label")'
  config.data.pp_train = 'decode|random_crop(pad=1)|value_range(0, 1)' + keep
  pp_eval = 'decode|value_range(0, 1)' + keep

  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pooling = 'max'
  config.model.dense_features = (128,)
  config.model.dropout_rate = 0.25
  config.model.use_batchnorm = False

  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.lr = 3e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 50

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=120, num_figure_images=32)

  if arg == 'local':
    config.total_epochs = None
    config.total_steps = 20
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
  elif arg:
    raise ValueError(f'unknown argument {arg!r}; use :local or nothing')
  return config
