r"""Fine-tunes a self-supervised encoder, with a new classifier, on few labels.

  python -m vision_jax.train \
      --config experiments/self_supervised/finetune.py:init_from=/tmp/simclr_mnist \
      --workdir /tmp/simclr_mnist_finetune

`init_from` is the workdir of a rotation or SimCLR run (`simclr_mnist.py`,
`rotation_scenes.py`, ...). This experiment reads that run's `config.json` for the
encoder and the data, builds the encoder as a classifier (the same `model` with a new
linear head), and starts from the run's latest checkpoint: every encoder parameter and
BatchNorm statistic is copied (`params/encoder` and `model_state/batch_stats/encoder`
of the pretraining state), the head starts from its initialiser. `:percent=P` (default
1) trains on the first P% of the training split (TFDS slicing: 600 images of MNIST's
60,000, about 60 per class, though not exactly balanced); `:scratch` trains the same
network from its random initialisation instead, the baseline that shows what the
pretraining gave. The whole network is trained: SGD with Nesterov momentum, lr 0.01,
weight decay 5e-4, cosine decay over 500 steps of batch 64, random 2-pixel shifts; the
`classification` evaluator reports top-1 accuracy on the test split.

From the `simclr_mnist.py` run on the embedded `digits` (1,437 training images), test
accuracy after fine-tuning against training the same network from scratch: 1% (the
first 14 images, not every class present) 0.564 vs 0.542; 10% (143 images) 0.981 vs
0.967. About 1.5 to 3 minutes per run on 2 CPU cores, shared with other jobs.

CPC's patch encoder reads patches of a fixed size (its dense layer is tied to it), so
a CPC run is evaluated by its probes, not here. `:local` is a seconds-long smoke run.
"""

import json
import os

import ml_collections

from vision_jax import config_lib
from vision_jax.methods import self_supervised

FINE_TUNED_METHODS = ('rotation', 'simclr')


def pretraining_config(workdir: str) -> dict:
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'init_from={workdir}: no config.json there; name the workdir of a '
                     'self-supervised run')
  with open(path, encoding='utf-8') as f:
    source = json.load(f)
  if source.get('method') not in FINE_TUNED_METHODS:
    raise ValueError(f'init_from={workdir} is a {source.get("method")!r} run; this '
                     f'experiment fine-tunes {" or ".join(FINE_TUNED_METHODS)} encoders')
  return source


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'init_from', 'percent', 'scratch', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use init_from=PATH, '
                     'percent=P, scratch, local')
  if 'init_from' not in args:
    raise ValueError('finetune.py needs init_from=<workdir of a self-supervised run>')
  source = pretraining_config(args['init_from'])
  percent = int(args.get('percent', 1))
  if not 1 <= percent <= 100:
    raise ValueError(f'percent must be an integer in 1..100, got {percent}')

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 64
  config.total_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  data = source['data']
  eval_pp = source['evals']['probe']['pp']  # The pretraining's plain (unaugmented) images.
  height = data['input_shape'][0]
  config.data.name = data['name']
  config.data.fallback = data['fallback']
  config.data.data_dir = data['data_dir']
  config.data.train_split = f'{data["train_split"]}[:{percent}%]'
  config.data.pp_train = f'{eval_pp}|random_crop({height}, pad=2)'
  config.data.input_shape = tuple(data['input_shape'])
  config.data.num_classes = data['num_classes']

  config.model = ml_collections.ConfigDict(
      {k: v for k, v in source['model'].items() if k != 'num_classes'})

  if 'scratch' not in args:
    config.init_from.path = args['init_from']
    config.init_from.subtrees = self_supervised.FINE_TUNE_SUBTREES
    config.init_from.exclude = self_supervised.FINE_TUNE_EXCLUDE

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.lr = 0.01
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 20

  config.evals.eval = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=eval_pp, batch_size=500)

  if 'local' in args:
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    config.schedule.warmup_steps = 1
    config.evals.eval.batch_size = 120
  return config
