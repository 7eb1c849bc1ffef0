r"""Action recognition on UCF101 from scratch: R(2+1)D-18, R3D-18 or ViViT, for accelerators.

  python -m vision_jax.train --config experiments/video/video_ucf101.py:arch=2plus1d \
      --workdir /tmp/ucf101_r2plus1d --config.data.data_dir=/path/to/tensorflow_datasets

The TFDS `ucf101` dataset (config `ucf101_1_256`: split 1, frames of 256x256) is read
from `data.data_dir`; prepare it with `tfds build ucf101` where there is network. Your
own clips work too: `--config.data.name=folder:/path` with `root/<split>/<class>/<clip>`,
each clip a folder of frames, a GIF or a video file (`data/video_folder.py`), and the
splits `train` and `test`.

The recipe follows Tran et al. (2018) for the ResNets, trained from scratch as in their
table 2: 16-frame clips of every second frame, the short side resized to 128 and random
112x112 crops with horizontal flips (actions keep their class in a mirror), SGD with
momentum 0.9, weight decay 1e-4, batch 64, a linear warm-up and a cosine decay over 100
epochs. Test: 10 evenly spaced clips per video, centre-cropped, logits averaged, beside
the single central clip. UCF101 from scratch is small for these networks: expect tens of
percent below the Kinetics-pretrained numbers of the papers (Tran et al. report 96.8%
for R(2+1)D-34 pretrained on Kinetics). This recipe has not been run here (no UCF101
and no accelerator).

`arch` is `2plus1d` (R(2+1)D-18), `3d` (R3D-18) or `vivit` (ViViT-B factorised encoder,
16x16x2 tubelets, AdamW). `:local` (e.g. `:arch=vivit,local`) is the matching
seconds-long smoke run on the embedded `scenes_video`.
"""

import os

from vision_jax import config_lib

_SCENES = config_lib.load_module(os.path.join(os.path.dirname(__file__), 'video_scenes.py'))
ARCHS = ('2plus1d', '3d', 'vivit')
NUM_FRAMES, STRIDE = 16, 2
# Kinetics-400 statistics in [0, 1], as torchvision's video models use them.
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'arch', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use arch={"|".join(ARCHS)} '
                     'and/or local')
  arch = args.get('arch', '2plus1d')
  if arch not in ARCHS:
    raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
  if 'local' in args:
    # The same architecture at its small `video_scenes` size, on the embedded clips.
    return _SCENES.get_config(f'arch={arch},local')

  config = config_lib.base_config()
  config.method = 'classification'
  config.batch_size = 64
  config.total_epochs = 100
  config.log_every_steps = 50
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000

  config.data.name = 'ucf101/ucf101_1_256'
  normalize = f'value_range(0, 1, key="image")|normalize({MEAN}, {STD}, key="image")'
  keep = 'keep("image", "label")'
  config.data.pp_train = (
      f'temporal_crop({NUM_FRAMES}, stride={STRIDE}, outkey="image")|'
      f'resize_small(128, key="image")|random_crop(112, key="image")|'
      f'flip_lr(key="image")|{normalize}|{keep}')
  single_clip = (f'temporal_crop({NUM_FRAMES}, stride={STRIDE}, central=True, '
                 f'outkey="image")|resize_small(128, key="image")|'
                 f'central_crop(112, key="image")|{normalize}|{keep}')
  multi_clip = (f'resize_small(128, key="video")|central_crop(112, key="video")|'
                f'temporal_clips(10, {NUM_FRAMES}, stride={STRIDE}, outkey="image")|'
                f'{normalize}|{keep}')
  config.data.input_shape = (NUM_FRAMES, 112, 112, 3)
  config.data.num_classes = 101

  if arch == 'vivit':
    config.model.update(dict(name='vivit', width=768, spatial_depth=12, temporal_depth=4,
                             num_heads=12, patch_size=16, tubelet_frames=2,
                             dropout_rate=0.1))
    config.optimizer.name = 'adamw'
    config.optimizer.weight_decay = 0.05
    config.lr = 3e-4
    config.compute_dtype = 'bfloat16'
  else:
    config.model.update(dict(name='video_resnet', block=arch))  # The -18 defaults.
    config.optimizer.name = 'sgd'
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.lr = 0.01
  config.lr_batch_base = 64
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 5

  config.evals.test = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=single_clip, batch_size=64)
  config.evals.test_multi_clip = config_lib.evaluator_config(
      type='classification', data=dict(split='test'), pp=multi_clip, batch_size=16,
      pred='predict_views', every_steps=0)
  if arch == 'vivit':
    config.evals.attention = config_lib.evaluator_config(
        type='temporal_attention', data=dict(split='test'), pp=single_clip, batch_size=64,
        every_steps=0)
  return config
