r"""A recipe for accelerators: FCN-8s or a U-Net on PASCAL VOC 2012 (21 classes).

  python -m vision_jax.train --config experiments/dense/segment_voc.py:arch=fcn \
      --config.data.name=voc2012_segmentation --config.data.data_dir=DIR \
      --workdir /tmp/segment_voc_fcn

Not run to convergence in this project: nothing below is a measured result (no
accelerator and no copy of VOC were at hand). `:local` (`:arch=unet,local`) runs the same
recipe, shrunk, on the embedded `scenes/multi`, which is what the tests check.

Data. TFDS has no VOC segmentation builder that works offline (`voc/2012` has boxes
only), so `data.name` is any TFDS dataset with an `image` and a `segmentation` label map
[H, W, 1] (class k at k, 255 at object boundaries and "difficult" regions, which
`segmentation.ignore_label` leaves out of the loss and the metrics). A VOC folder
(`JPEGImages/`, the palette PNGs of `SegmentationClass/`, `ImageSets/Segmentation/
{train,val}.txt`) becomes one with TFDS's ad hoc builder, once:

  import numpy as np, PIL.Image, tensorflow_datasets as tfds
  def split(root, name):
    for i, stem in enumerate(open(f'{root}/ImageSets/Segmentation/{name}.txt').read().split()):
      yield i, {'image': f'{root}/JPEGImages/{stem}.jpg',  # palette index = class
                'segmentation': np.asarray(PIL.Image.open(
                    f'{root}/SegmentationClass/{stem}.png'))[..., None]}
  tfds.dataset_builders.store_as_tfds_dataset(
      name='voc2012_segmentation', version='1.0.0', data_dir=DIR,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'segmentation': tfds.features.Image(shape=(None, None, 1), use_colormap=True)}),
      split_datasets={s: list(split(ROOT, s)) for s in ('train', 'val')})

(for SBD's 10,582 "train_aug" images, write their masks into the same layout). A
dataset whose map has another name takes a `copy('mask', 'segmentation')` op at the
front of both pp strings; `folder:` image folders hold class folders, not label maps,
and cannot be read by this recipe.

Recipe. `arch=fcn`: FCN-8s on a ResNet-50 with the ImageNet stem (score layers on stages
4, 3 and 2, strides 32, 16 and 8; Long et al. used VGG-16 and report 62.2 mean IoU on
VOC 2012 test). `arch=unet`: the U-Net of Ronneberger et al. with the paper's widths
(64 to 1024) and BatchNorm. Training crops: Inception-style crops of 25-100% of the image
resized to 320x320 and left-right flips, the label map moved with the image (nearest
neighbours). SGD with momentum 0.9, lr 0.01 (batch 16) with a cosine decay, weight decay
1e-4, 30,000 steps (about 45 epochs of train_aug). Evaluation resizes each image and its
label map to 320x320 (nearest neighbours for the map), so the reported mean IoU is that
of the resized maps, not the original-resolution score of the VOC benchmark.

A ResNet trained on ImageNet by `experiments/classification/resnet_imagenet.py` starts
the FCN's backbone with `--config.init_from.path=<its workdir>`: `BACKBONE_SUBTREES`
copies its blocks and statistics (not its classifier) into `backbone/`. Without it the
backbone starts from scratch, which is far from the paper's setting.
"""

from vision_jax import config_lib
from vision_jax.data.scenes_render import SEGMENTATION_CLASSES
from vision_jax.models import resnet

ARCHS = ('fcn', 'unet')
VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'dining table', 'dog', 'horse', 'motorbike', 'person', 'potted plant',
    'sheep', 'sofa', 'train', 'tv monitor')
CROP = 320
KEEP = "keep('image', 'segmentation')"


def backbone_subtrees(depth: int) -> tuple[str, ...]:
  """`init_from.subtrees` pairs copying a ResNet classifier's layers (not its `head`)
  into the FCN's `backbone/`, parameters and BatchNorm statistics."""
  _, stage_sizes = resnet.STAGES[depth]
  layers = ['conv_init', 'bn_init'] + [f'stage{s + 1}_block{b + 1}'
                                      for s, n in enumerate(stage_sizes) for b in range(n)]
  pairs = [f'params/{name}:params/backbone/{name}' for name in layers]
  pairs += [f'model_state/batch_stats/{name}:model_state/batch_stats/backbone/{name}'
            for name in layers if name != 'conv_init']
  return tuple(pairs)


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'arch', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use arch={"|".join(ARCHS)} '
                     'and/or local')
  arch = args.get('arch', 'fcn')
  if arch not in ARCHS:
    raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
  local = 'local' in args
  crop = 32 if local else CROP

  config = config_lib.base_config()
  config.method = 'segmentation'
  config.segmentation = dict(class_names=VOC_CLASSES, ignore_label=255)
  config.batch_size = 16
  config.total_steps = 30_000
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 2_000

  config.data.name = ''  # A TFDS name (see the docstring); the launch command sets it.
  config.data.pp_train = (
      f"decode|random_resized_crop({crop}, area_min=0.25, label_maps=('segmentation',))|"
      f"flip_lr(label_maps=('segmentation',))|value_range(0, 1)|{KEEP}")
  config.data.input_shape = (crop, crop, 3)

  if arch == 'fcn':
    config.model.update(name='segmentation', arch='fcn', depth=50, num_filters=64,
                        stem='imagenet', skips=('stage4', 'stage3', 'stage2'))
    config.init_from.subtrees = backbone_subtrees(50)
  else:
    config.model.update(name='segmentation', arch='unet', features=(64, 128, 256, 512, 1024))

  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.lr = 0.01
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 500

  config.evals.val = config_lib.evaluator_config(
      type='segmentation', data=dict(split='val'),
      pp=f"decode|resize({crop}, label_maps=('segmentation',))|value_range(0, 1)|{KEEP}",
      batch_size=64, num_figure_images=8)

  if local:  # The same recipe, tiny, on the embedded scenes.
    config.data.name = 'scenes/multi'
    config.segmentation.class_names = SEGMENTATION_CLASSES
    config.evals.val.data.split = 'test'
    if arch == 'fcn':
      config.model.update(depth=18, num_filters=4, stem='cifar')
      config.init_from.subtrees = backbone_subtrees(18)
    else:
      config.model.features = (4, 8, 16)
    config.batch_size = 16
    config.total_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 2
    config.schedule.warmup_steps = 1
    config.evals.val.batch_size = 40
    config.evals.val.num_figure_images = 4
  return config
