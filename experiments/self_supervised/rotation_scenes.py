r"""Rotation prediction on the colour shapes of `scenes/single` (32x32, 40 classes).

  python -m vision_jax.train --config experiments/self_supervised/rotation_scenes.py \
      --workdir /tmp/rotation_scenes

`rotation_mnist.py`'s recipe on RGB scenes of one object (5 shapes x 8 colours, 3
sizes, on a textured background): all four rotations of each of 64 images per step, a
linear rotation classifier on the 256-d features of a small CNN with BatchNorm, SGD
with Nesterov momentum, 3 epochs of the 20,000 training scenes. Probed on 1%, 10% and
100% of the training labels and by kNN, beside the encoder this run started from.

The scenes have no upright: each object is drawn turned by a random angle, a circle
looks the same under every rotation and a square or a cross under a quarter turn, and
the textured backgrounds (stripes, checks) turn with the image. So the pretext task is
unanswerable for most images, and this run shows what rotation prediction learns when
the data has no canonical orientation. Measured (936 steps): test rotation accuracy
0.400 (chance 0.25; 0.39 to 0.41 per rotation), and probes below the initial
encoder's: 1% (200 labels) 0.074 vs 0.114, 10% 0.123 vs 0.174, all 0.172 vs 0.276, kNN
0.142 vs 0.206. 23 minutes of wall time on 2 CPU cores shared with two other runs, so
the 15-minute target was not shown here.

The embedded dataset is generated on first use (about 1.5 minutes here). `:local` is a
seconds-long smoke run with a tiny encoder.
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'rotation'
  config.batch_size = 64
  config.total_epochs = 3
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  config.data.name = 'scenes/single'
  pp = 'decode|value_range(0, 1)'
  # Small shifts only: the rotation itself is the pretext task, applied in the step.
  config.data.pp_train = f'{pp}|random_crop(32, pad=2)|keep("image")'
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 40

  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pooling = 'max'
  config.model.dense_features = (256,)
  config.model.use_batchnorm = True

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.lr = 0.03
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 1

  config.evals.rotation = config_lib.evaluator_config(
      type='rotation', data=dict(split='test'), pp=pp, batch_size=500)
  config.evals.probe = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0)
  config.evals.probe_random_init = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0,
      encoder='initial')

  if 'local' in args:
    config.model.features = (8, 16)
    config.model.dense_features = (32,)
    config.batch_size = 32
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.schedule.warmup_epochs = None
    config.schedule.warmup_steps = 1
    for name in ('rotation', 'probe', 'probe_random_init'):
      config.evals[name].batch_size = 120
    for name in ('probe', 'probe_random_init'):
      config.evals[name].label_fractions = (0.1, 1.0)
  return config
