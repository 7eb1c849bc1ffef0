"""Word-level vocabulary for the short English texts of the synthetic datasets.

Captions, questions and answers use about a hundred distinct words, so whole
words are the natural tokens. Python and TensorFlow tokenise identically: lower
case, punctuation split off, whitespace separates the rest.

  vocab = Vocabulary.build(train_texts)
  ids = vocab.encode('a red circle.', max_len=16)   # [bos, a, red, circle, ., eos, pad...]
  vocab.decode(ids)                                 # 'a red circle.'
  vocab.tf_encode(tf.constant(['a red circle.']), max_len=16)   # inside tf.data

A generated dataset stores its vocabulary in `builder.info.metadata` (`dataset_metadata`
writes it, `from_metadata` reads it back). For a dataset without one (TFDS
`coco_captions`), build one from its training captions and pass the file as
`--config.data.vocabulary`:

  python -m vision_jax.data.text build-vocab --data coco_captions \
      --split train+restval --field captions/text --min_count 5 --out coco_vocab.json
"""

import argparse
import collections
import json
import re
import sys
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


def random_token_rows(rng: np.random.Generator, batch_size: int, max_len: int,
                      vocab_size: int) -> np.ndarray:
  """int32 [batch_size, max_len] rows shaped like `tokenize`'s: bos, 1 to max_len - 2
  random words, eos, padding. Made-up text for benchmarks and for building a state."""
  v = Vocabulary
  words = rng.integers(len(SPECIAL_TOKENS), vocab_size, (batch_size, max_len), dtype=np.int32)
  eos_at = rng.integers(2, max_len, batch_size)[:, None]
  position = np.arange(max_len)[None]
  tokens = np.where(position < eos_at, words, v.pad_id)
  tokens = np.where(position == eos_at, v.eos_id, tokens)
  tokens[:, 0] = v.bos_id
  return tokens.astype(np.int32)


def dataset_metadata(texts: Mapping[str, Sequence[str]], min_count: int = 1
                     ) -> dict[str, Any]:
  """The vocabulary of the training texts (the words that occur at least `min_count`
  times), and the most words per text of each field."""
  vocab = Vocabulary.build((t for field in texts.values() for t in field), min_count)
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
        'preprocess.parse(spec, metadata=builder.info.metadata) passes it on; for others '
        'set data.vocabulary to a word list (python -m vision_jax.data.text build-vocab)')
  return Vocabulary(metadata['vocabulary'])


def build_vocabulary(name: str, field: str, *, split: str = 'train',
                     data_dir: str | None = None, min_count: int = 5) -> Vocabulary:
  """The vocabulary of the texts at `field` of a dataset's `split`.

  Args:
    name: a `config.data.name` (`pipeline.get_builder` finds it).
    field: the text feature, a string or a sequence of them per example; 'parent/child'
      for a nested one (TFDS coco_captions' 'captions/text').
    split: the split, or a TFDS split expression ('train+restval').
    data_dir: `config.data.data_dir`.
    min_count: the fewest occurrences that put a word in the vocabulary.

  Raises:
    ValueError: the dataset has no feature `field` or no split `split`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vision_jax.data import pipeline, preprocess  # pylint: disable=g-import-not-at-top

  builder = pipeline.get_builder(name, data_dir)
  features = builder.info.features
  # The images are not needed: leave their bytes undecoded.
  decoders = {k: tfds.decode.SkipDecoding() for k, v in features.items()
              if isinstance(v, tfds.features.Image)}
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  except (KeyError, ValueError) as e:
    raise ValueError(f'dataset {name!r} has no split {split!r} '
                     f'(it has {sorted(builder.info.splits)}): {e}') from None
  try:
    ds = ds.map(lambda ex: tf.reshape(preprocess.get_key(ex, field), [-1]))
  except KeyError as e:
    raise ValueError(f'dataset {name!r}: {e.args[0]}') from None
  if ds.element_spec.dtype != tf.string:
    raise ValueError(f'dataset {name!r}: feature {field!r} is {ds.element_spec.dtype.name}, '
                     'not text')
  texts = (t.decode('utf-8') for batch in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))
           for t in batch)
  return Vocabulary.build(texts, min_count)


def main(argv: Sequence[str] | None = None) -> None:
  """`build-vocab`: writes a dataset's vocabulary for `--config.data.vocabulary`."""
  parser = argparse.ArgumentParser(prog='python -m vision_jax.data.text',
                                   description=main.__doc__)
  commands = parser.add_subparsers(dest='command', required=True)
  build = commands.add_parser('build-vocab', help='count the words of a text feature')
  build.add_argument('--data', required=True, help='a config.data.name, e.g. coco_captions')
  build.add_argument('--field', required=True, help="the text feature, e.g. 'captions/text'")
  build.add_argument('--out', required=True, help='the JSON file to write')
  build.add_argument('--split', default='train', help="e.g. 'train+restval'")
  build.add_argument('--data_dir', default=None)
  build.add_argument('--min_count', type=int, default=5)
  args = parser.parse_args(argv)
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    vocab = build_vocabulary(args.data, args.field, split=args.split,
                             data_dir=args.data_dir, min_count=args.min_count)
  except (ValueError, pipeline.DatasetNotFoundError) as e:
    sys.exit(f'error: {e}')
  vocab.save(args.out)
  print(f'{args.out}: {len(vocab)} tokens ({len(vocab) - len(SPECIAL_TOKENS)} words with at '
        f'least {args.min_count} occurrences in {args.data} {args.split} {args.field})')


if __name__ == '__main__':
  main()
