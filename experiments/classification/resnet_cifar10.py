r"""ResNet-20/32/44/56/110 on CIFAR-10: the recipe of He et al. (2015), section 4.2.

  python -m vision_jax.train \
      --config experiments/classification/resnet_cifar10.py:depth=20 \
      --workdir /tmp/resnet20_cifar10

The paper ("Deep Residual Learning for Image Recognition", arXiv:1512.03385, table 6)
reports test errors of 8.75% (ResNet-20), 7.51% (32), 7.17% (44), 6.97% (56) and
6.43% (110): SGD with momentum 0.9 and weight decay 1e-4, batch 128, learning rate 0.1
divided by 10 at 32k and 48k iterations, 64k iterations in all; 4-pixel padding,
random 32x32 crops and horizontal flips; option-A (parameter-free) shortcuts.

`:depth=56` picks the depth; `:local` (e.g. `:depth=20,local`) is a seconds-long smoke
run on `fake_images/cifar10` with a narrow network. The TFDS `cifar10` dataset is read
from `--config.data.data_dir` (prepare it with `tfds build cifar10` where there is
network).
"""

from vision_jax import config_lib

DEPTHS = (20, 32, 44, 56, 110)
# Per-channel statistics of the CIFAR-10 training set, in the [0, 1] range.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'depth', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use depth=N and/or local')
  depth = int(args.get('depth', 20))
  if depth not in DEPTHS:
    raise ValueError(f'depth must be one of {DEPTHS}, got {depth}')

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 128
  config.total_steps = 64_000
  config.log_every_steps = 100
  config.eval_every_steps = 4_000
  config.checkpoint_every_steps = 4_000

  normalize = f'value_range(0, 1)|normalize({MEAN}, {STD})'
  config.data.name = 'cifar10'
  # Normalising before the padded crop pads with the mean colour (zeros after
  # normalisation), as the paper pads its mean-subtracted images.
  config.data.pp_train = f'decode|{normalize}|random_crop(32, pad=4)|flip_lr'
  pp_eval = f'decode|{normalize}'
  # A preprocessed example and the class count, for the tools that build the model
  # without the dataset (vision_jax.summary, vision_jax.benchmark).
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 10

  config.model.name = 'cifar_resnet'
  config.model.depth = depth
  config.model.num_filters = 16

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  # Coupled L2 on every parameter, as torch.optim.SGD's weight_decay applies it in
  # the usual reproductions of the paper.
  config.optimizer.decay_weights_only = False
  config.lr = 0.1
  config.schedule.name = 'piecewise'
  config.schedule.boundaries_steps = (32_000, 48_000)
  config.schedule.decay_factor = 0.1
  if depth == 110:
    # The paper warms ResNet-110 up at lr 0.01 for about 400 iterations; a linear
    # warm-up over the same span serves the same purpose.
    config.schedule.warmup_steps = 400

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=1000, num_figure_images=32)

  if 'local' in args:
    config.data.name = 'fake_images/cifar10'
    config.model.num_filters = 4
    config.batch_size = 32
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    config.schedule.boundaries_steps = (2, 3)
    config.schedule.warmup_steps = None
    config.evals.eval.batch_size = 128
  return config
