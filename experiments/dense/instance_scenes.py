r"""Instance segmentation on `scenes/multi`: a box, a shape and a mask for each object.

  python -m vision_jax.train --config experiments/dense/instance_scenes.py \
      --workdir /tmp/instance_scenes
  python -m vision_jax.detect --workdir /tmp/instance_scenes --image photo.png \
      --out /tmp/instances

CondInst (`vision_jax/methods/instance_segmentation.py`; why CondInst and not a RoIAlign
head is said there): the FCOS detector of `detect_scenes.py:arch=fcos` (ResNet-18 with
the CIFAR stem and 8 filters, a 32-channel pyramid on stages 2-4, strides 2, 4 and 8)
with a mask branch on the stride-2 level (two 3x3 GroupNorm convolutions, 8 output
channels) and a controller on the regression tower giving each location's 169-parameter
mask head (three 1x1 convolutions of 8 channels, the paper's). Dice loss on up to 32
sampled positive locations per image, the masks compared at 32x32 with the instance
map (`instances`, visible pixels of each object), which pp flips with the image and
the boxes and keeps. The evaluator scores boxes and masks with pycocotools (`AP`...,
`segm/AP`, `segm/AP50`, ...), writes both into `detections_test.json` (masks as RLE) and
draws the masks in distinct colours over the detections.

Same optimiser and schedule as the detector: AdamW (weight decay 1e-4, gradient norm
clipped at 10), lr 3e-3, 200 warm-up steps then a cosine decay, batch 32, 2,500 steps.

Goal: mask AP50 of at least 0.80 on the test split within 15 minutes on 2 CPU cores.
Measured on the test split, 13 min 18 s of wall time from launch to the final
evaluation on 2 otherwise idle cores of an Intel Xeon with AVX-512 (315,046 parameters):

           AP      AP50    AP75    AR100
  masks    0.737   0.950   0.836   0.811
  boxes    0.674   0.958   0.818   0.736

The mask goal is met; the boxes are as good as FCOS's alone (`detect_scenes.py`: AP
0.676, AP50 0.956), so the mask term costs the detector nothing.

`:local` is a seconds-long smoke run with a tiny model. `data.name=scenes/multi64`
trains on the 64x64 scenes (set `data.input_shape=(64, 64, 3)` too); the embedded
datasets are generated on first use.
"""

from vision_jax import config_lib
from vision_jax.data.scenes_render import SHAPES

MAX_OBJECTS = 4  # scenes/multi has 1 to 4 objects
OBJECTS = ("copy('objects/shape', 'objects/label')|"
           f"pad_sequence({MAX_OBJECTS}, 'objects')|"
           "keep('image', 'objects', 'objects_mask', 'instances')")


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  if set(args) - {'local'}:
    raise ValueError(f'unknown arguments {sorted(set(args) - {"local"})}; use local or none')
  local = 'local' in args

  config = config_lib.base_config()
  config.method = 'instance_segmentation'
  config.instance_segmentation = dict(class_names=SHAPES, center_sampling_radius=1.5,
                                      regression_bounds=(8.0, 16.0), max_mask_instances=32)
  config.model.update(
      name='fcos', depth=18, num_filters=8, stem='cifar',
      levels=('stage2', 'stage3', 'stage4'), fpn_features=32, head_convs=2, num_groups=8,
      regression='relu', mask_features=8, mask_branch_convs=2)

  config.data.name = 'scenes/multi'
  config.data.pp_train = ("decode|flip_lr(boxes=('objects/bbox',), instance_maps=('instances',))|"
                          f'value_range(0, 1)|{OBJECTS}')
  config.data.input_shape = (32, 32, 3)
  config.evals.test = config_lib.evaluator_config(
      type='detection', data=dict(split='test'), pp=f'decode|value_range(0, 1)|{OBJECTS}',
      batch_size=40 if local else 250, num_figure_images=4 if local else 8)

  config.batch_size = 32
  config.total_steps = 2500
  config.log_every_steps = 100
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 500
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 10.0
  config.lr = 3e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 200

  if local:
    config.model.update(num_filters=4, fpn_features=8, head_convs=1, num_groups=2,
                        mask_features=4, mask_branch_convs=1)
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.schedule.warmup_steps = 1
  return config
