r"""DCGAN on MNIST (Radford et al., 2016): samples that read as digits of all ten classes.

  python -m vision_jax.train --config experiments/generative/gan_mnist.py \
      --workdir /tmp/gan_mnist [--config.evals.eval.fid_classifier=/tmp/cnn_mnist]

The paper's recipe at half its MNIST widths: G projects z (100-d) to 7x7x64, then two
stride-2 transposed convolutions (32 channels, then the image) with BatchNorm and ReLU
and a tanh output; D has two stride-2 convolutions (32, 64) with LeakyReLU 0.2 and
BatchNorm after the second, and one logit. Adam (lr 2e-4, beta1 0.5) for both players,
batch 64, 2,000 steps (2.1 epochs of MNIST), the non-saturating G loss, an EMA of G
(decay 0.999) for the samples. `:conditional` embeds the class next to z and makes D a
projection discriminator; the evaluator's grid then has one row per class.

The TFDS `mnist` dataset is read from `--config.data.data_dir` (prepare it with
`tfds build mnist` where there is network); where it is absent the run trains on the
embedded `digits` (1,437 8x8 scans, resized to 28x28) instead (`data.fallback`). The
FID classifier is a classification run on the same data and preprocessing, e.g.
`experiments/classification/cnn_mnist.py` (on the digits:
`--config.data.name=digits --config.total_epochs=30`, 99.4% test accuracy).

Measured on the embedded digits (2 CPU cores, one device), scored by that digits
classifier against the 1,437 training images (1,000 samples; the 360 test images score
`fid_classifier_floor` 8.4):

  run            wall time  fid_classifier  precision  recall  class entropy  label acc.
  unconditional  2:30       71.0            0.38       0.79    0.966          -
  :conditional   2:31       22.7            0.89       0.38    1.000          0.998

(wall time including the evaluations at steps 1,000 and 2,000). The unconditional
samples are blurry digit shapes, many of them readable (0, 3, 5, 6 and 9 most clearly),
of every class (the classifier's class histogram of them has a normalised entropy of
0.966; 1 is uniform). The conditional ones are clean digits of the class asked for, in
exactly balanced proportions, but less varied than the data (recall 0.38). Over
training D's probabilities stay away from 0 and 1 (unconditional: train `d_real` 0.75
to 0.85 after the first 200 steps, `d_fake` 0.15 to 0.26, `d_loss` 0.34 to 0.65); a
`d_loss` that falls towards 0 would be D winning, the failure to watch for. Not
measured on MNIST itself (no copy of it here).

`:local` is a seconds-long smoke run on the embedded `digits` with tiny players.
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local', 'conditional'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local, :conditional, '
                     'both (:local,conditional) or nothing')

  config = config_lib.base_config()
  config.method = 'gan'
  config.batch_size = 64
  # In steps, so that the run on the 40 times smaller digits is as long as on MNIST.
  config.total_steps = 2_000
  config.log_every_steps = 100
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000

  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  # resize(28) lets the 8x8 digits, or a folder of digit images, stand in for MNIST.
  config.data.pp_train = 'decode(1)|resize(28)|value_range(0, 1)'
  pp_eval = 'decode(1)|resize(28)|value_range(0, 1)'
  config.data.input_shape = (28, 28, 1)
  config.data.num_classes = 10

  config.model.name = 'dcgan'
  config.model.latent_dim = 100
  # Half the widths of the usual MNIST DCGAN (128, 64): 4 times fewer FLOPs, so that
  # the embedded-digits run takes minutes on a laptop's CPU.
  config.model.generator_features = (64, 32)  # 7x7 -> 14x14 -> 28x28
  config.model.discriminator_features = (32, 64)  # 28x28 -> 14x14 -> 7x7
  config.model.discriminator_norm = 'batch'

  config.gan = dict(generator_loss='non_saturating', gradient_penalty='none',
                    conditional='conditional' in args, ema_decay=0.999)

  # Section 4 of the paper: Adam, lr 2e-4, beta1 0.5, for both players.
  # Each player has its own optimizer group; the method rejects the base's single one,
  # which nothing would read.
  del config.optimizer, config.schedule
  config.lr = 2e-4
  config.optimizer_d = config_lib.optimizer_config(name='adam', b1=0.5, b2=0.999)
  config.optimizer_g = config_lib.optimizer_config(name='adam', b1=0.5, b2=0.999)
  config.schedule_d = config_lib.schedule_config(name='constant')
  config.schedule_g = config_lib.schedule_config(name='constant')

  # The grid: 10 samples of each class when conditional, else 8 rows of 8.
  config.evals.eval = config_lib.evaluator_config(
      type='generative', data=dict(split='test'), pp=pp_eval, batch_size=500,
      grid_samples=100 if config.gan.conditional else 64, interpolation_pairs=4,
      interpolation_points=8, fid_classifier='', fid_samples=1000)

  if 'local' in args:
    config.data.name = 'digits'
    config.model.latent_dim = 8
    config.model.generator_features = (8, 4)
    config.model.discriminator_features = (4, 8)
    config.model.label_features = 4
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    config.evals.eval.batch_size = 120
    config.evals.eval.grid_samples = 20
    config.evals.eval.fid_samples = 40
  return config
