r"""A class-conditional DCGAN on the colour shapes of `scenes/single` (32x32, 40 classes).

  python -m vision_jax.train --config experiments/generative/gan_scenes.py \
      --workdir /tmp/gan_scenes [--config.evals.eval.fid_classifier=/tmp/cnn_scenes]

Each image holds one object (5 shapes x 8 colours = 40 classes, 3 sizes) on a noisy
background; G is given the class. DCGAN at a quarter of its usual 32x32 widths: G
projects z (100-d) and a 32-d class embedding to 4x4x64, then three stride-2 transposed
convolutions (32, 16, then RGB; BatchNorm, ReLU, tanh output); D has three stride-2
convolutions (16, 32, 64; LeakyReLU 0.2, BatchNorm after all but the first) and a
projection head. Adam (lr 2e-4, beta1 0.5) for both players, batch 64, 2,500 steps
(8 epochs of the 20,000 training scenes), an EMA of G (0.999) for the samples. The
evaluator's grid has 4 samples per class, one row per class.

The embedded dataset is generated on first use (about 1.5 minutes here). The FID
classifier can be `experiments/classification/cnn_scenes.py` (0.997 test accuracy on
the same data).

Measured (2 CPU cores, one device): 3:25 wall time, training and the final evaluation,
with an earlier, weaker classifier (`cnn_digits.py --config.data.name=scenes/single
--config.total_epochs=3`, 51% test accuracy: colours perfectly, shapes half the
time): `fid_classifier` 28.3 (floor 1.1 for the 2,000 test images
against the 20,000 training ones), precision 0.64, recall 0.58, `sample_class_entropy`
0.91. The samples are blobs of the asked colour on plausible backgrounds: the
classifier gives 79% of them the asked colour (100% on test images), but only 24% the
asked shape (chance: 20%; 50% on test images), i.e. shapes are not yet drawn at this
length and width. Train `d_real` 0.76 to 0.86 and `d_fake` 0.13 to 0.24 from step 500
on; `d_loss` never approached 0.

`:local` is a seconds-long smoke run with tiny players (it prepares `scenes/single`).
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'gan'
  config.batch_size = 64
  config.total_steps = 2_500  # 8 epochs of the 20,000 training scenes
  config.log_every_steps = 100
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 500

  # One object per image; its class ('red circle', ...) is the label G is given.
  config.data.name = 'scenes/single'
  config.data.pp_train = 'decode|value_range(0, 1)|keep("image", "label")'
  pp_eval = 'decode|value_range(0, 1)|keep("image", "label")'
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 40

  config.model.name = 'dcgan'
  config.model.latent_dim = 100
  # A quarter of DCGAN's usual 32x32 widths (256, 128, 64), for minutes on a CPU; twice
  # these widths cost about 4 times as much per step.
  config.model.generator_features = (64, 32, 16)  # 4x4 -> 8x8 -> 16x16 -> 32x32
  config.model.discriminator_features = (16, 32, 64)  # 32x32 -> 16x16 -> 8x8 -> 4x4
  config.model.label_features = 32

  config.gan = dict(generator_loss='non_saturating', gradient_penalty='none',
                    conditional=True, ema_decay=0.999)

  # Each player has its own optimizer group; the method rejects the base's single one,
  # which nothing would read.
  del config.optimizer, config.schedule
  config.lr = 2e-4
  config.optimizer_d = config_lib.optimizer_config(name='adam', b1=0.5, b2=0.999)
  config.optimizer_g = config_lib.optimizer_config(name='adam', b1=0.5, b2=0.999)
  config.schedule_d = config_lib.schedule_config(name='constant')
  config.schedule_g = config_lib.schedule_config(name='constant')

  # One row of 4 samples for each of the 40 classes.
  config.evals.eval = config_lib.evaluator_config(
      type='generative', data=dict(split='test'), pp=pp_eval, batch_size=500,
      grid_samples=160, interpolation_pairs=4, interpolation_points=8,
      fid_classifier='', fid_samples=1000)

  if 'local' in args:
    config.model.latent_dim = 8
    config.model.generator_features = (8, 8, 4)
    config.model.discriminator_features = (4, 8, 8)
    config.model.label_features = 4
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    config.evals.eval.batch_size = 100
    config.evals.eval.grid_samples = 40
    config.evals.eval.fid_samples = 40
  return config
