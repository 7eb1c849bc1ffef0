"""Word-level vocabulary for the short English texts of the synthetic datasets.

Captions, questions and answers use about a hundred distinct words, so whole
words are the natural tokens. Python and TensorFlow tokenise identically: lower
case, punctuation split off, whitespace separates the rest.

  vocab = Vocabulary.build(train_texts)
  ids = vocab.encode('a red circle.', max_len=16)   # [bos, a, red, circle, ., eos, pad...]
  vocab.decode(ids)                                 # 'a red circle.'
  vocab.tf_encode(tf.constant(['a red circle.']), max_len=16)   # inside tf.data

A generated dataset stores its vocabulary in `builder.info.metadata` (`dataset_metadata`
writes it, `from_metadata` reads it back).
"""

import collections
import json
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PAD, BOS, EOS, UNK = '<pad>', '<bos>', '<eos>', '<unk>'
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Written in the syntax shared by Python's `re` and TensorFlow's RE2.
_PUNCTUATION = r"[^a-z0-9\s'-]"
_CLOSING = frozenset('.,;:!?')


def split_words(text: str) -> list[str]:
  return re.sub(_PUNCTUATION, r' \g<0> ', text.lower()).split()


class Vocabulary:
  """Maps words to ids; ids 0-3 are pad, bos, eos and unknown.

  Attributes:
    tokens: every token, its position is its id.
  """

  pad_id, bos_id, eos_id, unk_id = range(4)

  def __init__(self, words: Iterable[str]):
    words = [w for w in words if w not in SPECIAL_TOKENS]
    self.tokens = SPECIAL_TOKENS + tuple(words)
    self._ids = {t: i for i, t in enumerate(self.tokens)}

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int = 1) -> 'Vocabulary':
    """Most frequent words first; ties broken alphabetically so it is reproducible."""
    counts = collections.Counter()
    for t, repeats in collections.Counter(texts).items():  # templated texts repeat a lot
      for w in split_words(t):
        counts[w] += repeats
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return cls(w for w, c in ordered if c >= min_count)

  def __len__(self) -> int:
    return len(self.tokens)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def word_ids(self, text: str) -> list[int]:
    return [self._ids.get(w, self.unk_id) for w in split_words(text)]

  def encode(self, text: str, max_len: int | None = None, *,
             bos: bool = True, eos: bool = True) -> np.ndarray:
    """int32 ids; with `max_len`, truncated (keeping eos) and padded to it."""
    ids = self.word_ids(text)
    if max_len is not None:
      ids = ids[:max_len - bos - eos]
    ids = [self.bos_id] * bos + ids + [self.eos_id] * eos
    if max_len is not None:
      ids += [self.pad_id] * (max_len - len(ids))
    return np.asarray(ids, np.int32)

  def encode_batch(self, texts: Sequence[str], max_len: int, **kw) -> np.ndarray:
    return np.stack([self.encode(t, max_len, **kw) for t in texts])

  def decode(self, ids: Iterable[int]) -> str:
    """Text up to the first eos, without special tokens."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == self.eos_id:
        break
      if i in (self.pad_id, self.bos_id):
        continue
      word = self.tokens[i] if 0 <= i < len(self.tokens) else UNK
      if words and word in _CLOSING:
        words[-1] += word
      else:
        words.append(word)
    return ' '.join(words)

  def tf_encode(self, texts, max_len: int, *, bos: bool = True, eos: bool = True):
    """Same as `encode` for a string tensor of any shape, as graph ops for tf.data."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    texts = tf.convert_to_tensor(texts)
    flat = tf.reshape(texts, [-1])
    words = tf.strings.split(tf.strings.regex_replace(
        tf.strings.lower(flat), _PUNCTUATION, r' \0 '))
    ids = self._tf_table().lookup(words)[:, :max_len - bos - eos]
    marker = lambda i: tf.RaggedTensor.from_tensor(tf.fill([tf.size(flat), 1], i))
    ids = tf.concat([marker(self.bos_id)] * bos + [ids] + [marker(self.eos_id)] * eos, 1)
    ids = ids.to_tensor(self.pad_id, shape=[None, max_len])
    return tf.reshape(ids, tf.concat([tf.shape(texts), [max_len]], 0))

  def _tf_table(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not hasattr(self, '_table'):
      with tf.init_scope():  # built eagerly once, even when first used inside tf.data
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.tokens), tf.range(len(self.tokens), dtype=tf.int32)),
            default_value=self.unk_id)
    return self._table

  def to_json(self) -> str:
    return json.dumps(list(self.tokens))

  @classmethod
  def from_json(cls, data: str) -> 'Vocabulary':
    return cls(json.loads(data))

  def save(self, path) -> None:
    with open(path, 'w') as f:
      f.write(self.to_json())

  @classmethod
  def load(cls, path) -> 'Vocabulary':
    with open(path) as f:
      return cls.from_json(f.read())


def dataset_metadata(texts: Mapping[str, Sequence[str]]) -> dict[str, Any]:
  """The vocabulary of the training texts, and the most words per text of each field."""
  vocab = Vocabulary.build(t for field in texts.values() for t in field)
  return {'vocabulary': list(vocab.tokens),
          'max_words': {k: max((len(split_words(t)) for t in set(v)), default=0)
                        for k, v in texts.items()}}


def from_metadata(metadata: Mapping[str, Any] | None, needed_by: str = 'this') -> Vocabulary:
  """The vocabulary stored in a dataset's metadata (`builder.info.metadata`).

  Raises:
    ValueError: there is no metadata or it holds no 'vocabulary'; `needed_by` names
      what asked for one.
  """
  if not metadata or 'vocabulary' not in metadata:
    have = sorted(metadata) if metadata else 'no metadata'
    raise ValueError(
        f'{needed_by} needs a vocabulary, but the dataset metadata has none ({have}); '
        "datasets with text (scenes, scenes_video) store one under 'vocabulary', and "
        'preprocess.parse(spec, metadata=builder.info.metadata) passes it on')
  return Vocabulary(metadata['vocabulary'])
