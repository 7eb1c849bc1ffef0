r"""Contrastive predictive coding on the colour shapes of `scenes/single` (32x32).

  python -m vision_jax.train --config experiments/self_supervised/cpc_scenes.py \
      --workdir /tmp/cpc_scenes

`cpc_mnist.py`'s recipe on RGB scenes of one object (5 shapes x 8 colours = 40 classes,
3 sizes, on a textured background): a 7x7 grid of 8x8 patches overlapping by half, a
CNN patch encoder without BatchNorm (128-d), a masked-convolution context over the
grid rows, predictions 1 and 2 rows ahead scored by InfoNCE against every patch of the
global batch of 64 images (3,136 candidates), Adam 1e-3, 3 epochs of the 20,000
training scenes. Probed on 1%, 10% and 100% of the training labels and by kNN (on the
patch features mean-pooled over the grid), beside the encoder this run started from.

Measured (936 steps): InfoNCE from ln(3136) = 8.05 to 2.69, the right patch among the
3,136 for 48% of the predictions 1 row ahead and 20% of those 2 rows ahead; but the
mean-pooled patch features probe below the initial encoder's: 1% (200 labels) 0.137 vs
0.174, 10% 0.279 vs 0.349, all 0.350 vs 0.469, kNN 0.095 vs 0.177 (chance 0.025). Telling
8x8 patches of textured backgrounds apart is learnt from the textures, which say
nothing of the object's class. 11.5 minutes of wall time on 2 CPU cores, 1 device.

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
  config.method = 'cpc'
  config.batch_size = 64
  config.total_epochs = 3
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  config.data.name = 'scenes/single'
  pp = 'decode|value_range(0, 1)'
  config.data.pp_train = f'{pp}|random_crop(32, pad=2)|keep("image")'
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 40

  # No BatchNorm: its batch statistics would let patches of one batch share information.
  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pooling = 'max'
  config.model.dense_features = (128,)
  config.model.use_batchnorm = False

  config.cpc = dict(patch_size=8, patch_stride=4, prediction_steps=2, context_features=128,
                    context_layers=2, kernel_size=3)

  config.optimizer.name = 'adam'
  config.lr = 1e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 100

  config.evals.probe = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0)
  config.evals.probe_random_init = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0,
      encoder='initial')
  config.evals.progress = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, knn_only=True)

  if 'local' in args:
    config.model.features = (8, 16)
    config.model.dense_features = (16,)
    config.cpc.context_features = 16
    config.batch_size = 16
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.schedule.warmup_steps = 1
    for name in ('probe', 'probe_random_init', 'progress'):
      config.evals[name].batch_size = 120
      config.evals[name].label_fractions = (0.1, 1.0)
  return config
