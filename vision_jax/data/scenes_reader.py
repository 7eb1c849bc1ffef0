"""Reading the synthetic scenes' texts back: caption truth, question answers, question types.

`scenes_language` writes texts that are true of a scene; this module reads any text
in that grammar and judges it against a scene, so that generated captions and
answers can be scored without a human:

  objects = objects_from_features(**example['objects'])  # numpy, as tfds.as_numpy gives
  read_caption('a red circle is left of a blue square.', objects)
  # CaptionReading(readable=True, true=True, mentioned=frozenset({0, 1}))
  caption_truth(generated_captions, objects_per_image)   # what a captioning evaluator logs
  answer('what color is the disc?', objects)              # 'red'
  question_type('what color is the disc?')                # 'color', for accuracy per type

The grammar is the generator's, a little wider where the meaning stays clear:
noun phrases `[article | number] [size] [color] noun` with any of the attributes,
whose article and number agree with the noun ('an orange box', 'one thing', 'two
discs'), joined as 'A, B and C', in the caption and question templates of
`scenes_language`, ending in '.' or '?'. Case and the spacing around punctuation
do not count ('A red circle .' reads as 'a red circle.'). A caption is true when:
  - a list of objects ('there is a red circle and a blue box.') names every object
    once: each object is matched by its own phrase, and there are no other phrases;
  - counts ('there are two things.', 'one red thing and two blue things.') are
    exact and the counted objects are all the objects, each counted once;
  - a relation ('a red circle left of a box.') holds (`scenes_language.relation_holds`)
    between some object the first phrase matches and another the second matches;
  - a location ('a red circle on the left.') is the `scenes_language.region` of some
    object the phrase matches.
"""

import re
from typing import NamedTuple, Sequence

import numpy as np

from vision_jax.data import scenes_language as language
from vision_jax.data.scenes_language import SceneObject
from vision_jax.data.scenes_render import COLORS, SHAPES, SIZES

QUESTION_TYPES = ('color', 'shape', 'size', 'count', 'exists', 'relation')

_TYPE_PATTERNS = (  # first match wins; the compare questions ask about size
    ('color', r'what color |what is the color |which color '),
    ('shape', r'what shape |what is the shape '),
    ('size', r'what size |how big |.* (bigger|larger|smaller) than |.* the same size\?$'),
    ('count', r'how many |what is the number '),
    ('exists', r'is there (a|an) |are there any '),
    ('relation', r'is the '),
)


def question_type(question: str) -> str:
  """The kind of a `scenes` question, one of QUESTION_TYPES.

  Raises:
    ValueError: the question is not one that `scenes_language` writes.
  """
  for kind, pattern in _TYPE_PATTERNS:
    if re.match(pattern, question):
      return kind
  raise ValueError(f'not a scenes question: {question!r}')


def objects_from_features(bbox, shape, color, size, mask=None) -> list[SceneObject]:
  """The `SceneObject`s of an example's 'objects' feature (numpy, one example).

  Args:
    bbox: [N, 4] normalised (ymin, xmin, ymax, xmax) boxes.
    shape: [N] class indices into SHAPES; `color` and `size` likewise.
    mask: optional bool [N], False on the padding rows `pad_sequence` adds.

  Returns:
    The objects in order (padding left out); the centre is the box centre summed in
    float32, as `scenes.generate_example` computes it, so relations read the same.
  """
  bbox = np.asarray(bbox, np.float32).reshape(-1, 4)
  fields = [np.asarray(v).reshape(-1) for v in (shape, color, size)]
  mask = np.ones(len(bbox), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
  if any(len(v) != len(bbox) for v in fields + [mask]):
    raise ValueError(f'objects_from_features: {len(bbox)} boxes but fields of lengths '
                     f'{[len(v) for v in fields + [mask]]} (shape, color, size, mask)')
  return [SceneObject(SHAPES[int(s)], COLORS[int(c)], SIZES[int(z)],
                      float(b[1] + b[3]) / 2, float(b[0] + b[2]) / 2)
          for b, s, c, z, keep in zip(bbox, *fields, mask) if keep]


# ---------------------------------------------------------------- noun phrases

def _alternatives(words) -> str:
  return '|'.join(sorted(map(re.escape, words), key=len, reverse=True))


_ARTICLES = ('a', 'an')
_SIZE = {w: k for k, ws in language.SIZE_WORDS.items() for w in ws}
_COLOR = {w: k for k, ws in language.COLOR_WORDS.items() for w in ws}
_NOUN = {}  # word -> (shape, or None for 'object'; plural)
for _shape, _words in list(language.SHAPE_WORDS.items()) + [(None, language.OBJECT_WORDS)]:
  for _word in _words:
    _NOUN[_word] = (_shape, False)
    _NOUN[language.plural(_word)] = (_shape, True)
_PHRASE = re.compile(
    rf'(?:({_alternatives(_ARTICLES + language.NUMBER_WORDS)}) )?'
    rf'(?:({_alternatives(_SIZE)}) )?(?:({_alternatives(_COLOR)}) )?({_alternatives(_NOUN)})')
_NP = re.sub(r'\((?!\?)', '(?:', _PHRASE.pattern)  # the same pattern without groups
_RELATION = {w: rel for rel, ws in language.RELATION_WORDS.items() for w in ws}
_REL = _alternatives(_RELATION)
_LOCATION = {w: where for where, ws in language.LOCATION_WORDS.items() for w in ws}
_LOC = _alternatives(_LOCATION)


class _Phrase(NamedTuple):
  det: str | None  # 'a', 'an', a number word or None
  plural: bool
  attrs: tuple[tuple[str, str], ...]  # (('color', 'red'), ('shape', 'circle')): what to match


def _phrase(text: str, dets: Sequence[str | None], plural: bool | None = None):
  """The noun phrase `text` if it is one with a determiner of `dets` (None: none) and
  the number `plural` (None: either) whose determiner agrees with it; else None."""
  m = _PHRASE.fullmatch(text)
  if m is None or m.group(1) not in dets:
    return None
  det, size, color, noun = m.groups()
  shape, is_plural = _NOUN[noun]
  if plural is not None and is_plural != plural:
    return None
  if det in _ARTICLES:
    after = text[len(det) + 1]
    if is_plural or (det == 'an') != (after in 'aeiou'):
      return None
  elif det is not None and is_plural != (det != 'one'):
    return None
  attrs = tuple((k, v) for k, v in (('size', _SIZE.get(size)), ('color', _COLOR.get(color)),
                                    ('shape', shape)) if v)
  return _Phrase(det, is_plural, attrs)


def _matching(objects: Sequence[SceneObject], phrase: _Phrase) -> list[int]:
  return [i for i, o in enumerate(objects) if all(getattr(o, k) == v for k, v in phrase.attrs)]


def _normalise(text) -> str:
  """Lower case, single spaces, no space before punctuation."""
  if isinstance(text, bytes):
    text = text.decode('utf-8', 'replace')
  return re.sub(r' ([.,?])', r'\1', ' '.join(str(text).lower().split()))


# ---------------------------------------------------------------- captions

class CaptionReading(NamedTuple):
  """What a caption says about a scene.

  Attributes:
    readable: the caption is a sentence of the dataset's caption grammar.
    true: it is readable and true of the objects.
    mentioned: indices of the objects its noun phrases refer to: those a listed
      phrase ('a red circle') matches, those a count ('two red things') counts when
      the count is right, those that make a relation or location hold. Empty when
      unreadable.
  """
  readable: bool
  true: bool
  mentioned: frozenset[int]


_UNREADABLE = CaptionReading(False, False, frozenset())
_LIST_OPENINGS = ('there is ', 'an image of ', 'a picture with ', 'a scene containing ', '')
_COUNT_OPENINGS = ('there is ', 'there are ', 'a scene with ', 'exactly ', '')
_IN_TOTAL = ' in total'
_RELATION_CAPTIONS = (  # (first phrase, relation, second phrase) groups
    (re.compile(rf'({_NP}) (?:is )?({_REL}) ({_NP})'), (1, 2, 3)),
    (re.compile(rf'({_REL}) ({_NP}) there is ({_NP})'), (3, 1, 2)))
_LOCATION_CAPTIONS = (  # (phrase, location) groups
    (re.compile(rf'({_NP}) (?:is )?({_LOC})'), (1, 2)),
    (re.compile(rf'({_LOC}) there is ({_NP})'), (2, 1)))


def _split_join(text: str) -> list[str]:
  """'A, B and C' -> [A, B, C] (a malformed join leaves pieces that are no phrase)."""
  head, sep, last = text.rpartition(' and ')
  return head.split(', ') + [last] if sep else [text]


def _has_own_phrase(candidates: list[list[int]], count: int) -> bool:
  """Whether each of `count` objects can be given its own phrase, with none left over:
  a perfect matching of phrases to the objects they match (augmenting paths)."""
  if len(candidates) != count:
    return False
  owner = [-1] * count

  def assign(i, seen):
    for j in candidates[i]:
      if j not in seen:
        seen.add(j)
        if owner[j] < 0 or assign(owner[j], seen):
          owner[j] = i
          return True
    return False
  return all(assign(i, set()) for i in range(len(candidates)))


def _read_list(parts, objects) -> CaptionReading | None:
  phrases = [_phrase(p, _ARTICLES) for p in parts]
  if None in phrases:
    return None
  matched = [_matching(objects, p) for p in phrases]
  return CaptionReading(True, _has_own_phrase(matched, len(objects)),
                        frozenset(i for m in matched for i in m))


def _read_counts(parts, objects) -> CaptionReading | None:
  phrases = [_phrase(p, language.NUMBER_WORDS) for p in parts]
  if None in phrases:
    return None
  counted = [_matching(objects, p) for p in phrases]
  exact = [len(c) == language.NUMBER_WORDS.index(p.det) for c, p in zip(counted, phrases)]
  mentioned = frozenset(i for c, ok in zip(counted, exact) if ok for i in c)
  # Each object counted once: the counts add up to all objects and cover them all.
  partition = sum(map(len, counted)) == len(objects) == len(mentioned)
  return CaptionReading(True, all(exact) and partition, mentioned)


def _read_enumeration(body: str, objects) -> CaptionReading | None:
  """A list of objects or of counts, in one of their openings ('there is ...')."""
  for opening in sorted(set(_LIST_OPENINGS + _COUNT_OPENINGS), key=len, reverse=True):
    if not body.startswith(opening):
      continue
    rest = body[len(opening):]
    in_total = rest.endswith(_IN_TOTAL)
    rest = rest[:-len(_IN_TOTAL)] if in_total else rest
    parts = _split_join(rest)
    first = parts[0].split(' ')[0]
    if first in _ARTICLES and opening in _LIST_OPENINGS and not in_total:
      reading = _read_list(parts, objects)
    elif first in language.NUMBER_WORDS and opening in _COUNT_OPENINGS and not (
        opening and in_total) and opening != ('there are ' if first == 'one' else 'there is '):
      reading = _read_counts(parts, objects)
    else:
      reading = None
    if reading is not None:
      return reading
  return None


def read_caption(caption: str, objects: Sequence[SceneObject]) -> CaptionReading:
  """Reads a caption (reference or generated, any string) and judges it on `objects`.

  Never raises on a string: what is not in the dataset's grammar (token soup, an
  empty string, no final '.') is `readable=False, true=False`.
  """
  text = _normalise(caption)
  if not text.endswith('.'):
    return _UNREADABLE
  body = text[:-1]
  for pattern, groups in _RELATION_CAPTIONS:
    if m := pattern.fullmatch(body):
      first, rel, second = m.group(*groups)
      a, b = _phrase(first, _ARTICLES), _phrase(second, _ARTICLES)
      if a is None or b is None:
        return _UNREADABLE
      pairs = [(x, y) for x in _matching(objects, a) for y in _matching(objects, b)
               if x != y and language.relation_holds(_RELATION[rel], objects[x], objects[y])]
      return CaptionReading(True, bool(pairs), frozenset(i for pair in pairs for i in pair))
  for pattern, groups in _LOCATION_CAPTIONS:
    if m := pattern.fullmatch(body):
      first, where = m.group(*groups)
      a = _phrase(first, _ARTICLES)
      if a is None:
        return _UNREADABLE
      there = [i for i in _matching(objects, a)
               if language.region(objects[i]) == _LOCATION[where]]
      return CaptionReading(True, bool(there), frozenset(there))
  return _read_enumeration(body, objects) or _UNREADABLE


def caption_truth(captions: Sequence[str],
                  objects_per_image: Sequence[Sequence[SceneObject]]) -> dict[str, float]:
  """Caption truthfulness of one caption per image (e.g. generated ones).

  Returns:
    'truthfulness': the fraction of captions true of their image; 'readable': the
    fraction in the dataset's grammar; 'objects_mentioned': the mean over images
    (with objects) of the fraction of their objects that the caption mentions.

  Raises:
    ValueError: no captions, or not one per image.
  """
  if len(captions) != len(objects_per_image) or not captions:
    raise ValueError(f'caption_truth: {len(captions)} captions for '
                     f'{len(objects_per_image)} images (needs one per image, at least one)')
  readings = [read_caption(c, o) for c, o in zip(captions, objects_per_image)]
  mentioned = [len(r.mentioned) / len(o) for r, o in zip(readings, objects_per_image) if o]
  return {'truthfulness': float(np.mean([r.true for r in readings])),
          'readable': float(np.mean([r.readable for r in readings])),
          'objects_mentioned': float(np.mean(mentioned)) if mentioned else 0.0}


# ---------------------------------------------------------------- questions

def _the(objects, text: str) -> SceneObject:
  """The one object that 'the <text>' names."""
  phrase = _phrase(text, (None,), plural=False)
  if phrase is None:
    raise ValueError(f'not a singular noun phrase: {text!r}')
  found = _matching(objects, phrase)
  if len(found) != 1:
    raise ValueError(f'"the {text}" names {len(found)} objects, not one')
  return objects[found[0]]


def _count_word(count: int) -> str:
  if count >= len(language.NUMBER_WORDS):
    raise ValueError(f'{count} objects: more than the number words go')
  return language.NUMBER_WORDS[count]


def _attribute(name: str):
  return lambda m, objects: getattr(_the(objects, m.group('ref')), name)


def _count(m, objects):
  phrase = _phrase(m.group('ref'), (None,), plural=True)
  if phrase is None:
    raise ValueError(f'not a plural noun phrase: {m.group("ref")!r}')
  return _count_word(len(_matching(objects, phrase)))


def _exists(dets, plural):
  def read(m, objects):
    phrase = _phrase(m.group('ref'), dets, plural)
    if phrase is None:
      raise ValueError(f'not a noun phrase this question takes: {m.group("ref")!r}')
    return 'yes' if _matching(objects, phrase) else 'no'
  return read


def _which_side(m, objects):
  a, b = _the(objects, m.group('a')), _the(objects, m.group('b'))
  options = ('left', 'right') if m.group('axis').startswith('left') else ('above', 'below')
  truths = [rel for rel in options if language.relation_holds(rel, a, b)]
  if len(truths) != 1:
    raise ValueError(f'neither {" nor ".join(options)}: within the margin')
  return truths[0]


_OPPOSITE = {'left': 'right', 'right': 'left', 'above': 'below', 'below': 'above'}


def _relation(m, objects):
  a, b = _the(objects, m.group('a')), _the(objects, m.group('b'))
  rel = _RELATION[m.group('rel')]
  if not (language.relation_holds(rel, a, b) or language.relation_holds(_OPPOSITE[rel], a, b)):
    raise ValueError(f'{rel} or not is within the margin')
  return 'yes' if language.relation_holds(rel, a, b) else 'no'


def _compare(m, objects):
  a, b = _the(objects, m.group('a')), _the(objects, m.group('b'))
  order = SIZES.index(a.size) - SIZES.index(b.size)
  holds = {'bigger': order > 0, 'larger': order > 0, 'smaller': order < 0}[m.group('cmp')]
  return 'yes' if holds else 'no'


def _same_size(m, objects):
  a, b = _the(objects, m.group('a')), _the(objects, m.group('b'))
  return 'yes' if a.size == b.size else 'no'


_QUESTIONS = tuple((re.compile(pattern), read) for pattern, read in (
    (rf'what color is the (?P<ref>{_NP})', _attribute('color')),
    (rf'what is the color of the (?P<ref>{_NP})', _attribute('color')),
    (rf'which color does the (?P<ref>{_NP}) have', _attribute('color')),
    (rf'what shape is the (?P<ref>{_NP})', _attribute('shape')),
    (rf'what is the shape of the (?P<ref>{_NP})', _attribute('shape')),
    (rf'what size is the (?P<ref>{_NP})', _attribute('size')),
    (rf'how big is the (?P<ref>{_NP})', _attribute('size')),
    (rf'how many (?P<ref>{_NP}) are (?:there|in the image)', _count),
    (rf'what is the number of (?P<ref>{_NP})', _count),
    (rf'is there (?P<ref>{_NP})', _exists(_ARTICLES, False)),
    (rf'are there any (?P<ref>{_NP})', _exists((None,), True)),
    (rf'is the (?P<a>{_NP}) (?P<axis>left or right of|above or below) the (?P<b>{_NP})',
     _which_side),
    (rf'is the (?P<a>{_NP}) (?P<rel>{_REL}) the (?P<b>{_NP})', _relation),
    (rf'is the (?P<a>{_NP}) (?P<cmp>bigger|larger|smaller) than the (?P<b>{_NP})', _compare),
    (rf'are the (?P<a>{_NP}) and the (?P<b>{_NP}) the same size', _same_size),
))


def answer(question: str, objects: Sequence[SceneObject]) -> str:
  """The answer to a `scenes` question, read off the objects (a word of ANSWERS).

  Raises:
    ValueError: the question is not in the dataset's grammar, or has no single
      answer (a 'the' that names no object or several, a relation within the margin).
  """
  text = _normalise(question)
  if text.endswith('?'):
    for pattern, read in _QUESTIONS:
      if m := pattern.fullmatch(text[:-1]):
        return read(m, objects)
  raise ValueError(f'cannot read the question {question!r}')
