r"""Image captioning on COCO: a ResNet-50 grid and a Transformer decoder.

Karpathy's split of COCO 2014 (TFDS `coco_captions`: train on `train+restval`, 113,287
images, evaluate on the 5,000 `test` images). Its TFDS metadata holds no vocabulary,
so build one first (the words of the training captions seen at least 5 times):

  python -m vision_jax.data.text build-vocab --data coco_captions \
      --split train+restval --field captions/text --min_count 5 --out ~/coco_vocab.json
  python -m vision_jax.train --workdir /tmp/caption_coco \
      --config experiments/vision_language/caption_coco.py \
      --config.data.vocabulary=~/coco_vocab.json

(add `--config.data.data_dir=DIR` where `coco_captions` is prepared; it is downloaded
and prepared on first use on a machine with network, about 38 GB.)

Your own captioned images, in COCO's layout (`root/annotations/captions_<split>.json`
in the COCO captions format and `root/<split>/<image>`; see `data.coco_captions`), e.g.
COCO 2014 as downloaded from cocodataset.org (trains on `train2014`, evaluates on
`val2014`; the vocabulary is that of the training captions, words seen at least 5
times, written when the dataset is prepared on first use):

  python -m vision_jax.train --workdir /tmp/caption_coco_json \
      --config experiments/vision_language/caption_coco.py:data=json \
      --config.data.name=coco_captions_json:/path/to/root

Other split names: `--config.data.train_split=train2017 --config.evals.val.data.split=val2017`.

The model: ResNet-50 (`resnet`, depth 50, no head, trained from scratch) at 224x224,
its 7x7 `stage4` grid cross-attended by a Transformer decoder (width 512, 3 layers, 8
heads, captions of at most 20 words); batch 256, AdamW at 3e-4 (cosine, 1 epoch of
warmup), 30 epochs; captions decoded by beam search with 3 beams and scored with BLEU-1..4
and CIDEr-D against all the image's references. Images are resized to 224x224 without
keeping their aspect ratio and not flipped (captions say left and right).

This recipe has not been run here: this machine has neither COCO nor an accelerator,
so there are no results to report for it yet.

`:local` is a seconds-long smoke run of the same design on the embedded `scenes/multi`
with tiny widths (the recipe of `caption_scenes.py`); `:local,data=json` the same on
`coco_captions_json:...` at 32x32.
"""

import os

from vision_jax import config_lib

_RECIPE = config_lib.load_module(os.path.join(os.path.dirname(__file__), 'caption_scenes.py'))

MAX_LEN = 22  # bos + 20 words and punctuation + eos; longer captions are cut.
DATA = ('tfds', 'json')
TRAIN_SPLIT = {'tfds': 'train+restval', 'json': 'train2014'}
EVAL_SPLIT = {'tfds': ('test', 'test'), 'json': ('val', 'val2014')}  # (evaluator, split)


def _pp(size: int, references: str) -> tuple[str, str]:
  """(train, eval) preprocessing; `references` is the field of the captions' texts."""
  # channels=3: COCO has grey JPEGs among the colour ones.
  image = f'decode(channels=3)|resize({size})|value_range(0, 1)'
  train = (f'{image}|choose_one(inkey="{references}", outkey="caption")|'
           f'tokenize({MAX_LEN})|keep("image", "tokens")')
  evaluate = (f'{image}|copy("{references}", "references")|'
              'keep("image", "references", "image/id")')
  return train, evaluate


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'data', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use data=tfds|json, local')
  data = args.get('data', 'tfds')
  if data not in DATA:
    raise ValueError(f'data must be one of {DATA}, got {data!r}')
  local = 'local' in args
  if local and 'data' not in args:
    return _RECIPE.get_config('decoder=transformer,local')

  config = _RECIPE.captioning_config('transformer', local, data_name='scenes/multi',
                                     eval_splits=())
  size = 32 if local else 224
  if data == 'tfds':
    config.data.name = 'coco_captions'
    references = 'captions/text'
  else:
    # The user's folder: --config.data.name=coco_captions_json:/path/to/root.
    config.data.name = 'coco_captions_json:'
    references = 'captions'
  config.data.train_split = TRAIN_SPLIT[data]
  config.data.pp_train, pp_eval = _pp(size, references)
  config.data.input_shape = (size, size, 3)
  config.model.max_len = MAX_LEN
  eval_name, eval_split = EVAL_SPLIT[data]
  config.evals[eval_name] = config_lib.evaluator_config(
      type='captioning', data=dict(split=eval_split), pp=pp_eval,
      keep_on_cpu=('references', 'image/id'), references_key='references',
      image_id_key='image/id', batch_size=16 if local else 250)
  if local:
    return config

  config.batch_size = 256
  config.total_epochs = 30
  config.log_every_steps = 100
  config.eval_every_steps = 4_000  # About 9 epochs of train+restval.
  config.checkpoint_every_steps = 2_000
  # Encoded COCO images are ~19 GB: read them from disk each epoch, shuffle in a
  # window of them rather than the whole split.
  config.data.cache = False
  config.data.shuffle_buffer = 10_000

  config.model.encoder = dict(name='resnet', depth=50)
  config.model.grid_key = 'stage4'
  config.model.width = 512
  config.model.num_layers = 3
  config.model.num_heads = 8

  config.captioning.beam_size = 3
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.lr = 3e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = None
  config.schedule.warmup_epochs = 1.0
  return config
