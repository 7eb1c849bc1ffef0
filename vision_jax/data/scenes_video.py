r"""`scenes_video`: clips of a shape in motion; the class is the motion.

Each clip shows one moving shape (the actor) over up to two still ones, on a
`scenes` background, with fresh pixel noise in every frame. Position, size and
orientation are drawn so that every class covers the same range of them, so one
frame cannot tell the class: a model has to compare frames.

  import vision_jax.data  # registers the builders
  ds = tfds.load('scenes_video', split='train')  # video uint8 [16, 32, 32, 3], label

Features: `video` (uint8 [T, H, W, 3]), `label` (MOTIONS, usable as text) and
`caption` ('a red star moving left'). The caption vocabulary is in the metadata
(`text.from_metadata(builder.info.metadata)`).

Look at the data: python -m vision_jax.data.scenes_preview --config video --out /tmp/scenes
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import generation
from vision_jax.data import scenes_render as render
from vision_jax.data import text

MOTIONS = ('moving left', 'moving right', 'moving up', 'moving down', 'growing',
           'shrinking', 'rotating clockwise', 'rotating counterclockwise', 'bouncing',
           'circling')
# A turning circle looks still, so actors are the other shapes.
ACTOR_SHAPES = tuple(s for s in render.SHAPES if s != 'circle')


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
  low = render.SHAPE_EXTENT * float(radius.max()) + 0.5
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
  rng = np.random.default_rng([config.seed, generation.SPLIT_IDS[split], index])
  size, num_frames = config.image_size, config.num_frames
  label = int(rng.integers(len(MOTIONS)))
  shape = ACTOR_SHAPES[rng.integers(len(ACTOR_SHAPES))]
  color = int(rng.integers(len(render.COLORS)))
  rgb = np.clip(render.COLOR_RGB[color] + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
  path = {k: v[:, None, None] for k, v in
          motion_path(rng, MOTIONS[label], num_frames, size).items()}

  image = render.background(rng, size)
  num_distractors = rng.integers(config.max_distractors + 1)
  still = render.random_object_style(rng, num_distractors, size,
                                     np.arange(len(render.CLASS_NAMES)))
  sdfs = [render.object_sdf(render.SHAPES[s], *rng.uniform(0, size, 2), r, a, size)
          for s, r, a in zip(still['shape'], still['radius'], still['angle'])]
  image = render.composite(image, sdfs, still['rgb'])

  actor = render.object_sdf(shape, path['cx'], path['cy'], path['radius'], path['angle'], size)
  frames = render.composite(image, [actor], [rgb])
  frames += rng.uniform(1, 6) * rng.standard_normal(frames.shape, np.float32)
  return {'video': render.to_uint8(frames), 'label': label,
          'caption': f'a {render.COLORS[color]} {shape} {MOTIONS[label]}'}


def encoded_clip(config: ScenesVideoConfig, split: str, index: int) -> dict:
  """`generate_clip` as TFDS takes it: frames as PNG."""
  clip = generate_clip(config, split, index)
  return clip | {'video': [generation.png(frame) for frame in clip['video']]}


class ScenesVideo(generation.GeneratedBuilder):
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
      self.info.metadata.update(text.dataset_metadata({'caption': captions}))
