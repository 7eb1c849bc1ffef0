r"""A small Vision Transformer trained from scratch on `scenes/single` (32x32, 40 classes).

  python -m vision_jax.train --config experiments/classification/vit_scenes.py \
      --workdir /tmp/vit_scenes

Each image holds one object; its class is colour x shape ('red circle': 8 colours, 5
shapes). The ViT cuts the image into 4x4 patches (8x8 = 64 tokens), adds fixed 2-D
sine-cosine position embeddings, runs 4 pre-LayerNorm blocks of width 64 with 4 heads
(mlp 256) and classifies the mean of the output tokens. AdamW (b2 0.999, weight decay
0.05 on the kernels), lr 2e-3 with half an epoch of linear warm-up then cosine decay,
batch 128 for 5 epochs of the 20,000 training scenes (780 steps), gradient clipping at
global norm 1.0, label smoothing 0.1. The model is narrow so that the run fits about
15 minutes of two shared CPU cores: a training step costs 12.3 GFLOP (XLA's count),
against 66.6 GFLOP for the same patches at width 128 with 6 blocks.

Augmentation keeps both halves of the label: random translations by up to 2 pixels
(padded with mid-grey, 0 in [-1, 1]) and left-right flips. Every shape is mirror-symmetric about its vertical
axis (circle, square, cross, and the triangle and star, which point up) and is drawn
turned by at most 0.4 rad either way, so a flipped scene is a scene of the same class.
Colour augmentation would change the label and is left out.

Measured (780 steps, once): test top-1 0.407, top-5 0.9995, mean per-class accuracy
0.405, short of the 0.9 aimed at. The ViT learns the colour at once (top-5 1.000 at
step 250, where top-1 is 0.261: the five shapes of the right colour) and the shape only
slowly (top-1 0.320 at step 500, 0.411 at 750): the confusion matrix is block-diagonal,
confusions are between the shapes of one colour. It took 17.0 minutes of wall time,
compiles included, and 10.7 CPU minutes on 2 cores of an AMD EPYC (AVX2) shared with
other jobs (a load of about 10). A first try with 8x8 patches (16 tokens), width 128
and lr 1e-3 was on the same colour-only plateau (test top-1 0.23 at step 250, training
loss 2.09 at step 393) when it was stopped. Longer training is the first thing to try
(`--config.total_epochs=30`); it does not fit the 15 minutes here.

`:local` is a seconds-long smoke run with a two-block ViT of width 32. The embedded
dataset is generated on first use (146 s here).
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 128
  config.total_epochs = 5
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.classification = dict(label_smoothing=0.1)

  config.data.name = 'scenes/single'
  pp = 'decode|value_range(-1, 1)'
  config.data.pp_train = f'{pp}|random_crop(32, pad=2)|flip_lr|keep("image", "label")'
  pp_eval = f'{pp}|keep("image", "label")'
  # A preprocessed example and the class count, for the tools that build the model
  # without the dataset (vision_jax.summary, vision_jax.benchmark).
  config.data.input_shape = (32, 32, 3)
  config.data.num_classes = 40

  config.model.name = 'vit'
  config.model.variant = None
  config.model.width = 64
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.patch_size = 4
  # Mean-pooled tokens and fixed 2-D sine-cosine position embeddings train faster than
  # a class token and learned embeddings (Beyer et al., 2022, "Better plain ViT
  # baselines for ImageNet-1k").
  config.model.pool = 'gap'
  config.model.posemb = 'sincos2d'

  config.optimizer.name = 'adamw'
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 1.0
  config.lr = 2e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 0.5

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=500, num_figure_images=32)

  if 'local' in args:
    config.model.width = 32
    config.model.depth = 2
    config.model.num_heads = 2
    config.batch_size = 32
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    config.schedule.warmup_epochs = None
    config.schedule.warmup_steps = 1
    config.evals.eval.batch_size = 64
  return config
