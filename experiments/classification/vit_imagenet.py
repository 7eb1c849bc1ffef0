r"""ViT-Ti/16, S/16 and B/16 on ImageNet-1k from scratch: the big_vision / DeiT recipe.

  python -m vision_jax.train \
      --config experiments/classification/vit_imagenet.py:variant=B/16 \
      --workdir /tmp/vit_b16_imagenet --config.data.data_dir=/path/to/tensorflow_datasets

For accelerators. The recipe is big_vision's `configs/vit_i1k.py` ("How to train your
ViT?", Steiner et al., 2021, arXiv:2106.10270) at DeiT's batch (Touvron et al., 2021):
224x224 inputs, Inception-style random resized crops (5% to 100% of the area, as
big_vision's inception crop) and left-right flips, pixels in [-1, 1]; evaluation
resizes the short side to 256 and takes the central 224x224. The ViT has a class token,
learned position embeddings and a tanh pre-logits layer of the model's width
(big_vision's `rep_size=True`, `pool_type='tok'`), no dropout. AdamW with b1 0.9, b2
0.999 and weight decay 0.1 on the kernels (optax multiplies it by the learning rate,
so at lr 1e-3 it is big_vision's decoupled 1e-4; DeiT uses 0.05), gradient clipping at
global norm 1.0, peak lr 1e-3 x batch / 1024 (DeiT's 5e-4 per 512) reached by a linear
warm-up over 10,000 steps, then cosine decay to 0; batch 1024 (big_vision uses 4096 at
lr 1e-3: `--config.batch_size=4096 --config.lr_batch_base=4096`), 300 epochs, label
smoothing 0.1 (DeiT's; big_vision's i1k recipe has none), bfloat16 compute with float32
parameters.

What it leaves out, because the project has no such preprocessing ops or layers:
RandAugment and mixup (big_vision: RandAugment(2, 15) and mixup p=0.5 for S/16 and
B/16, RandAugment(2, 0) for Ti/16; DeiT adds CutMix, random erasing, repeated
augmentation and stochastic depth). Expect less than the papers' top-1 (DeiT with all of
them: 72.2% Ti/16, 79.8% S/16, 81.8% B/16), and most of all for B/16: AugReg finds that on ImageNet-1k the larger ViTs need the augmentation and regularisation
to avoid overfitting. The zero-initialised head and head bias of big_vision are also not
reproduced (the model's head has Flax's default initialisation). This recipe has not
been run here (no ImageNet and no accelerator).

Data: the TFDS `imagenet2012` dataset (its files need a manual download; prepare it
with `tfds build imagenet2012 --manual_dir=...`), read from `--config.data.data_dir`;
or your own images with `--config.data.name=folder:/path`, laid out as
`root/<split>/<class>/<image>` with the splits `train` and `validation` (another eval
split: `--config.evals.eval.data.split=val`). Images of any size and grey-scale JPEGs
both work: the pp decodes to 3 channels and crops to 224x224.

`variant` is `Ti/16` (width 192, 12 blocks, 3 heads), `S/16` (384, 12, 6) or `B/16`
(768, 12, 12; the default). `:local` (e.g. `:variant=S/16,local`) is a seconds-long
smoke run on `fake_images/imagenet2012` at 64x64 with a two-block ViT of width 32 and
the variant's patch size, in float32.
"""

from vision_jax import config_lib
from vision_jax.models import vit

VARIANTS = ('Ti/16', 'S/16', 'B/16')


def preprocessing(crop: int) -> tuple[str, str]:
  """Train and eval pp strings for `crop`-sized inputs; eval resizes to crop * 8/7."""
  normalize = 'value_range(-1, 1)'
  train = (f'decode(channels=3)|random_resized_crop({crop}, area_min=0.05)|flip_lr|'
           f'{normalize}')
  evaluate = (f'decode(channels=3)|resize_small({round(crop * 8 / 7)})|'
              f'central_crop({crop})|{normalize}')
  return train, evaluate


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'variant', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use variant=V and/or local')
  variant = args.get('variant', 'B/16')
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {", ".join(VARIANTS)}, got {variant!r}')
  width = vit.decode_variant(variant)['width']

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 1024
  config.total_epochs = 300
  config.log_every_steps = 100
  config.eval_every_steps = 2_500
  config.checkpoint_every_steps = 1_000
  config.compute_dtype = 'bfloat16'
  config.classification = dict(label_smoothing=0.1)

  config.data.name = 'imagenet2012'
  config.data.pp_train, pp_eval = preprocessing(224)
  config.data.cache = False  # 150 GB of JPEGs do not fit in memory.
  # A preprocessed example and the class count, for the tools that build the model
  # without the dataset (vision_jax.summary, vision_jax.benchmark).
  config.data.input_shape = (224, 224, 3)
  config.data.num_classes = 1000

  config.model.name = 'vit'
  config.model.variant = variant
  config.model.pool = 'cls'
  config.model.posemb = 'learn'
  config.model.representation_size = width
  config.model.dropout_rate = 0.0

  config.optimizer.name = 'adamw'
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.1
  config.optimizer.decay_weights_only = True  # No decay on biases and LayerNorms.
  config.optimizer.grad_clip_norm = 1.0
  config.lr = 1e-3
  config.lr_batch_base = 1024
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 10_000

  # top1 is `accuracy`; the evaluator also reports `top5_accuracy`.
  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='validation'), pp=pp_eval,
      batch_size=1024, num_figure_images=32)

  if 'local' in args:
    config.data.name = 'fake_images/imagenet2012'
    config.data.pp_train, pp_eval = preprocessing(64)
    config.data.cache = True
    config.data.input_shape = (64, 64, 3)
    config.compute_dtype = 'float32'  # bfloat16 is slow on CPUs.
    config.model.width = 32
    config.model.depth = 2
    config.model.num_heads = 2
    config.model.representation_size = 32
    config.batch_size = 16
    config.total_epochs = None
    config.total_steps = 3
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 3
    config.schedule.warmup_steps = 1
    config.evals.eval.pp = pp_eval
    config.evals.eval.batch_size = 64
  return config
