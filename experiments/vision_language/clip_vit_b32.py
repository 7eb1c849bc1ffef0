r"""CLIP ViT-B/32 at OpenAI's sizes, pretrained on image-text pairs: the accelerator recipe.

  python -m vision_jax.train --workdir /tmp/clip_vit_b32 \
      --config experiments/vision_language/clip_vit_b32.py:bpe=~/bpe_simple_vocab_16e6.txt.gz

The model is OpenAI's ViT-B/32 CLIP (`models.clip.CLIP_VIT_B32`): a ViT-B/32 image tower
at 224x224 (no patch bias, a LayerNorm before the encoder), a 12-layer, 8-head, width-512
causal text Transformer over 77 byte-pair tokens (vocabulary 49,408), a 512-d embedding
space: 151,277,313 parameters, as `python -m vision_jax.summary --config
experiments/vision_language/clip_vit_b32.py` prints. The text is tokenized with OpenAI's
byte-pair tokenizer from its vocabulary file, which you bring (`bpe=`; it is
`bpe_simple_vocab_16e6.txt.gz` in OpenAI's CLIP repository; nothing is downloaded).

Data: TFDS `coco_captions` (Karpathy's split; train on `train+restval`, 113,287 images
with 5 captions each; `--config.data.data_dir=DIR` where it is prepared), or your own
captioned images in COCO's layout with `:data=json` and
`--config.data.name=coco_captions_json:/path/to/root` (see `data.coco_captions`; trains
on `train2014`, evaluates on `val2014`). Each epoch pairs every image with one of its
captions, drawn at random; Inception crops (area 0.9 to 1, as OpenAI's only
augmentation is a random square crop) at 224, OpenAI's normalisation constants.

Optimisation as in the paper's table 19 for ViT-B/32: AdamW (b1 0.9, b2 0.98, weight
decay 0.2 on weights, not on biases, gains or the logit scale), the paper's learning
rate 5e-4 at batch 32,768 scaled linearly to this batch of 4,096, 2,000 warm-up steps,
cosine decay, bfloat16 compute.
COCO alone is a small dataset for CLIP (0.6 M pairs against 400 M): expect far lower
zero-shot accuracy than the paper's, and overfitting after a few tens of epochs.

Evaluators: `retrieval` (recall@1/5/10 both ways over the 5,000 test images and their
25,000 captions) and, with `:zero_shot=cifar10` (or any TFDS classification dataset
that is prepared), zero-shot classification from its class names with prompts of the
paper's ensemble.

`:pretrained=DIR` starts from OpenAI's or open_clip's weights converted by
`python -m vision_jax.convert --from open_clip --arch ViT-B-32-quickgelu --in FILE --out
DIR` (the model then takes the converted `model.json`: QuickGELU and LayerNorm epsilon
1e-5 for OpenAI's weights) and fine-tunes them; `--config.total_steps=1 --config.lr=0`
evaluates them unchanged, e.g. zero-shot with `:pretrained=DIR,zero_shot=cifar10`.

This recipe has not been run here: there is neither COCO nor an accelerator on this
machine. `:local` is `clip_scenes.py`'s smoke run on the embedded scenes.
"""

import json
import os

import ml_collections

from vision_jax import config_lib
from vision_jax.models import clip

_RECIPE = config_lib.load_module(os.path.join(os.path.dirname(__file__), 'clip_scenes.py'))

DATA = ('tfds', 'json')
TRAIN_SPLIT = {'tfds': 'train+restval', 'json': 'train2014'}
EVAL_SPLIT = {'tfds': 'test', 'json': 'val2014'}
# OpenAI's image normalisation (in the [0, 1] range).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# A few of the paper's ImageNet prompt templates.
TEMPLATES = ('a photo of a {}.', 'a bad photo of a {}.', 'a photo of the large {}.',
             'a photo of the small {}.', 'a cropped photo of a {}.', 'art of the {}.',
             'a bright photo of a {}.', 'a blurry photo of a {}.')


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'data', 'bpe', 'zero_shot', 'pretrained', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use data=tfds|json, '
                     'bpe=PATH, zero_shot=DATASET, pretrained=DIR, local')
  if 'local' in args:
    return _RECIPE.get_config('local')
  data = args.get('data', 'tfds')
  if data not in DATA:
    raise ValueError(f'data must be one of {DATA}, got {data!r}')
  bpe = os.path.expanduser(args['bpe']) if args.get('bpe') else None

  config = config_lib.base_config()
  config.method = 'clip'
  # The vocabulary file is needed to train and to tokenize prompts, not to build the
  # model (the summary).
  config.clip = dict(bpe_path=bpe)
  config.batch_size = 4096
  config.total_epochs = 32
  config.log_every_steps = 50
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 1_000
  config.compute_dtype = 'bfloat16'

  references = 'captions/text' if data == 'tfds' else 'captions'
  config.data.name = 'coco_captions' if data == 'tfds' else 'coco_captions_json:'
  config.data.train_split = TRAIN_SPLIT[data]
  config.data.cache = False  # ~19 GB of encoded images: read them from disk each epoch.
  config.data.shuffle_buffer = 20_000
  tokenize = f'bpe_tokenize({clip.CLIP_VIT_B32["max_len"]}, path="{bpe}"'
  image = 'decode(channels=3)|{crop}|value_range(0, 1)|normalize({mean}, {std})'
  config.data.pp_train = (
      image.format(crop='random_resized_crop(224, area_min=0.9)', mean=MEAN, std=STD) +
      f'|choose_one(inkey="{references}", outkey="caption")|{tokenize})|'
      'keep("image", "tokens")')
  config.data.input_shape = (224, 224, 3)

  config.model = ml_collections.ConfigDict(dict(name='clip', **clip.CLIP_VIT_B32))
  if args.get('pretrained'):
    converted = os.path.join(os.path.expanduser(args['pretrained']), 'model.json')
    if not os.path.isfile(converted):
      raise ValueError(f'pretrained={args["pretrained"]} has no model.json; name a folder '
                       'written by python -m vision_jax.convert')
    with open(converted, encoding='utf-8') as f:
      model = json.load(f)['model']
    if model.get('name') != 'clip':
      raise ValueError(f'pretrained={args["pretrained"]} holds a {model.get("name")!r} '
                       'model, not a CLIP')
    config.model = ml_collections.ConfigDict(model)
    config.init_from.path = args['pretrained']
    config.init_from.subtrees = ('params',)

  config.optimizer.name = 'adamw'
  config.optimizer.b2 = 0.98
  config.optimizer.weight_decay = 0.2
  config.optimizer.decay_weights_only = True
  config.lr = 5e-4 * config.batch_size / 32_768  # the paper's 5e-4 at 32k, scaled
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 2_000

  eval_image = image.format(crop='resize(224)', mean=MEAN, std=STD)
  config.evals.retrieval = config_lib.evaluator_config(
      type='retrieval', data=dict(split=EVAL_SPLIT[data]),
      pp=(f'{eval_image}|{tokenize}, inkey="{references}", outkey="tokens")|'
          'keep("image", "tokens")'), batch_size=500)
  if args.get('zero_shot'):
    config.evals.zero_shot = config_lib.evaluator_config(
        type='zero_shot', data=dict(name=args['zero_shot'], split='test'),
        pp=f'{eval_image}|keep("image", "label")', templates=TEMPLATES, batch_size=500)
  return config
