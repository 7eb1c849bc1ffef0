r"""SimCLR's CIFAR-10 recipe (Chen et al. 2020, appendix B.9), for accelerators.

  python -m vision_jax.train --config experiments/self_supervised/simclr_cifar10.py \
      --workdir /tmp/simclr_cifar10

ResNet-18 with the 3x3 stem and no max pool (512-d features h), a projection head with
one hidden layer of 512 units and BatchNorm to 128 dimensions, two views per image by
SimCLR's CIFAR augmentation (random resized crop, flip, colour jitter of strength 0.5
with probability 0.8, grayscale with probability 0.2, no blur), NT-Xent with tau = 0.5
over the global batch of 512 images (1,024 views) on every device, LARS (momentum 0.9,
weight decay 1e-4 on weights only) with lr 1.0 x B/256, 10 epochs of warm-up then
cosine decay, 1000 epochs: the command of the official repository's README for
CIFAR-10, which reports about 91% linear evaluation. The `probe` evaluator is that
evaluation (logistic regression on the frozen h with all labels), and also 1% and 10%
of them and a kNN; `progress` runs the kNN alone every 5,000 steps.

Batch statistics span the whole global batch, as in the paper's global BN. Gradient
accumulation is refused (it would shrink the negatives): on fewer accelerators, lower
`batch_size` (the learning rate follows it). The TFDS `cifar10` dataset is read from
`--config.data.data_dir`; a folder of CIFAR-10 images works with
`--config.data.name=folder:/path`. `:local` is a seconds-long smoke run on
`fake_images/cifar10` with a narrow network.
"""

from vision_jax import config_lib

VIEW_PP = ("copy('image', 'view1')|copy('image', 'view2')|"
           "simclr_augment(32, strength=0.5, blur=False, key='view1')|"
           "simclr_augment(32, strength=0.5, blur=False, key='view2')|"
           "value_range(0, 1, key='view1')|value_range(0, 1, key='view2')|"
           "keep('view1', 'view2')")


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'simclr'
  config.batch_size = 512
  config.total_epochs = 1000
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 2_000

  config.data.name = 'cifar10'
  pp = 'decode|value_range(0, 1)'
  config.data.pp_train = f'decode|{VIEW_PP}'
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 10

  config.model.name = 'resnet'
  config.model.depth = 18
  config.model.stem = 'cifar'

  config.simclr = dict(temperature=0.5, projection_features=128, projection_hidden=512,
                       projection_batchnorm=True)

  config.optimizer.name = 'lars'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.lr = 1.0
  config.lr_batch_base = 256
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 10

  config.evals.probe = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=1000, every_steps=0)
  config.evals.probe_random_init = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=1000, every_steps=0,
      encoder='initial')
  config.evals.progress = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=1000, knn_only=True)

  if 'local' in args:
    config.data.name = 'fake_images/cifar10'
    config.model.num_filters = 4
    config.simclr.projection_hidden = 16
    config.simclr.projection_features = 8
    config.batch_size = 32
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.schedule.warmup_epochs = None
    config.schedule.warmup_steps = 1
    for name in ('probe', 'probe_random_init', 'progress'):
      config.evals[name].batch_size = 128
      config.evals[name].label_fractions = (0.1, 1.0)
  return config
