r"""Fine-tune a pretrained torchvision ResNet or ViT on your own classes.

  python -m vision_jax.convert --from torchvision --arch resnet50 \
      --in resnet50-11ad3fa6.pth --out /tmp/resnet50_torchvision
  python -m vision_jax.train --workdir /tmp/finetune_flowers \
      --config experiments/classification/finetune_pretrained.py:init_from=/tmp/resnet50_torchvision \
      --config.data.name=folder:/data/flowers

`init_from` is the folder `vision_jax.convert` wrote (its `model.json` names the model and
the preprocessing the weights were trained with) or the `.safetensors` file itself. The
network starts from those weights, BatchNorm statistics included, and a new head for the
dataset's classes starts from scratch (`init_from.exclude = ('params/head',)`). The data
is normalised with the weights' own mean and std at their image size (224 for the
ResNets; a ViT's from its position embeddings); `:image_size=N` changes it (a ViT keeps
its own, which its position embeddings fix).

The recipe is the usual transfer one: SGD with Nesterov momentum 0.9, learning rate 0.01
per 256 images with 1 epoch of warm-up then cosine decay, no weight decay on biases and
norms (1e-4 on kernels), 10 epochs of random resized crops and flips. The embedded default
is `scenes/single` (40 colour-shape classes); your own images are
`--config.data.name=folder:/path` in the layout `root/<split>/<class>/<image>`. Meant for
an accelerator at 224 pixels; the full recipe has not been run here (no pretrained file
and no accelerator on this machine), only `:local` in the tests.

`:local` is a seconds-long smoke run at 32 pixels.
"""

import json
import os

import ml_collections

from vision_jax import config_lib

ARGS = ('init_from', 'image_size', 'local')


def pretrained(path: str) -> dict:
  """The `model.json` of a `vision_jax.convert` folder, or the same read off a weights file."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    from vision_jax import convert  # pylint: disable=g-import-not-at-top
    converted = convert.convert_file(path)
    return {'model': converted.model, 'preprocessing': converted.preprocessing}
  description = os.path.join(path, 'model.json')
  if not os.path.isfile(description):
    raise ValueError(f'init_from={path}: neither a weights file nor a folder written by '
                     'vision_jax.convert (it has no model.json)')
  with open(description, encoding='utf-8') as f:
    return json.load(f)


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - set(ARGS)
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use init_from=PATH, '
                     'image_size=N, local')
  if 'init_from' not in args:
    raise ValueError('finetune_pretrained.py needs init_from=<vision_jax.convert output or '
                     '.safetensors file>')
  source = pretrained(args['init_from'])
  model = dict(source['model'])
  if model['name'] not in ('resnet', 'vit'):
    raise ValueError(f'init_from={args["init_from"]} holds a {model["name"]} model; this '
                     'experiment fine-tunes ResNets and ViTs')
  local = 'local' in args
  prep = source['preprocessing']
  size = prep['image_size'] or int(args.get('image_size', 32 if local else 224))

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 16 if local else 256
  config.total_epochs = None if local else 10
  config.total_steps = 3 if local else None
  config.log_every_steps = 1 if local else 50
  config.eval_every_steps = 0 if local else 1_000
  config.checkpoint_every_steps = 3 if local else 1_000

  normalize = f'value_range(0, 1)|normalize({tuple(prep["mean"])}, {tuple(prep["std"])})'
  keep = '|keep("image", "label")'
  config.data.name = 'scenes/single'
  config.data.pp_train = (f'decode(channels=3)|random_resized_crop({size})|flip_lr|'
                          f'{normalize}{keep}')
  pp_eval = f'decode(channels=3)|resize({size})|{normalize}{keep}'
  config.data.input_shape = (size, size, 3)

  model.pop('num_classes', None)  # The dataset's.
  config.model = ml_collections.ConfigDict(model)
  config.init_from.path = args['init_from']
  config.init_from.subtrees = ('params', 'model_state') if model['name'] == 'resnet' else (
      'params',)
  config.init_from.exclude = ('params/head',)

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.decay_weights_only = True
  config.lr = 0.01
  config.lr_batch_base = 256
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = None if local else 1
  config.schedule.warmup_steps = 1 if local else None

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=pp_eval,
      batch_size=64 if local else 500, num_figure_images=32)
  return config
