"""Text and variable-length ops: tokenizing, choosing a caption, padding, one row per question.

  choose_one('captions', 'caption')|tokenize(16)                  # captioning, CLIP
  per_question|tokenize(12, inkey='question', outkey='question_tokens')|...   # VQA
  pad_sequence(8, 'objects')                                      # boxes and labels

`tokenize` reads the vocabulary that generated datasets keep in their metadata,
which `preprocess.parse(spec, metadata=builder.info.metadata)` passes on.
"""

import tensorflow as tf

from vision_jax.data import text
from vision_jax.data.preprocess import Op, get_key, inkey_outkey, pop_key, register
from vision_jax.data.preprocess import repeat_rows, set_key


@register('tokenize')
@inkey_outkey('caption', 'tokens')
def tokenize(max_len: int, bos: bool = True, eos: bool = True, metadata=None):
  """Word ids of a text (or of every text of a tensor of them), [..., max_len] int32:
  bos, the words (truncated), eos, then padding. The vocabulary is the dataset's."""
  vocab = text.from_metadata(metadata, f'tokenize({max_len})')
  return lambda texts: vocab.tf_encode(texts, max_len, bos=bos, eos=eos)


@register('choose_one')
@inkey_outkey('captions', 'caption', seeded=True)
def choose_one():
  """One element of a sequence (e.g. one of an image's captions), drawn from the
  example's seed: fixed for a given example and step, so resumable, and fresh each
  epoch, as the pipeline's seed depends on the position in the stream."""
  def fn(values, seed):
    count = tf.shape(values)[0]
    check = tf.debugging.assert_positive(count, message='choose_one: an empty sequence')
    with tf.control_dependencies([check]):
      u = tf.random.stateless_uniform([], seed)
      index = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
    return tf.gather(values, index)
  return fn


@register('swap_word')
@inkey_outkey('caption', 'negative_caption', seeded=True)
def swap_word(groups):
  """The text with one of its words that `groups` names replaced by a word of another
  group: a hard negative for CLIP ('a red disc.' -> 'a red square.').

  `groups` holds tuples of words of one meaning (('circle', 'disc'), ('square', 'box'),
  ...); the replacement is the first word of another group. The word and the group are
  drawn from the example's seed. A text with none of the words comes back unchanged.
  Words are split at spaces; punctuation after a word stays.
  """
  words = [w for group in groups for w in group]
  if len(groups) < 2 or len(set(words)) != len(words):
    raise ValueError(f'swap_word needs two or more groups of distinct words, got {groups}')
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(words), tf.constant([i for i, g in enumerate(groups) for _ in g],
                                          tf.int32)), default_value=-1)
  replacements = tf.constant([group[0] for group in groups])

  def fn(value, seed):
    tokens = tf.strings.split(value, ' ')
    bare = tf.strings.regex_replace(tokens, r'[^\w-]', '')
    group = table.lookup(bare)
    candidates = tf.cast(tf.where(group >= 0)[:, 0], tf.int32)
    pick_seed, group_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def swap():
      index = candidates[tf.random.stateless_uniform(
          [], pick_seed, 0, tf.size(candidates), dtype=tf.int32)]
      other = (group[index] + tf.random.stateless_uniform(
          [], group_seed, 1, len(groups), dtype=tf.int32)) % len(groups)
      new = tf.strings.regex_replace(tokens[index], bare[index], replacements[other])
      return tf.strings.reduce_join(
          tf.tensor_scatter_nd_update(tokens, [[index]], [new]), separator=' ')
    return tf.cond(tf.size(candidates) > 0, swap, lambda: value)
  return fn


def _pad_to(value, length: int, fill):
  value = tf.convert_to_tensor(value)
  value = value[:length]
  padding = [[0, length - tf.shape(value)[0]]] + [[0, 0]] * (value.shape.rank - 1)
  fill = '' if value.dtype == tf.string else tf.cast(fill, value.dtype)
  padded = tf.pad(value, padding, constant_values=fill)
  return tf.ensure_shape(padded, [length, *value.shape[1:]])


@register('pad_sequence')
def pad_sequence(length: int, *keys: str, mask_key: str | None = None, value=0) -> Op:
  """Truncates or pads the leading (sequence) axis of `keys` to `length`, so they can
  be batched, and writes a bool [length] mask of the real entries.

  A key naming a dict (e.g. 'objects', a TFDS Sequence) pads all of its fields. The
  mask goes to `mask_key`, by default '<first key>_mask' ('objects_mask'); the
  length is that of the first key's (first) field, so give keys of one length, like
  the fields of one object. Padding is `value`, or '' for strings.
  """
  if not keys:
    raise ValueError('pad_sequence needs the keys to pad, e.g. pad_sequence(8, "objects")')
  mask_key = mask_key or f'{keys[0]}_mask'

  def op(example):
    count = None
    for key in keys:
      padded = tf.nest.map_structure(lambda v: _pad_to(v, length, value),
                                     get_key(example, key))
      if count is None:
        count = tf.shape(tf.nest.flatten(get_key(example, key))[0])[0]
      set_key(example, key, padded)
    set_key(example, mask_key, tf.range(length) < count)
    return example
  return op


@register('per_question', expands=True)
def per_question(keys=('questions', 'answers'), outkeys=('question', 'answer')) -> Op:
  """One example per question: row i holds questions[i] at `outkeys[0]`, the aligned
  answers[i] at `outkeys[1]` (for each of `keys`), and everything else repeated.

  It expands, so it leads the spec; see `preprocess.split_expanding`.
  """
  keys, outkeys = tuple(keys), tuple(outkeys)
  if len(keys) != len(outkeys):
    raise ValueError(f'per_question: {len(keys)} keys but {len(outkeys)} outkeys')

  def op(example):
    fields = [tf.convert_to_tensor(pop_key(example, k)) for k in keys]
    count = tf.shape(fields[0])[0]
    checks = [tf.debugging.assert_equal(tf.shape(f)[0], count,
                                        message=f'per_question: {keys} differ in length')
              for f in fields[1:]]
    with tf.control_dependencies(checks):
      rows = repeat_rows(example, count)
    for outkey, field in zip(outkeys, fields):
      set_key(rows, outkey, field)
    return rows
  return op


@register('answer_id')
@inkey_outkey('answer', 'answer_id')
def answer_id(metadata=None):
  """The class id of an answer word (or of each of a tensor of them), int32, in the
  dataset's answer vocabulary (`metadata['answers']`); -1 for an answer outside it."""
  if not metadata or 'answers' not in metadata:
    have = sorted(metadata) if metadata else 'no metadata'
    raise ValueError(f"answer_id needs the dataset's answer vocabulary, metadata['answers'], "
                     f'but the metadata has none ({have}); `scenes` stores one')
  with tf.init_scope():  # built eagerly, even when parsed inside a tf.function
    answers = tf.constant(list(metadata['answers']))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(answers, tf.range(tf.size(answers))),
        default_value=-1)
  return lambda values: table.lookup(tf.strings.lower(tf.strings.strip(values)))
