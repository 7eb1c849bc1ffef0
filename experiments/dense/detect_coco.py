r"""A recipe for accelerators: FCOS on COCO 2017 (80 classes), or on your own COCO files.

  python -m vision_jax.train --config experiments/dense/detect_coco.py \
      --config.data.data_dir=DIR --workdir /tmp/detect_coco
  python -m vision_jax.train --config experiments/dense/detect_coco.py:train=coco_json:/data/train.json,val=coco_json:/data/val.json \
      --workdir /tmp/detect_mine

Not run to convergence in this project: nothing below is a measured result (no
accelerator and no copy of COCO were at hand). `:local` runs the same recipe, shrunk, on
the embedded `scenes/multi`, which is what the tests check.

Data. By default TFDS's `coco/2017` (prepared beforehand into `data.data_dir`: train,
validation), whose `objects` hold `bbox`, `label` (0..79), `is_crowd` and `id`. With
`train=coco_json:/path/a.json` (and `val=coco_json:/path/b.json`), COCO instances files
with their images beside them (`vision_jax/data/coco_json.py`: the same feature names,
and the split is named by the file); the number of classes then comes from the file's
categories, and the written JSON files keep its category ids, so the evaluator's
`detections_<split>.json` can be rescored against the original file. Images are resized
to 512x512 (aspect ratio not kept; normalised boxes are unchanged by it) rather than the
paper's shorter side 800 (up to 1333): fixed shapes batch and compile once. So AP by
size uses the areas at 512x512, not the original images' (COCO's own numbers use the
original sizes). Objects are padded to 100 per image (COCO has up to 93 annotations per
image in train2017; `pad_sequence` would drop any beyond). Crowd regions
(`is_crowd`) are never assigned in training (`detection.crowd_key`) and are COCO's
ignore regions in evaluation; image ids come from `image/id`.

Recipe (the paper's 1x schedule, Tian et al. 2019, with its later-version choices): FCOS
on a ResNet-50 with the ImageNet stem, pyramid on stages 2-4 (strides 8, 16, 32) plus
P6 and P7 (64, 128), 256 channels, 4 GroupNorm convolutions per tower (32 groups),
centerness on the regression branch, normalised ReLU distances, GIoU loss, centre
sampling of 1.5 strides, level ranges of 8 strides (64, 128, 256, 512 pixels). SGD with
momentum 0.9, weight decay 1e-4, lr 0.01 for batch 16 with 500 warm-up steps, divided by
10 at 60,000 and 80,000 of 90,000 steps; left-right flips. Inference: score =
sqrt(sigmoid(class) * sigmoid(centerness)) above 0.05, the 1,000 best pairs per image,
class-wise NMS at IoU 0.6, 100 detections. The paper's comparable model (R-50, 1x,
with the improvements) reports 38.6-39.1 AP at 800 pixels; at 512 pixels expect less.

The backbone starts from an ImageNet run of `experiments/classification/resnet_imagenet.py`
with `--config.init_from.path=<its workdir>` (`BACKBONE_SUBTREES` copies its layers and
BatchNorm statistics, not its classifier, into `backbone/`); from scratch the 1x schedule
is far too short. Images enter in [0, 1], as `vision_jax.detect` feeds them, without the
classifier's ImageNet mean/std: the BatchNorm after the first convolution absorbs the
difference (the three channels' std are within 2% of each other).

`:local` is a seconds-long smoke run of the recipe on the scenes (tiny model, CIFAR stem,
no extra levels).
"""

import os

from vision_jax import config_lib
from vision_jax.data.scenes_render import SHAPES
from vision_jax.models import resnet

SIZE = 512
MAX_OBJECTS = 100
OBJECTS = f"pad_sequence({MAX_OBJECTS}, 'objects')|keep('image', 'image/id', 'objects', 'objects_mask')"


def backbone_subtrees(depth: int) -> tuple[str, ...]:
  """`init_from.subtrees` pairs copying a ResNet classifier's layers (not its `head`) into
  the detector's `backbone/`, parameters and BatchNorm statistics."""
  _, stage_sizes = resnet.STAGES[depth]
  layers = ['conv_init', 'bn_init'] + [f'stage{s + 1}_block{b + 1}'
                                      for s, n in enumerate(stage_sizes) for b in range(n)]
  pairs = [f'params/{name}:params/backbone/{name}' for name in layers]
  pairs += [f'model_state/batch_stats/{name}:model_state/batch_stats/backbone/{name}'
            for name in layers if name != 'conv_init']
  return tuple(pairs)


def _split_of(name: str, default: str) -> str:
  """A `coco_json:` file's split is its file name without `.json`."""
  if name.startswith('coco_json:'):
    return os.path.splitext(os.path.basename(name[len('coco_json:'):]))[0]
  return default


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'train', 'val', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use train=coco_json:PATH, '
                     'val=coco_json:PATH and/or local')
  local = 'local' in args
  train_data = args.get('train', 'coco/2017')
  if 'train' in args and 'val' not in args:
    raise ValueError('train=coco_json:PATH needs val=coco_json:PATH, the file to evaluate on')
  val_data = args.get('val', '')  # '': the training data's validation split

  config = config_lib.base_config()
  config.method = 'detection'
  config.detection = dict(
      num_classes=None if train_data.startswith('coco_json:') else 80,
      crowd_key='objects/is_crowd', center_sampling_radius=1.5, regression_bounds=(),
      score_threshold=0.05, pre_nms_top_k=1000, nms_iou_threshold=0.6, max_detections=100)
  config.batch_size = 16
  config.total_steps = 90_000
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2_000

  config.data.name = train_data
  config.data.train_split = _split_of(train_data, 'train')
  config.data.pp_train = (f"decode(channels=3)|resize({SIZE})|flip_lr(boxes=('objects/bbox',))|"
                          f'value_range(0, 1)|{OBJECTS}')
  config.data.input_shape = (SIZE, SIZE, 3)
  config.data.cache = False

  config.model.update(name='fcos', depth=50, num_filters=64, stem='imagenet',
                      levels=('stage2', 'stage3', 'stage4'), extra_levels=2,
                      fpn_features=256, head_convs=4, num_groups=32, regression='relu')
  config.init_from.subtrees = backbone_subtrees(50)

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.lr = 0.01
  config.schedule.name = 'piecewise'
  config.schedule.warmup_steps = 500
  config.schedule.boundaries_steps = (60_000, 80_000)
  config.schedule.decay_factor = 0.1

  config.evals.val = config_lib.evaluator_config(
      type='detection',
      data=dict(name=val_data, split=_split_of(val_data, 'validation')),
      pp=f'decode(channels=3)|resize({SIZE})|value_range(0, 1)|{OBJECTS}',
      batch_size=64, crowd_key='objects/is_crowd', image_id_key='image/id',
      num_figure_images=8, cache=False)

  if local:  # The same recipe, tiny, on the embedded scenes (no crowds, no image ids).
    scenes_objects = ("copy('objects/shape', 'objects/label')|pad_sequence(4, 'objects')|"
                      "keep('image', 'objects', 'objects_mask')")
    config.data.name = 'scenes/multi'
    config.data.train_split = 'train'
    config.data.input_shape = (32, 32, 3)
    config.data.pp_train = ("decode|flip_lr(boxes=('objects/bbox',))|value_range(0, 1)|"
                            + scenes_objects)
    config.data.cache = True
    config.detection.update(num_classes=None, class_names=SHAPES, crowd_key='',
                            regression_bounds=(8.0, 16.0))
    config.model.update(depth=18, num_filters=4, stem='cifar', extra_levels=0,
                        fpn_features=8, head_convs=1, num_groups=2)
    config.init_from.subtrees = backbone_subtrees(18)
    config.evals.val.data.name = ''
    config.evals.val.data.split = 'test'
    config.evals.val.update(crowd_key='', image_id_key='', batch_size=40, num_figure_images=4,
                            pp='decode|value_range(0, 1)|' + scenes_objects, cache=True)
    config.batch_size = 16
    config.total_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 2
    config.schedule.update(name='cosine', warmup_steps=1, boundaries_steps=None)
  return config
