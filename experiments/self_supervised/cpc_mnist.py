r"""Contrastive predictive coding on MNIST, evaluated by linear probes on few labels.

  python -m vision_jax.train --config experiments/self_supervised/cpc_mnist.py \
      --workdir /tmp/cpc_mnist

Each 28x28 image is cut into a 6x6 grid of 8x8 patches overlapping by half (stride
4); a CNN without BatchNorm (3x3 convolutions to 32 and 64 channels with 2x2 max
pooling, a 128-unit dense layer) encodes every patch; two masked 3x3 convolutions
over the grid, causal in rows, give the context; linear maps predict the patch
features 1 and 2 rows below, scored by InfoNCE against every patch of the global batch
of 64 images (2,304 candidates). Adam 1e-3 with cosine decay, 30 epochs. The probes
read the patch features mean-pooled over the grid (`probe`: logistic regression on 1%,
10% and 100% of the labels and a weighted kNN), beside the same probes on the encoder
this run started from (`probe_random_init`).

On the embedded `digits` (used where `mnist` is not prepared), the 30 epochs are 660
steps; InfoNCE falls to 1.62 (chance: ln 2304 = 7.74), picking the right patch among
the 2,304 for 73% of the predictions 1 row ahead and 40% of those 2 rows ahead. The
mean-pooled features probe at 1% (14 labels) 0.350 vs 0.361 for the encoder's initial
ones, 10% 0.786 vs 0.839, all 0.983 vs 0.972, kNN 0.575 vs 0.719: the patch features
learn to tell patches apart, which on these blurred, upsampled digits helps a probe
only with all the labels. 6.7 minutes of wall time on 2 CPU cores, shared with other
jobs.

The encoder reads 8x8 patches (its dense layer is tied to that size), so fine-tuning a
whole-image classifier from it is not offered; the probes are the evaluation.

`mnist` comes from `--config.data.data_dir`; a folder of MNIST images works with
`--config.data.name=folder:/path`; where `mnist` is not prepared, the embedded `digits`
are used instead (`data.fallback`). `:local` is a seconds-long smoke run on `digits`.
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
  config.total_epochs = 30
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  pp = 'decode(1)|resize(28)|value_range(0, 1)'
  config.data.pp_train = f'{pp}|random_crop(28, pad=2)|keep("image")'
  config.data.input_shape = (28, 28, 1)
  config.data.num_classes = 10

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
    config.data.name = 'digits'
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
