r"""ResNet-18/34/50/101/152 (v1.5) on ImageNet: the standard 90-epoch SGD recipe.

  python -m vision_jax.train \
      --config experiments/classification/resnet_imagenet.py:depth=50 \
      --workdir /tmp/resnet50_imagenet

SGD with momentum 0.9, learning rate 0.1 per 256 images (0.4 at batch 1024), 5 epochs of
linear warm-up (Goyal et al., 2017, arXiv:1706.02677) then cosine decay, 90 epochs,
weight decay 1e-4 on the convolution and dense kernels only; Inception-style random
resized crops and flips for training, 256-resize and central 224 crop for evaluation.
This is the torchvision / MLPerf-style recipe, which gives about 76-77% top-1 for
ResNet-50. `--config.classification.label_smoothing=0.1` adds label smoothing (Szegedy et al., 2016);
`--config.compute_dtype=bfloat16` computes in bfloat16 on accelerators.

`:depth=18` picks the depth; `:local` is a seconds-long smoke run on
`fake_images/imagenet2012` at 64x64 with a narrow network, a ResNet-18 unless a depth is
given (`:depth=50,local`). The TFDS
`imagenet2012` dataset must be prepared by hand (its files need a manual download)
and is read from `--config.data.data_dir`.
"""

from vision_jax import config_lib

DEPTHS = (18, 34, 50, 101, 152)
# Per-channel statistics of the ImageNet training set, in the [0, 1] range.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def preprocessing(crop: int) -> tuple[str, str]:
  """Train and eval pp strings for `crop`-sized inputs; eval resizes to crop * 8/7."""
  normalize = f'value_range(0, 1)|normalize({MEAN}, {STD})'
  train = f'decode(channels=3)|random_resized_crop({crop})|flip_lr|{normalize}'
  evaluate = (f'decode(channels=3)|resize_small({round(crop * 8 / 7)})|'
              f'central_crop({crop})|{normalize}')
  return train, evaluate


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'depth', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use depth=N and/or local')
  depth = int(args.get('depth', 18 if 'local' in args else 50))
  if depth not in DEPTHS:
    raise ValueError(f'depth must be one of {DEPTHS}, got {depth}')

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 1024
  config.total_epochs = 90
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 2_500
  config.classification = dict(label_smoothing=0.0)  # 0.1 is the usual choice when enabled (+~0.3% top-1).

  config.data.name = 'imagenet2012'
  config.data.pp_train, pp_eval = preprocessing(224)
  config.data.cache = False  # 150 GB of JPEGs do not fit in memory.
  # A preprocessed example and the class count, for the tools that build the model
  # without the dataset (vision_jax.summary, vision_jax.benchmark).
  config.data.input_shape = (224, 224, 3)
  config.data.num_classes = 1000

  config.model.name = 'resnet'
  config.model.depth = depth
  config.model.num_filters = 64
  # True starts every block as the identity (Goyal et al.); it helps very large batches.
  config.model.zero_init_residual = False

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.decay_weights_only = True  # No decay on biases and BatchNorm.
  config.lr = 0.1
  config.lr_batch_base = 256
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 5

  # top1 is `accuracy`; the evaluator also reports `top5_accuracy`.
  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='validation'), pp=pp_eval,
      batch_size=1024, num_figure_images=32)

  if 'local' in args:
    config.data.name = 'fake_images/imagenet2012'
    config.data.pp_train, pp_eval = preprocessing(64)
    config.data.cache = True
    config.data.input_shape = (64, 64, 3)
    config.model.num_filters = 8
    config.batch_size = 16
    config.total_epochs = None
    config.total_steps = 3
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 3
    config.schedule.warmup_epochs = None
    config.schedule.warmup_steps = 1
    config.evals.eval.pp = pp_eval
    config.evals.eval.batch_size = 64
  return config
