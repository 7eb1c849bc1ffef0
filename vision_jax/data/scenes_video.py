r"""`scenes_video`: clips of a shape in motion; the class is the motion.

Each clip shows one moving shape (the actor) over up to two still ones, on a
`scenes` background, with fresh pixel noise in every frame. Position, size and
orientation are drawn so that every class covers the same range of them, so one
frame cannot tell the class: a model has to compare frames.

  import vision_jax.data  # registers the builders
  ds = tfds.load('scenes_video', split='train')  # video uint8 [16, 32, 32, 3], label

Features: `video` (uint8 [T, H, W, 3]), `label` (MOTIONS, usable as text) and
`caption` ('a red star moving left'). The caption vocabulary is in the metadata
(`scenes.vocabulary(builder)`).

Look at the data: python -m vision_jax.data.scenes --config video --out /tmp/scenes
"""

import dataclasses
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import scenes

MOTIONS = ('moving left', 'moving right', 'moving up', 'moving down', 'growing',
           'shrinking', 'rotating clockwise', 'rotating counterclockwise', 'bouncing',
           'circling')
# A turning circle looks still, so actors are the other shapes.
ACTOR_SHAPES = tuple(s for s in scenes.SHAPES if s != 'circle')


@dataclasses.dataclass
class ScenesVideoConfig(tfds.core.BuilderConfig):
  """What to generate and how much.

  Attributes:
    image_size: frame height and width in pixels.
    num_frames: frames per clip.
    max_distractors: the most still shapes besides the actor.
    num_train: training clips; also `num_validation` and `num_test`.
    seed: the seed every clip derives from.
  """
  image_size: int = 32
  num_frames: int = 16
  max_distractors: int = 2
  num_train: int = 5_000
  num_validation: int = 500
  num_test: int = 500
  seed: int = 0

  def split_sizes(self) -> dict[str, int]:
    return {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}


def _between(rng, low, high):
  """Uniform in [low, high], tolerating high < low by rounding (then low)."""
  return low + rng.random() * max(high - low, 0)


def motion_path(rng, motion: str, num_frames: int, size: int) -> dict[str, np.ndarray]:
  """Per-frame centre `cx`, `cy`, `radius` and `angle` (counterclockwise) of the actor."""
  scale = size / 32
  t = np.linspace(0, 1, num_frames, dtype=np.float32)
  still = np.ones_like(t)
  radius = rng.uniform(3.5, 7) * scale * still
  if motion in ('growing', 'shrinking'):
    radius = scale * (rng.uniform(2.5, 4) + rng.uniform(3, 4.5) * t)
    radius = radius if motion == 'growing' else radius[::-1]
  angle = rng.uniform(0, 2 * np.pi) * still
  if motion.startswith('rotating'):
    turn = np.deg2rad(rng.uniform(4, 7)) * (num_frames - 1)
    angle = angle + (turn if motion.endswith('counterclockwise') else -turn) * t
  low = scenes.SHAPE_EXTENT * float(radius.max()) + 0.5
  high = size - low
  cx, cy = _between(rng, low, high) * still, _between(rng, low, high) * still
  if motion.startswith('moving'):
    distance = min(rng.uniform(0.35, 0.6) * size, high - low)
    along = _between(rng, low, high - distance) + distance * (
        t if motion in ('moving right', 'moving down') else 1 - t)
    if motion in ('moving left', 'moving right'):
      cx = along
    else:
      cy = along
  elif motion == 'bouncing':  # hops off the floor, at least once per clip
    height = min(rng.uniform(0.3, 0.55) * size, high - low)
    floor = _between(rng, low + height, high)
    cy = floor - height * np.abs(np.sin(np.pi * (rng.uniform(1.2, 2) * t + rng.uniform())))
  elif motion == 'circling':
    orbit = min(rng.uniform(0.15, 0.25) * size, (high - low) / 2)
    cx0, cy0 = _between(rng, low + orbit, high - orbit), _between(rng, low + orbit, high - orbit)
    phase = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(1.6, 2.4) * np.pi * t
    cx, cy = cx0 + orbit * np.cos(phase), cy0 + orbit * np.sin(phase)
  return dict(cx=cx, cy=cy, radius=radius, angle=angle)


def generate_clip(config: ScenesVideoConfig, split: str, index: int) -> dict:
  """One clip as numpy arrays; a pure function of (seed, split, index)."""
  rng = np.random.default_rng([config.seed, scenes.SPLIT_IDS[split], index])
  size, num_frames = config.image_size, config.num_frames
  label = int(rng.integers(len(MOTIONS)))
  shape = ACTOR_SHAPES[rng.integers(len(ACTOR_SHAPES))]
  color = int(rng.integers(len(scenes.COLORS)))
  rgb = np.clip(scenes.COLOR_RGB[color] + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
  path = {k: v[:, None, None] for k, v in
          motion_path(rng, MOTIONS[label], num_frames, size).items()}

  image = scenes.background(rng, size)
  num_distractors = rng.integers(config.max_distractors + 1)
  still = scenes.random_object_style(rng, num_distractors, size, np.arange(len(scenes.CLASS_NAMES)))
  sdfs = [scenes.object_sdf(scenes.SHAPES[s], *rng.uniform(0, size, 2), r, a, size)
          for s, r, a in zip(still['shape'], still['radius'], still['angle'])]
  image = scenes.composite(image, sdfs, still['rgb'])

  actor = scenes.object_sdf(shape, path['cx'], path['cy'], path['radius'], path['angle'], size)
  frames = scenes.composite(image, [actor], [rgb])
  frames += rng.uniform(1, 6) * rng.standard_normal(frames.shape, np.float32)
  return {'video': scenes.to_uint8(frames), 'label': label,
          'caption': f'a {scenes.COLORS[color]} {shape} {MOTIONS[label]}'}


def encoded_clip(config: ScenesVideoConfig, split: str, index: int) -> dict:
  """`generate_clip` as TFDS takes it: frames as PNG."""
  clip = generate_clip(config, split, index)
  return clip | {'video': [scenes.png(frame) for frame in clip['video']]}


class ScenesVideo(scenes.GeneratedBuilder):
  """Clips of a moving coloured shape, classified by its motion."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [ScenesVideoConfig(name='default', description='16 frames, 32x32.')]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    size = config.image_size
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Video(shape=(config.num_frames, size, size, 3),
                                         encoding_format='png'),
            'label': tfds.features.ClassLabel(names=MOTIONS),
            'caption': tfds.features.Text(),
        }),
        supervised_keys=('video', 'label'),
        disable_shuffling=True,  # as in `scenes`: independent draws, stable bytes
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing is downloaded.
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, num: int):
    captions = []
    for index, clip in enumerate(self.generate(encoded_clip, num, self.builder_config, split)):
      if split == 'train':
        captions.append(clip['caption'])
      yield index, clip
    if split == 'train':
      self.info.metadata.update(scenes.text_metadata({'caption': captions}))


def preview(config: ScenesVideoConfig, split: str, num: int, out: str) -> list[str]:
  """Writes a frame strip (one clip per row) and an animated GIF of the clips."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  zoom, label_width, pad = 3, 150, 2
  clips = [generate_clip(config, split, i) for i in range(num)]
  size = config.image_size * zoom
  strip = Image.new('RGB', (label_width + config.num_frames * (size + pad), num * (size + pad)),
                    'white')
  draw = ImageDraw.Draw(strip)
  for row, clip in enumerate(clips):
    top = row * (size + pad)
    draw.text((4, top + size // 2 - 6), MOTIONS[clip['label']], fill='black')
    for col, frame in enumerate(clip['video']):
      strip.paste(Image.fromarray(frame).resize((size, size), Image.NEAREST),
                  (label_width + col * (size + pad), top))
  strip_path = os.path.join(out, f'scenes_video_{split}_frames.png')
  strip.save(strip_path)

  columns = math.ceil(math.sqrt(num))
  rows = math.ceil(num / columns)
  gif_frames = []
  for t in range(config.num_frames):
    canvas = Image.new('RGB', (columns * (size + pad), rows * (size + pad + 12)), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, clip in enumerate(clips):
      left, top = (i % columns) * (size + pad), (i // columns) * (size + pad + 12)
      canvas.paste(Image.fromarray(clip['video'][t]).resize((size, size), Image.NEAREST),
                   (left, top))
      draw.text((left + 2, top + size), MOTIONS[clip['label']], fill='black')
    gif_frames.append(canvas)
  gif_path = os.path.join(out, f'scenes_video_{split}.gif')
  gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], duration=120,
                     loop=0)
  return [strip_path, gif_path]
