r"""DDPM on MNIST (Ho et al. 2020), unconditional or class-conditional with guidance.

  python -m vision_jax.train --config experiments/generative/ddpm_mnist.py \
      --workdir /tmp/ddpm_mnist
  python -m vision_jax.train --config experiments/generative/ddpm_mnist.py:conditional \
      --workdir /tmp/ddpm_mnist_cond
  python -m vision_jax.sample --workdir /tmp/ddpm_mnist_cond --out /tmp/samples \
      --guidance 1 --steps 50

Ho et al.'s recipe scaled to 28x28: an epsilon-prediction U-Net of 64 channels with
multipliers (1, 2, 2) (28 -> 14 -> 7), 2 residual blocks per level, self-attention at
7x7, dropout 0.1; the linear schedule (T = 1000); L_simple; Adam at 2e-4 with 1,000
warm-up steps and gradients clipped at norm 1; EMA 0.9999; batch 128 for 30,000 steps
(64 epochs). `:conditional` adds the class label (label dropout 0.1 for
classifier-free guidance) and evaluates with guidance w = 1 (eps = 2 eps(x, c) -
eps(x, null)). Samples are drawn with 50 DDIM steps (eta = 0).

Add `--config.evals.eval.fid_classifier=/tmp/cnn_mnist` (a run of
`experiments/classification/cnn_mnist.py`) for the classifier FID, the balance of the
sampled classes (`sample_class_entropy`) and, conditional, `sample_label_accuracy`. The
aim on MNIST: recognisable digits of every class in balanced proportions, and >= 95% of
the conditional samples for label k classified as k. Not measured here: MNIST is not
prepared on the machine this was written on, and there is no accelerator.

Without MNIST the run trains on the embedded `digits` (8x8, resized to 28x28) through
`data.fallback`, with this full recipe (hours on a CPU). `:digits` is the embedded-data
experiment sized for a CPU: a 16-channel U-Net (multipliers (1, 2, 2), 1 residual block
per level, attention at 7x7; 281k parameters), batch 32, 1,500 steps at lr 1e-3, EMA
0.995, evaluated with 25 DDIM steps. Measured with

  python -m vision_jax.train --config experiments/classification/cnn_mnist.py \
      --workdir /tmp/cnn_digits28 --config.data.name=digits --config.total_epochs=30
  python -m vision_jax.train --config experiments/generative/ddpm_mnist.py:digits,conditional \
      --workdir /tmp/ddpm_digits --config.evals.eval.fid_classifier=/tmp/cnn_digits28

(the classifier: 98.9% test accuracy): test simple_loss 0.0159; on 240 samples with
guidance 1, sample_label_accuracy 0.675, sample_class_entropy 0.994 (balanced), classifier
FID 30.5 (floor 8.4, the test images'), precision 0.36, recall 0.96. The digits are
recognisable and of the asked class about two times in three, some with speckle noise
left. It took 8.7 minutes of wall clock (11.9 CPU minutes) on 2 CPU cores, 1 device,
with small tests of another job beside it (load up to 2).

`:local` is a seconds-long smoke run on the digits with a tiny U-Net.
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local', 'conditional', 'digits'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use any of local, '
                     'conditional, digits')
  conditional = 'conditional' in args

  config = config_lib.base_config()
  config.method = 'diffusion'
  config.batch_size = 128
  config.total_steps = 30_000
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000

  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  # decode(1): grey, whatever an image folder holds; resize(28): digits stand in.
  config.data.pp_train = 'decode(1)|resize(28)|value_range(0, 1)'
  pp_eval = 'decode(1)|resize(28)|value_range(0, 1)'
  config.data.input_shape = (28, 28, 1)
  config.data.num_classes = 10

  config.model.name = 'unet'
  config.model.channels = 64
  config.model.channel_multipliers = (1, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (7,)
  config.model.dropout = 0.1

  config.diffusion = dict(conditional=conditional, beta_schedule='linear',
                          num_timesteps=1000, label_dropout=0.1, ema_decay=0.9999)

  config.optimizer.name = 'adam'
  config.optimizer.grad_clip_norm = 1.0
  config.lr = 2e-4
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = 1_000

  sample_options = dict(sampler='ddim', steps=50, eta=0.0,
                        guidance=1.0 if conditional else 0.0)
  config.evals.eval = config_lib.evaluator_config(
      type='generative', data=dict(split='test'), pp=pp_eval, batch_size=500,
      grid_samples=100 if conditional else 64, sample_options=sample_options,
      interpolation_pairs=4, interpolation_points=8, trajectory_samples=4,
      trajectory_frames=10, fid_classifier='', fid_samples=1000)

  if 'digits' in args:
    config.data.name = 'digits'
    config.batch_size = 32
    config.total_steps = 1_500
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 500
    config.model.channels = 16
    config.model.num_res_blocks = 1
    config.model.dropout = 0.0
    config.diffusion.ema_decay = 0.995
    config.lr = 1e-3
    config.schedule.warmup_steps = 100
    config.evals.eval.batch_size = 120
    config.evals.eval.sample_options.steps = 25
    config.evals.eval.fid_samples = 240

  if 'local' in args:
    config.data.name = 'digits'
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    # Two levels, no residual blocks on the way down, attention only in the middle (14x14):
    # what costs here is compiling.
    config.model.channels = 8
    config.model.channel_multipliers = (1, 2)
    config.model.num_res_blocks = 0
    config.model.attention_resolutions = ()
    config.diffusion.ema_decay = 0.9
    config.lr = 1e-3
    config.schedule.warmup_steps = 2
    config.evals.eval.batch_size = 40  # also the number of samples drawn at once
    config.evals.eval.grid_samples = 10
    config.evals.eval.sample_options.steps = 3
    config.evals.eval.interpolation_pairs = 2
    config.evals.eval.interpolation_points = 3
    config.evals.eval.trajectory_samples = 2
    config.evals.eval.trajectory_frames = 3
  return config
