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

Relations and locations are read from the box centres: A is left of B when its
centre is more than RELATION_MARGIN of the image width further left; an object is
'on the left' when its centre is in the left 40% of the image.

Look at the data:
  python -m vision_jax.data.scenes --config multi --out /tmp/scenes
  python -m vision_jax.data.scenes --config video --out /tmp/scenes
"""

import argparse
import collections
import dataclasses
import functools
import itertools
import math
import os
import pickle
import random
import struct
import subprocess
import sys
from typing import Any, NamedTuple
import warnings
import zlib

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import text

# `python -m vision_jax.data.scenes` runs this file as __main__ after the package has
# imported it to register the builder; that is expected, see `Scenes` below.
warnings.filterwarnings('ignore', r"'vision_jax\.data\.scenes' found in sys\.modules",
                        RuntimeWarning)

SHAPES = ('circle', 'square', 'triangle', 'star', 'cross')
COLORS = ('red', 'orange', 'yellow', 'green', 'cyan', 'blue', 'purple', 'white')
SIZES = ('small', 'medium', 'large')
CLASS_NAMES = tuple(f'{c} {s}' for c in COLORS for s in SHAPES)  # color * 5 + shape
SEGMENTATION_CLASSES = ('background',) + SHAPES
# Each colour and each shape keeps other pairings in training.
HELD_OUT = ('red circle', 'orange square', 'yellow triangle', 'green star',
            'cyan cross', 'blue circle', 'purple square', 'white triangle')

COLOR_RGB = np.array([(220, 40, 40), (245, 140, 30), (240, 220, 50), (50, 180, 70),
                      (60, 210, 220), (50, 90, 230), (150, 70, 210), (240, 240, 240)],
                     np.float32)
_RADIUS = np.array([3.5, 5.0, 7.0], np.float32)  # per size, in pixels of a 32x32 image
SHAPE_EXTENT = 1.35  # the farthest any shape reaches from its centre, in radii
_MIN_VISIBLE = 0.5  # fraction of an object that must stay unoccluded
_LAYOUT_TRIES = 20

# Words. The first entry of each tuple is the canonical one used in answers.
SHAPE_WORDS = {'circle': ('circle', 'disc'), 'square': ('square', 'box'),
               'triangle': ('triangle',), 'star': ('star',), 'cross': ('cross', 'plus')}
COLOR_WORDS = {c: (c,) for c in COLORS} | {'cyan': ('cyan', 'turquoise'),
                                           'purple': ('purple', 'violet')}
SIZE_WORDS = {'small': ('small', 'little', 'tiny'), 'medium': ('medium', 'medium-sized'),
              'large': ('large', 'big')}
OBJECT_WORDS = ('object', 'shape', 'thing')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four')
RELATION_WORDS = {'left': ('to the left of', 'left of'),
                  'right': ('to the right of', 'right of'),
                  'above': ('above', 'over'), 'below': ('below', 'under', 'beneath')}
RELATION_MARGIN = 0.1
LOCATION_WORDS = {  # (vertical, horizontal) region of the centre
    ('top', 'left'): ('in the top left', 'at the top left'), ('top', 'center'): ('at the top',),
    ('top', 'right'): ('in the top right', 'at the top right'),
    ('middle', 'left'): ('on the left',), ('middle', 'center'): ('in the center', 'in the middle'),
    ('middle', 'right'): ('on the right',),
    ('bottom', 'left'): ('in the bottom left', 'at the bottom left'),
    ('bottom', 'center'): ('at the bottom',),
    ('bottom', 'right'): ('in the bottom right', 'at the bottom right')}
ANSWERS = (COLORS + SHAPES + SIZES + NUMBER_WORDS +
           ('yes', 'no', 'left', 'right', 'above', 'below'))

SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2, 'test_novel': 3}


# ----------------------------------------------------------------------------- shapes


def shape_sdf(shape: str, x, y, radius):
  """Signed distance in pixels (negative inside) to `shape` at the origin, y up.

  Exact distances (after Inigo Quilez's 2D distance functions) give anti-aliasing
  for free: a pixel's coverage is about clip(0.5 - distance, 0, 1).
  """
  if shape == 'circle':
    return np.hypot(x, y) - radius
  if shape == 'square':
    qx, qy = np.abs(x) - 0.85 * radius, np.abs(y) - 0.85 * radius
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
  if shape == 'triangle':  # equilateral, pointing up, centroid at the origin
    half_side, k = 1.15 * radius, math.sqrt(3)
    x, y = np.abs(x) - half_side, y + half_side / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * half_side, 0)
    return -np.hypot(x, y) * np.sign(y)
  if shape == 'star':  # five points, inner radius half the outer
    outer, k1x, k1y = 1.3 * radius, 0.809016994375, -0.587785252292
    x = np.abs(x)
    for kx in (k1x, -k1x):  # fold the plane into one point's wedge
      d = 2 * np.maximum(kx * x + k1y * y, 0)
      x, y = x - d * kx, y - d * k1y
    x, y = np.abs(x), y - outer
    bax, bay = 0.5 * -k1y, 0.5 * k1x - 1
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, outer)
    return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)
  if shape == 'cross':  # a plus sign
    arm, half_width = 1.05 * radius, 0.36 * radius
    x, y = np.abs(x), np.abs(y)
    x, y = np.maximum(x, y), np.minimum(x, y)
    qx, qy = x - arm, y - half_width
    k = np.maximum(qx, qy)
    wx, wy = np.where(k > 0, qx, half_width - x), np.where(k > 0, qy, -k)
    return np.sign(k) * np.hypot(np.maximum(wx, 0), np.maximum(wy, 0))
  raise ValueError(f'unknown shape {shape!r}')


@functools.cache
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
  ys, xs = np.mgrid[:size, :size].astype(np.float32) + 0.5
  return xs, ys


def object_sdf(shape: str, cx, cy, radius, angle, size: int):
  """The shape's distance on the image's pixel grid; arguments broadcast against it.

  Image rows grow downwards; `angle` turns the shape counterclockwise as seen. For a
  single shape (scalar arguments) only the pixels within its reach are computed; the
  rest are +inf, i.e. not covered.
  """
  cx, cy, radius, angle = (np.asarray(v, np.float32) for v in (cx, cy, radius, angle))
  xs, ys = _pixel_centres(size)
  window = None
  if cx.ndim == cy.ndim == radius.ndim == 0:
    reach = SHAPE_EXTENT * radius + 1
    window = (slice(max(int(cy - reach), 0), max(int(cy + reach) + 1, 0)),
              slice(max(int(cx - reach), 0), max(int(cx + reach) + 1, 0)))
    xs, ys = xs[window], ys[window]
  dx, dy = xs - cx, cy - ys
  cos, sin = np.cos(angle), np.sin(angle)
  sdf = shape_sdf(shape, cos * dx + sin * dy, cos * dy - sin * dx, radius)
  if window is None:
    return sdf
  full = np.full((size, size), np.inf, np.float32)
  full[window] = sdf
  return full


def coverage(sdf):
  return np.clip(0.5 - sdf, 0, 1)


def instance_map(sdfs) -> np.ndarray:
  """uint8 map: i where objects[i - 1] is the front-most object covering the pixel centre."""
  ids = np.zeros(sdfs[0].shape[-2:], np.uint8)
  for i, sdf in enumerate(sdfs, 1):
    ids[sdf <= 0] = i
  return ids


def _muted_color(rng) -> np.ndarray:
  """A dark, desaturated colour, so that every object colour stands out on it."""
  return np.clip(rng.uniform(20, 115) + rng.normal(0, 15, 3), 0, 255)


@functools.cache
def _upsampler(grid: int, size: int) -> np.ndarray:
  """[size, grid] bilinear interpolation weights."""
  pos = (np.arange(size) + 0.5) / size * (grid - 1)
  low = np.minimum(pos.astype(int), grid - 2)
  weights = np.zeros((size, grid), np.float32)
  weights[np.arange(size), low] = 1 - (pos - low)
  weights[np.arange(size), low + 1] = pos - low
  return weights


def background(rng, size: int) -> np.ndarray:
  """float32 [size, size, 3]: a blend of two muted colours by one of four patterns."""
  xs, ys = _pixel_centres(size)
  u, v = xs / size, ys / size
  angle = rng.uniform(0, 2 * np.pi)
  along = np.cos(angle) * u + np.sin(angle) * v
  kind = rng.integers(4)
  if kind == 0:  # linear gradient
    t = (along - along.min()) / (along.max() - along.min())
  elif kind == 1:  # smooth noise
    grid = rng.integers(3, 7)
    weights = _upsampler(grid, size)
    t = weights @ rng.random((grid, grid)).astype(np.float32) @ weights.T
  elif kind == 2:  # stripes
    t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * along + rng.uniform(0, 2 * np.pi))
  else:  # soft checker
    cells = rng.uniform(2, 5)
    t = 0.5 + 0.5 * np.tanh(3 * np.sin(np.pi * cells * u) * np.sin(np.pi * cells * v))
  low, high = _muted_color(rng), _muted_color(rng)
  return (low + t[..., None] * (high - low)).astype(np.float32)


def composite(image, sdfs, colors) -> np.ndarray:
  """Draws the objects back to front over `image` with anti-aliased edges."""
  for sdf, color in zip(sdfs, colors):
    alpha = coverage(sdf)[..., None]
    image = image + alpha * (color - image)
  return image


def to_uint8(image) -> np.ndarray:
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scenes


class SceneObject(NamedTuple):
  """An annotated object, as the text generators see it (names, normalised centre)."""
  shape: str
  color: str
  size: str
  cx: float
  cy: float


def allowed_classes(config, split: str) -> np.ndarray:
  held_out = [CLASS_NAMES.index(name) for name in config.held_out]
  if split == 'test_novel':
    return np.array(held_out)
  return np.array([c for c in range(len(CLASS_NAMES)) if c not in held_out])


def random_object_style(rng, n: int, size: int, classes) -> dict[str, np.ndarray]:
  """Class, size, radius, tilt and slightly jittered colour of `n` objects."""
  colors, shapes = np.divmod(rng.choice(classes, n), len(SHAPES))
  sizes = rng.integers(len(SIZES), size=n)
  jitter = rng.uniform(0.93, 1.07, n).astype(np.float32)
  return dict(shape=shapes, color=colors, size=sizes,
              radius=_RADIUS[sizes] * (size / 32) * jitter,
              angle=rng.uniform(-0.4, 0.4, n).astype(np.float32),
              rgb=np.clip(COLOR_RGB[colors] + rng.normal(0, 10, (n, 3)), 0, 255).astype(np.float32))


def place_objects(rng, style, size: int) -> tuple[list[np.ndarray], np.ndarray]:
  """Distance maps of the objects placed, and which objects are.

  Draws centres until every object is at least half visible; objects still hidden
  more than that after the last try are left out, so that whatever is drawn is
  annotated and recognisable.
  """
  margin = SHAPE_EXTENT * style['radius'][:, None] + 0.5
  for _ in range(_LAYOUT_TRIES):
    centres = rng.uniform(margin, size - margin, (len(margin), 2))
    sdfs = [object_sdf(SHAPES[s], cx, cy, r, a, size) for s, (cx, cy), r, a
            in zip(style['shape'], centres, style['radius'], style['angle'])]
    areas = np.array([np.sum(sdf <= 0) for sdf in sdfs])
    visible = np.bincount(instance_map(sdfs).ravel(), minlength=len(sdfs) + 1)[1:]
    keep = visible >= _MIN_VISIBLE * areas
    if keep.all():
      break
  # Removing objects only uncovers the rest, so the kept ones stay visible enough.
  return [sdf for sdf, k in zip(sdfs, keep) if k], keep


def generate_example(config, split: str, index: int) -> dict[str, Any]:
  """One example as numpy arrays and strings; a pure function of (seed, split, index)."""
  rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
  size = config.image_size
  n = rng.integers(config.min_objects, config.max_objects + 1)
  style = random_object_style(rng, n, size, allowed_classes(config, split))
  image = background(rng, size)
  sdfs, keep = place_objects(rng, style, size)
  style = {k: v[keep] for k, v in style.items()}
  image = composite(image, sdfs, style['rgb'])
  image = to_uint8(image + rng.uniform(1, 8) * rng.standard_normal(image.shape, np.float32))

  ids = instance_map(sdfs)
  boxes, objects = [], []
  for i in range(len(sdfs)):
    rows, cols = np.nonzero(np.any(ids == i + 1, 1))[0], np.nonzero(np.any(ids == i + 1, 0))[0]
    box = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32) / size
    boxes.append(box)
    objects.append(SceneObject(SHAPES[style['shape'][i]], COLORS[style['color'][i]],
                               SIZES[style['size'][i]], float(box[1] + box[3]) / 2,
                               float(box[0] + box[2]) / 2))
  main = np.argmax(np.bincount(ids.ravel(), minlength=len(sdfs) + 1)[1:])  # most visible
  rand = random.Random(int(rng.integers(2**63)))  # scalar draws are far cheaper here
  caption_list = captions(rand, objects, config.num_captions)
  qas = questions(rand, objects, config.num_questions)
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


# ----------------------------------------------------------------------------- words


def plural(noun: str) -> str:
  return noun + ('es' if noun.endswith(('s', 'x')) else 's')


def _with_article(phrase: str) -> str:
  return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def _join(phrases: list[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ', '.join(phrases[:-1]) + ' and ' + phrases[-1]


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
  dx, dy = a.cx - b.cx, a.cy - b.cy
  return {'left': dx < -RELATION_MARGIN, 'right': dx > RELATION_MARGIN,
          'above': dy < -RELATION_MARGIN, 'below': dy > RELATION_MARGIN}[relation]


def region(o: SceneObject) -> tuple[str, str]:
  third = lambda t, names: names[0] if t < 0.4 else names[2] if t > 0.6 else names[1]
  return third(o.cy, ('top', 'middle', 'bottom')), third(o.cx, ('left', 'center', 'right'))


def _describe(rand, o: SceneObject, attributes, count: int = 1) -> str:
  """'small red circle', 'red things', ...: the named attributes, then a noun."""
  words = [rand.choice(SIZE_WORDS[o.size])] if 'size' in attributes else []
  if 'color' in attributes:
    words.append(rand.choice(COLOR_WORDS[o.color]))
  noun = rand.choice(SHAPE_WORDS[o.shape] if 'shape' in attributes else OBJECT_WORDS)
  return ' '.join(words + [noun if count == 1 else plural(noun)])


def _noun_phrase(rand, o: SceneObject) -> str:
  attributes = ('size', 'color', 'shape') if rand.random() < 0.5 else ('color', 'shape')
  return _with_article(_describe(rand, o, attributes))


def _caption_list(rand, objects):
  body = _join([_noun_phrase(rand, o) for o in rand.sample(objects, len(objects))])
  return rand.choice(('{}.', 'there is {}.', 'an image of {}.', 'a picture with {}.',
                      'a scene containing {}.')).format(body)


def _caption_count(rand, objects):
  n = len(objects)
  noun = rand.choice(OBJECT_WORDS)
  count = f'{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}'
  verb = 'is' if n == 1 else 'are'
  return rand.choice((f'there {verb} {count}.', f'{count} in total.', f'a scene with {count}.',
                      f'exactly {count}.'))


def _caption_count_by(rand, objects):
  key = rand.choice(('shape', 'color'))
  counts = collections.Counter(getattr(o, key) for o in objects)
  examples = {getattr(o, key): o for o in objects}
  parts = [f'{NUMBER_WORDS[counts[v]]} {_describe(rand, examples[v], (key,), counts[v])}'
           for v in rand.sample(sorted(counts), len(counts))]
  return _join(parts) + '.'


def _caption_relation(rand, objects):
  pairs = [(a, b, rel) for a, b in itertools.permutations(objects, 2)
           for rel in RELATION_WORDS if relation_holds(rel, a, b)]
  if not pairs:
    return None
  a, b, rel = rand.choice(pairs)
  a, b, rel = _noun_phrase(rand, a), _noun_phrase(rand, b), rand.choice(RELATION_WORDS[rel])
  return rand.choice(('{a} is {r} {b}.', '{a} {r} {b}.', '{r} {b} there is {a}.')).format(
      a=a, b=b, r=rel)


def _caption_location(rand, objects):
  o = rand.choice(objects)
  where = rand.choice(LOCATION_WORDS[region(o)])
  return rand.choice(('{a} {w}.', '{a} is {w}.', '{w} there is {a}.')).format(
      a=_noun_phrase(rand, o), w=where)


_CAPTIONERS = (_caption_list, _caption_count, _caption_count_by, _caption_relation,
               _caption_location)


def captions(rand, objects: list[SceneObject], num: int) -> list[str]:
  """`num` distinct captions of varied kinds (repeats only if the scene allows no more)."""
  found = []
  for attempt in range(10 * num):
    caption = _CAPTIONERS[attempt % len(_CAPTIONERS) if attempt < num
                          else rand.randrange(len(_CAPTIONERS))](rand, objects)
    if caption and caption not in found:
      found.append(caption)
    if len(found) == num:
      break
  return [found[i % len(found)] for i in range(num)]


_REFERENCES = (('shape',), ('color',), ('color', 'shape'), ('size', 'shape'),
               ('size', 'color'), ('size', 'color', 'shape'))


def _refer(rand, objects, o: SceneObject, without=()):
  """A description that fits `o` alone in the scene (not naming `without`), or None."""
  fits = [attrs for attrs in _REFERENCES if not set(attrs) & set(without) and sum(
      all(getattr(p, a) == getattr(o, a) for a in attrs) for p in objects) == 1]
  return _describe(rand, o, rand.choice(fits)) if fits else None


def _question_attribute(rand, objects):
  o = rand.choice(objects)
  attribute = rand.choice(('color', 'shape', 'size'))
  ref = _refer(rand, objects, o, without=(attribute,))
  if ref is None:
    return None
  templates = {'color': ('what color is the {}?', 'what is the color of the {}?',
                         'which color does the {} have?'),
               'shape': ('what shape is the {}?', 'what is the shape of the {}?'),
               'size': ('what size is the {}?', 'how big is the {}?')}[attribute]
  return rand.choice(templates).format(ref), getattr(o, attribute)


def _question_count(rand, objects):
  # Half the time about a present kind, else any kind, so that zero is an answer too.
  o = rand.choice(objects) if rand.random() < 0.5 else SceneObject(
      rand.choice(SHAPES), rand.choice(COLORS), 'small', 0, 0)
  attributes = rand.choice(((), ('color',), ('shape',), ('color', 'shape')))
  count = sum(all(getattr(p, a) == getattr(o, a) for a in attributes) for p in objects)
  subject = _describe(rand, o, attributes, count=2)
  return rand.choice(('how many {} are there?', 'how many {} are in the image?',
                      'what is the number of {}?')).format(subject), NUMBER_WORDS[count]


def _question_exists(rand, objects):
  attributes = ('size', 'color', 'shape') if rand.random() < 0.3 else ('color', 'shape')
  if rand.random() < 0.5:
    o = rand.choice(objects)
  else:
    o = SceneObject(rand.choice(SHAPES), rand.choice(COLORS), rand.choice(SIZES), 0, 0)
  present = any(all(getattr(p, a) == getattr(o, a) for a in attributes) for p in objects)
  if rand.random() < 0.5:
    question = f'is there {_with_article(_describe(rand, o, attributes))}?'
  else:
    question = f'are there any {_describe(rand, o, attributes, count=2)}?'
  return question, 'yes' if present else 'no'


def _question_relation(rand, objects):
  if len(objects) < 2:
    return None
  a, b = rand.sample(objects, 2)
  axes = [axis for axis in (('left', 'right'), ('above', 'below'))
          if any(relation_holds(rel, a, b) for rel in axis)]
  ref_a, ref_b = _refer(rand, objects, a), _refer(rand, objects, b)
  if not axes or ref_a is None or ref_b is None:
    return None
  axis = rand.choice(axes)
  truth = axis[0] if relation_holds(axis[0], a, b) else axis[1]
  if rand.random() < 0.5:
    phrase = 'left or right of' if axis[0] == 'left' else 'above or below'
    return f'is the {ref_a} {phrase} the {ref_b}?', truth
  rel = rand.choice(axis)
  return (f'is the {ref_a} {rand.choice(RELATION_WORDS[rel])} the {ref_b}?',
          'yes' if rel == truth else 'no')


def _question_compare(rand, objects):
  if len(objects) < 2:
    return None
  a, b = rand.sample(objects, 2)
  ref_a, ref_b = _refer(rand, objects, a, ('size',)), _refer(rand, objects, b, ('size',))
  if ref_a is None or ref_b is None:
    return None
  order = SIZES.index(a.size) - SIZES.index(b.size)
  kind = rand.randrange(3)
  if kind == 0:
    return f'is the {ref_a} {rand.choice(("bigger", "larger"))} than the {ref_b}?', (
        'yes' if order > 0 else 'no')
  if kind == 1:
    return f'is the {ref_a} smaller than the {ref_b}?', 'yes' if order < 0 else 'no'
  return f'are the {ref_a} and the {ref_b} the same size?', 'yes' if order == 0 else 'no'


_QUESTIONERS = (_question_attribute, _question_count, _question_exists,
                _question_relation, _question_compare)


def questions(rand, objects: list[SceneObject], num: int) -> list[tuple[str, str]]:
  """`num` distinct (question, answer) pairs of kinds drawn evenly where they apply."""
  found = {}
  for _ in range(20 * num):
    qa = rand.choice(_QUESTIONERS)(rand, objects)
    if qa and qa[0] not in found:
      found[qa[0]] = qa[1]
    if len(found) == num:
      break
  return list(found.items())


# ----------------------------------------------------------------------------- workers


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))  # respects container and taskset limits
  except AttributeError:
    return os.cpu_count() or 1


class Workers:
  """Worker processes, one per core, that map a module-level function over indices.

  Generation is Python and numpy, so it scales with processes, not threads. The
  workers are fresh interpreters: unlike multiprocessing's fork or spawn, they
  inherit no threads from the caller (JAX, TensorFlow) and do not re-run the
  caller's main script. They start on first use; `close` ends them.
  """

  def __init__(self, count: int | None = None, chunk: int = 128):
    # Beyond a few workers the main process, writing the records, is the bottleneck.
    self.count = min(_usable_cores(), 6) if count is None else count
    self.chunk = chunk
    self._procs = []

  def map(self, fn, num: int, *args):
    """Yields fn(*args, i) for i in range(num), in order."""
    chunks = [range(s, min(s + self.chunk, num)) for s in range(0, num, self.chunk)]
    if self.count < 2 or len(chunks) < 2:
      yield from (fn(*args, i) for i in range(num))
      return
    if not self._procs:
      self._start()
    procs = self._procs
    ahead = 2 * len(procs)  # chunks queued; chunk i always goes to worker i % len(procs)
    finished = False
    try:
      for i, indices in enumerate(chunks[:ahead]):
        self._send(procs[i % len(procs)], (fn, args, indices))
      for i in range(len(chunks)):
        proc = procs[i % len(procs)]
        try:
          results = pickle.load(proc.stdout)
        except EOFError:
          raise RuntimeError('a data generation worker died; its error is printed above') from None
        if i + ahead < len(chunks):
          self._send(proc, (fn, args, chunks[i + ahead]))
        yield from results
      finished = True
    finally:
      if not finished:  # unread results are left in the pipes
        self.close()

  def _start(self):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))
    command = [sys.executable, '-c', 'from vision_jax.data import scenes; scenes.serve()']
    self._procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=dict(os.environ, PYTHONPATH=path))
                   for _ in range(self.count)]

  @staticmethod
  def _send(proc, task):
    pickle.dump(task, proc.stdin, pickle.HIGHEST_PROTOCOL)
    proc.stdin.flush()

  def close(self):
    for proc in self._procs:  # they keep no state, so stopping them loses nothing
      proc.kill()
      proc.wait()
      proc.stdin.close()
      proc.stdout.close()
    self._procs = []


def serve():
  """A worker's loop: (fn, args, indices) in on stdin, [fn(*args, i), ...] out on stdout."""
  tasks, results = sys.stdin.buffer, sys.stdout.buffer
  sys.stdout = sys.stderr  # stray prints must not corrupt the results
  while True:
    try:
      fn, args, indices = pickle.load(tasks)
    except EOFError:
      return
    pickle.dump([fn(*args, i) for i in indices], results, pickle.HIGHEST_PROTOCOL)
    results.flush()


class GeneratedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose examples `Workers` compute while it prepares."""

  def download_and_prepare(self, *args, **kwargs):
    self._workers = Workers()
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      self._workers.close()

  def generate(self, fn, num: int, *args):
    """fn(*args, i) for i in range(num), in order, on the workers while preparing."""
    workers = getattr(self, '_workers', None) or Workers(count=1)
    return workers.map(fn, num, *args)


# ----------------------------------------------------------------------------- TFDS


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


def encoded_example(config: ScenesConfig, split: str, index: int) -> dict[str, Any]:
  """`generate_example` as TFDS takes it: images as PNG, boxes as BBox, no numpy."""
  ex = generate_example(config, split, index)
  for key in ('image', 'segmentation', 'instances'):
    ex[key] = png(ex[key])
  objects = {k: v.tolist() for k, v in ex['objects'].items()}
  objects['bbox'] = [tfds.features.BBox(*box) for box in objects['bbox']]
  return ex | {'objects': objects}


def png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, 1 or 3] array, without row filters.

  Several times faster than PIL or TFDS's TensorFlow encoder on these tiny
  noisy images, at about the same size.
  """
  height, width, channels = array.shape
  rows = np.concatenate([np.zeros((height, 1), np.uint8), array.reshape(height, -1)], 1)
  chunk = lambda tag, data: (struct.pack('>I', len(data)) + tag + data +
                             struct.pack('>I', zlib.crc32(tag + data)))
  header = struct.pack('>IIBBBBB', width, height, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(rows.tobytes(), 6)) + chunk(b'IEND', b''))


def vocabulary(builder: tfds.core.DatasetBuilder) -> text.Vocabulary:
  """The word vocabulary of a prepared `scenes` or `scenes_video` dataset."""
  return text.Vocabulary(builder.info.metadata['vocabulary'])


def text_metadata(texts: dict[str, list[str]]) -> dict[str, Any]:
  """The vocabulary of the training texts, and the most words per text of each field."""
  vocab = text.Vocabulary.build(t for field in texts.values() for t in field)
  return {'vocabulary': list(vocab.tokens),
          'max_words': {k: max((len(text.split_words(t)) for t in set(v)), default=0)
                        for k, v in texts.items()}}


class Scenes(GeneratedBuilder,
             # Under `python -m`, this file also runs as __main__; only the
             # importable copy may register the name.
             skip_registration=__name__ == '__main__'):
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
      self.info.metadata.update(text_metadata(texts))
      self.info.metadata['held_out'] = list(self.builder_config.held_out)
      self.info.metadata['answers'] = list(ANSWERS)


# ----------------------------------------------------------------------------- preview


def _preview_scenes(config: ScenesConfig, split: str, num: int, out: str) -> str:
  """Writes one row per example: boxes, instances, segmentation and all its text."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(num, 4, figsize=(18, 2.6 * num),
                           gridspec_kw={'width_ratios': [1, 1, 1, 3.6]}, squeeze=False)
  palette = [plt.get_cmap('tab10')(i)[:3] for i in range(10)]
  shape_colors = np.array([(0, 0, 0)] + palette[:len(SHAPES)])
  for row, index in zip(axes, range(num)):
    ex = generate_example(config, split, index)
    row[0].imshow(ex['image'])
    lines = [f'#{index}  label: {CLASS_NAMES[ex["label"]]}   objects:']
    for i, (box, s, c, z) in enumerate(zip(*(ex['objects'][k] for k in
                                             ('bbox', 'shape', 'color', 'size')))):
      y0, x0, y1, x1 = box * config.image_size - 0.5
      row[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                     edgecolor=palette[i], linewidth=1.5))
      row[0].text(x0, y0, str(i + 1), fontsize=7, color='black', backgroundcolor=palette[i],
                  va='top')
      lines[0] += f'  {i + 1}: {SIZES[z]} {COLORS[c]} {SHAPES[s]}'
    instances = ex['instances'][..., 0]
    tint = np.array([(0, 0, 0)] + palette)[instances]
    row[1].imshow(0.35 * ex['image'] / 255 + 0.65 * tint)
    row[2].imshow(shape_colors[ex['segmentation'][..., 0]])
    lines += ex['captions'] + [f'Q: {q}  A: {a}' for q, a in zip(ex['questions'], ex['answers'])]
    row[3].text(0, 1, '\n'.join(lines), fontsize=8, va='top', family='monospace')
    for ax, title in zip(row, ('image and boxes', 'instances', 'segmentation', '')):
      ax.set_title(title, fontsize=7)
      ax.axis('off')
  fig.suptitle('segmentation: ' + ', '.join(f'{s} {c}' for s, c in zip(
      SHAPES, ('blue', 'orange', 'green', 'red', 'purple'))), fontsize=9)
  fig.tight_layout()
  path = os.path.join(out, f'scenes_{config.name}_{split}.png')
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description='Writes preview images of the data.')
  parser.add_argument('--config', default='multi',
                      help='a scenes config (single, multi, compositional, multi64) or video')
  parser.add_argument('--out', required=True, help='directory for the preview files')
  parser.add_argument('--split', default='train')
  parser.add_argument('--num', type=int, default=8, help='number of examples')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.config == 'video':
    from vision_jax.data import scenes_video  # pylint: disable=g-import-not-at-top
    paths = scenes_video.preview(scenes_video.ScenesVideo.BUILDER_CONFIGS[0], args.split,
                                 args.num, args.out)
  else:
    configs = {c.name: c for c in Scenes.BUILDER_CONFIGS}
    paths = [_preview_scenes(configs[args.config], args.split, args.num, args.out)]
  print('\n'.join(paths))


if __name__ == '__main__':
  main()
