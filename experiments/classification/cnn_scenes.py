r"""A small CNN on `scenes/single` (32x32, 40 colour-shape classes): the judge of the
text-to-image experiments' faithfulness and the FID classifier of the scenes' generators.

  python -m vision_jax.train --config experiments/classification/cnn_scenes.py \
      --workdir /tmp/cnn_scenes

Three stages of a 3x3 convolution with BatchNorm and ReLU, then 2x2 max pooling (32,
64, 128 channels: 32 -> 16 -> 8 -> 4), a dense layer of 256 with dropout 0.3 and the
40-way head. AdamW (weight decay 1e-4), lr 3e-3 with 100 warm-up steps then cosine
decay, batch 128 for 10 epochs of the 20,000 training scenes (1,560 steps). Augmentation
keeps the label: translations by up to 2 pixels and left-right flips (every shape is
mirror-symmetric about its vertical axis and turned by at most 0.4 rad; see
`vit_scenes.py`).

`:local` is a seconds-long smoke run. The embedded dataset is generated on first use.
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')
  local = 'local' in args

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 32 if local else 128
  config.total_epochs = None if local else 10
  config.total_steps = 6 if local else None
  config.log_every_steps = 2 if local else 100
  config.eval_every_steps = 0 if local else 500
  config.checkpoint_every_steps = 6 if local else 500

  config.data.name = 'scenes/single'
  keep = '|keep("image", "label")'
  config.data.pp_train = 'decode|random_crop(pad=2)|flip_lr|value_range(0, 1)' + keep
  pp_eval = 'decode|value_range(0, 1)' + keep
  config.data.num_classes = 40

  config.model.name = 'cnn'
  config.model.features = (8, 16) if local else (32, 64, 128)
  config.model.kernel_size = 3
  config.model.pooling = 'max'
  config.model.dense_features = (32,) if local else (256,)
  config.model.dropout_rate = 0.3
  config.model.use_batchnorm = True

  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.lr = 3e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 2 if local else 100

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=100 if local else 500, num_figure_images=32)
  return config
