r"""DALL-E's two stages on `scenes/multi`: a VQ-VAE turns 32x32 scenes into 8x8 tokens,
then a Transformer prior learns captions followed by those tokens; text to image is
sampling the prior after a caption and decoding the tokens.

  python -m vision_jax.train --config experiments/vision_language/dalle_scenes.py:stage=vqvae \
      --workdir /tmp/dalle_scenes_vqvae
  python -m vision_jax.train --config experiments/vision_language/dalle_scenes.py:stage=prior \
      --config.dalle.vqvae_workdir=/tmp/dalle_scenes_vqvae --workdir /tmp/dalle_scenes_prior
  python -m vision_jax.generate --workdir /tmp/dalle_scenes_prior \
      --prompt "there is a small red circle." --prompt "a blue square." --num 8 \
      [--rerank_with /tmp/clip_scenes --keep 4] --out /tmp/dalle_scenes_samples

Stage `vqvae` (`methods/vqvae`): two stride-2 convolutions take 32x32 to an 8x8 grid of
32-d latents, each replaced by the nearest of 256 codes (EMA codebook, decay 0.99, dead
codes revived from the batch), and the mirrored decoder reconstructs; loss: the mean
squared error plus 0.25 times the commitment loss. The `generative` evaluator reports the
test `reconstruction_mse` and `psnr` and draws reconstructions.

Stage `prior` (`methods/dalle`): the frozen VQ-VAE's 64 tokens of each image after one of
its five captions (25 word tokens with bos, eos and padding), a 3-block decoder-only
Transformer of width 96 (4 heads), cross-entropy on the image tokens plus 1/8 weight on the
caption's (DALL-E's 1:7). The `text_to_image` evaluator draws images for test captions
and for the 40 class prompts ('a red circle.'); with
`--config.evals.text_to_image.classifier_workdir=` a classifier run on `scenes/single`
(experiments/classification/cnn_scenes.py) it reports `faithfulness`, and with
`--config.evals.text_to_image.clip_workdir=` a CLIP run (clip_scenes.py) the project
CLIP's score. `--rerank_with` in `vision_jax.generate` orders each prompt's candidates
by that CLIP's similarity (DALL-E's re-ranking).

Sizes: `python -m vision_jax.benchmark --steps 5 --warmup 2` measured on a shared 2-core
host (fastest and median step) 256 / 358 ms for the VQ-VAE's step of 64 images (1,000
steps, 3.2 epochs) and 413 / 817 ms for the prior's step of 32 captions (3,000 steps,
4.8 epochs; the benchmark's batch has random codes, so the frozen VQ-VAE's encoding, a
fraction of its own step, is not in it).

Measured (once, 2 cores of an AMD EPYC (AVX2), 1 device; the judge `cnn_scenes.py` at
0.997 test accuracy, the CLIP `clip_scenes.py` with its CNN tower):
- VQ-VAE: test PSNR 24.4 dB (MSE 0.0168 in [-1, 1]) in 2.5 minutes of wall time; the
  reconstructions keep colours and places but round off corners, so squares, stars
  and crosses lose some of their shape before the prior sees them.
- Prior, 3,000 steps (14.5 minutes, another training job beside it for half of them):
  training image-token loss 3.64 (perplexity 38 of 256 codes), token accuracy 0.158;
  `faithfulness` 0.0875 on the 160 class-prompt images (chance 0.025; goal 0.80),
  project CLIP score 0.262. The drawn objects often have the asked colour, rarely the
  asked shape. The first 800-step run gave 0.0375 and 0.181: training longer is what
  helps, and this budget is far from enough.

`,local` (`:stage=vqvae,local`) is a seconds-long smoke run with tiny models; the
embedded dataset is generated on first use (a few minutes).
"""

from vision_jax import config_lib

MAX_LEN = 25  # bos + the longest caption of scenes/multi (23 tokens) + eos
STAGES = ('vqvae', 'prior')


def vqvae_config(local: bool):
  config = config_lib.base_config()
  config.method = 'vqvae'
  config.batch_size = 32 if local else 64
  config.total_epochs = None
  config.total_steps = 6 if local else 1_000
  config.log_every_steps = 2 if local else 100
  config.checkpoint_every_steps = 3 if local else 500

  config.data.name = 'scenes/multi'
  config.data.pp_train = 'decode|value_range(0, 1)|keep("image")'
  config.data.input_shape = (32, 32, 3)

  config.model.name = 'vqvae'
  config.model.features = 8 if local else 64
  config.model.num_codes = 16 if local else 256
  config.model.code_dim = 4 if local else 32
  config.model.downsample_steps = 2
  config.model.residual_blocks = 1
  config.model.commitment_cost = 0.25
  config.model.ema_decay = 0.99

  config.optimizer.name = 'adam'
  config.lr = 1e-3 if local else 2e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 2 if local else 100

  config.evals.reconstruction = config_lib.evaluator_config(
      type='generative', pred='', data=dict(split='test'),
      pp='decode|value_range(0, 1)|keep("image")', batch_size=64 if local else 500,
      reconstruction_images=8)
  return config


def prior_config(local: bool):
  config = config_lib.base_config()
  config.method = 'dalle'
  config.batch_size = 32
  config.total_epochs = None
  config.total_steps = 6 if local else 3_000
  config.log_every_steps = 2 if local else 100
  config.checkpoint_every_steps = 3 if local else 500

  config.data.name = 'scenes/multi'
  # No flips or crops: captions say left, right, top and bottom.
  config.data.pp_train = (f'decode|value_range(0, 1)|choose_one|tokenize({MAX_LEN})|'
                          'keep("image", "tokens")')
  config.data.input_shape = (32, 32, 3)

  config.dalle = dict(vqvae_workdir='', text_loss_weight=1 / 8)
  config.model.name = 'dalle'
  config.model.text_len = MAX_LEN
  config.model.width = 16 if local else 96
  config.model.depth = 1 if local else 3
  config.model.heads = 2 if local else 4
  config.model.mlp_dim = 32 if local else 384
  config.model.dropout = 0.0 if local else 0.1

  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.01
  config.lr = 1e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 2 if local else 100

  config.evals.text_to_image = config_lib.evaluator_config(
      type='text_to_image', data=dict(split='test'),
      pp='decode|value_range(0, 1)|keep("image", "captions")',
      batch_size=16 if local else 80, caption_images=4 if local else 8,
      samples_per_class=1 if local else 4, classifier_workdir='', clip_workdir='',
      sample_options=dict(temperature=1.0, top_k=None if local else 64))
  return config


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'stage', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use stage=vqvae|prior, local')
  stage = args.get('stage')
  if stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
  local = 'local' in args
  return vqvae_config(local) if stage == 'vqvae' else prior_config(local)
