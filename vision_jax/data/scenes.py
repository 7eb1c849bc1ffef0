r"""`scenes`: procedurally generated, fully annotated images of coloured shapes.

Real datasets cannot be downloaded everywhere the lecture runs, so detection,
segmentation, captioning, VQA, CLIP and text-to-image all have this one to train on
in minutes. Each image holds 1 to 4 objects (5 shapes, 8 colours, 3 sizes, partial
occlusion) on a noisy gradient, smooth-noise, stripe or checker background, drawn
with anti-aliased edges (coverage from the exact signed distance to each shape).

  import vision_jax.data  # registers the builders
  ds = tfds.load('scenes/multi', split='train')
  vocab = scenes.vocabulary(tfds.builder('scenes/multi'))

Features:
  image         uint8 [H, W, 3].
  objects       sequence, back to front: `bbox` (tfds BBox, the tight box of the
                object's visible pixels), `shape`, `color`, `size` (class labels).
  segmentation  uint8 [H, W, 1]: 0 = background, 1 + shape index (SEGMENTATION_CLASSES).
  instances     uint8 [H, W, 1]: 0 = background, i = visible pixels of objects[i - 1].
  captions      `num_captions` lower-case English sentences; each is true of the image.
  questions     `num_questions` questions, answered by the aligned one-word `answers`
                (the words of ANSWERS).
  label         'red circle'-style class (CLASS_NAMES) of the object with the most
                visible pixels; for `single` that is the only object.

Configs: `single` (one object), `multi` (1 to 4, the default), `compositional`
(one object; the HELD_OUT colour-shape pairs appear only in its `test_novel` split)
and `multi64` (64x64; as it draws from the same seeds, most of its scenes are
those of `multi` at twice the resolution). Every example is a pure function of
(seed, split, index), whatever the number of worker processes.
Objects are hidden less than half by those in front of them; an object that cannot
be placed so is left out of the scene, so everything drawn is annotated.

Relations and locations are read from the box centres (see `scenes_language`).

The parts: `scenes_render` draws (shapes, backgrounds, compositing), `scenes_language`
writes the captions and questions, `generation` runs the workers and holds the
builder base class; this file turns them into the TFDS builder.

Look at the data:
  python -m vision_jax.data.scenes_preview --config multi --out /tmp/scenes
"""

import dataclasses
import random
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import generation
from vision_jax.data import scenes_language as language
from vision_jax.data import scenes_render as render
from vision_jax.data import text

# The names of the classes and answers, as the features describe them.
SHAPES, COLORS, SIZES = render.SHAPES, render.COLORS, render.SIZES
CLASS_NAMES, SEGMENTATION_CLASSES = render.CLASS_NAMES, render.SEGMENTATION_CLASSES
ANSWERS = language.ANSWERS
# Each colour and each shape keeps other pairings in training.
HELD_OUT = ('red circle', 'orange square', 'yellow triangle', 'green star',
            'cyan cross', 'blue circle', 'purple square', 'white triangle')


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
  """What to generate and how much.

  Attributes:
    image_size: height and width in pixels; object sizes scale with it.
    min_objects: the fewest objects per image.
    max_objects: the most objects per image (at most 4, as counts are words).
    held_out: class names ('red circle') kept out of train, validation and test;
      when given, a `test_novel` split of `num_test` images holds only them.
    num_train: training examples; also `num_validation` and `num_test`.
    num_captions: captions per image.
    num_questions: question-answer pairs per image.
    seed: the seed every example derives from.
  """
  image_size: int = 32
  min_objects: int = 1
  max_objects: int = 4
  held_out: tuple[str, ...] = ()
  num_train: int = 20_000
  num_validation: int = 2_000
  num_test: int = 2_000
  num_captions: int = 5
  num_questions: int = 6
  seed: int = 0

  def split_sizes(self) -> dict[str, int]:
    sizes = {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}
    return sizes | ({'test_novel': self.num_test} if self.held_out else {})


def allowed_classes(config, split: str) -> np.ndarray:
  held_out = [CLASS_NAMES.index(name) for name in config.held_out]
  if split == 'test_novel':
    return np.array(held_out)
  return np.array([c for c in range(len(CLASS_NAMES)) if c not in held_out])


def generate_example(config, split: str, index: int) -> dict[str, Any]:
  """One example as numpy arrays and strings; a pure function of (seed, split, index)."""
  rng = np.random.default_rng([config.seed, generation.SPLIT_IDS[split], index])
  size = config.image_size
  n = rng.integers(config.min_objects, config.max_objects + 1)
  style = render.random_object_style(rng, n, size, allowed_classes(config, split))
  image = render.background(rng, size)
  sdfs, keep = render.place_objects(rng, style, size)
  style = {k: v[keep] for k, v in style.items()}
  image = render.composite(image, sdfs, style['rgb'])
  noise = rng.uniform(1, 8) * rng.standard_normal(image.shape, np.float32)
  image = render.to_uint8(image + noise)

  ids = render.instance_map(sdfs)
  boxes, objects = [], []
  for i in range(len(sdfs)):
    rows, cols = np.nonzero(np.any(ids == i + 1, 1))[0], np.nonzero(np.any(ids == i + 1, 0))[0]
    box = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32) / size
    boxes.append(box)
    objects.append(language.SceneObject(
        SHAPES[style['shape'][i]], COLORS[style['color'][i]], SIZES[style['size'][i]],
        float(box[1] + box[3]) / 2, float(box[0] + box[2]) / 2))
  main = np.argmax(np.bincount(ids.ravel(), minlength=len(sdfs) + 1)[1:])  # most visible
  rand = random.Random(int(rng.integers(2**63)))  # scalar draws are far cheaper here
  caption_list = language.captions(rand, objects, config.num_captions)
  qas = language.questions(rand, objects, config.num_questions)
  return {
      'image': image,
      'objects': {'bbox': np.stack(boxes), 'shape': style['shape'],
                  'color': style['color'], 'size': style['size']},
      'segmentation': np.concatenate([[0], style['shape'] + 1]).astype(np.uint8)[ids][..., None],
      'instances': ids[..., None],
      'captions': caption_list,
      'questions': [q for q, _ in qas],
      'answers': [a for _, a in qas],
      'label': int(style['color'][main] * len(SHAPES) + style['shape'][main]),
  }


def encoded_example(config: ScenesConfig, split: str, index: int) -> dict[str, Any]:
  """`generate_example` as TFDS takes it: images as PNG, boxes as BBox, no numpy."""
  ex = generate_example(config, split, index)
  for key in ('image', 'segmentation', 'instances'):
    ex[key] = generation.png(ex[key])
  objects = {k: v.tolist() for k, v in ex['objects'].items()}
  objects['bbox'] = [tfds.features.BBox(*box) for box in objects['bbox']]
  return ex | {'objects': objects}


def vocabulary(builder: tfds.core.DatasetBuilder) -> text.Vocabulary:
  """The word vocabulary of a prepared `scenes` or `scenes_video` dataset."""
  return text.from_metadata(builder.info.metadata, f'the vocabulary of {builder.name}')


class Scenes(generation.GeneratedBuilder):
  """Synthetic scenes of coloured shapes with boxes, masks, captions and QA."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      ScenesConfig(name='single', description='One object; label = its class.',
                   max_objects=1),
      ScenesConfig(name='multi', description='1 to 4 objects.'),
      ScenesConfig(name='compositional', max_objects=1, held_out=HELD_OUT,
                   description='One object; HELD_OUT pairs only in test_novel.'),
      ScenesConfig(name='multi64', image_size=64, description='1 to 4 objects, 64x64.'),
  ]
  DEFAULT_CONFIG_NAME = 'multi'

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    mask = lambda: tfds.features.Image(shape=(size, size, 1), encoding_format='png',
                                       use_colormap=True)
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'shape': tfds.features.ClassLabel(names=SHAPES),
                'color': tfds.features.ClassLabel(names=COLORS),
                'size': tfds.features.ClassLabel(names=SIZES),
            }),
            'segmentation': mask(),
            'instances': mask(),
            'captions': tfds.features.Sequence(tfds.features.Text()),
            'questions': tfds.features.Sequence(tfds.features.Text()),
            'answers': tfds.features.Sequence(tfds.features.Text()),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        # Examples are independent draws already; keeping index order keeps files
        # byte-identical across runs and skips TFDS's shuffling pass.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing is downloaded.
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, num: int):
    texts = {'captions': [], 'questions': [], 'answers': []}
    for index, ex in enumerate(self.generate(encoded_example, num, self.builder_config, split)):
      if split == 'train':
        for field, values in texts.items():
          values.extend(ex[field])
      yield index, ex
    if split == 'train':  # Saved with the dataset info once every split is written.
      self.info.metadata.update(text.dataset_metadata(texts))
      self.info.metadata['held_out'] = list(self.builder_config.held_out)
      self.info.metadata['answers'] = list(ANSWERS)
