"""English for the synthetic scenes: the word tables, and captions and questions that are true.

Texts are drawn with a `random.Random` from `SceneObject`s (names and normalised box
centres), so they depend on the scene only, not on how it was drawn. Relations and
locations are read from the centres: A is left of B when its centre is more than
RELATION_MARGIN of the image width further left; an object is 'on the left' when
its centre is in the left 40% of the image.
"""

import collections
import itertools
from typing import NamedTuple

from vision_jax.data.scenes_render import COLORS, SHAPES, SIZES

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


class SceneObject(NamedTuple):
  """An annotated object, as the text generators see it (names, normalised centre)."""
  shape: str
  color: str
  size: str
  cx: float
  cy: float


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
