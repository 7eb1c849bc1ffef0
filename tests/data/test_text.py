"""Word vocabulary: encode/decode round trips, padding, unknown words, TF parity, JSON."""

import numpy as np
import tensorflow as tf

from vision_jax.data import text

TEXTS = ['a red circle is left of a blue star.', 'how many red things are there?',
         'a medium-sized box, a disc and a star.', 'yes']


def test_build_orders_by_frequency_then_alphabet():
  vocab = text.Vocabulary.build(['b a', 'a c', 'a b'])
  assert vocab.tokens == text.SPECIAL_TOKENS + ('a', 'b', 'c')
  assert text.Vocabulary.build(['b a', 'a c', 'a b'], min_count=2).tokens[4:] == ('a', 'b')


def test_encode_decode_round_trip():
  vocab = text.Vocabulary.build(TEXTS)
  for t in TEXTS:
    ids = vocab.encode(t, max_len=20)
    assert ids.dtype == np.int32 and ids.shape == (20,)
    assert ids[0] == vocab.bos_id and vocab.eos_id in ids and ids[-1] == vocab.pad_id
    assert vocab.decode(ids) == t
  assert text.split_words('A medium-sized box, a disc.') == [
      'a', 'medium-sized', 'box', ',', 'a', 'disc', '.']


def test_truncation_keeps_eos_and_unknown_words_map_to_unk():
  vocab = text.Vocabulary.build(TEXTS)
  ids = vocab.encode('a red circle is left of a blue star.', max_len=5)
  assert ids.tolist() == [vocab.bos_id, *vocab.word_ids('a red circle'), vocab.eos_id]
  assert vocab.encode('a purple circle', bos=False, eos=False).tolist() == [
      vocab.word_ids('a')[0], vocab.unk_id, vocab.word_ids('circle')[0]]
  assert vocab.decode(vocab.encode('a purple circle')) == 'a <unk> circle'


def test_tf_encode_matches_numpy_inside_tf_data():
  vocab = text.Vocabulary.build(TEXTS[:2])
  texts = TEXTS + ['Unknown words, UPPER case!']
  expected = vocab.encode_batch(texts, max_len=12)
  np.testing.assert_array_equal(vocab.tf_encode(tf.constant(texts), 12).numpy(), expected)
  ds = tf.data.Dataset.from_tensor_slices(texts).map(lambda t: vocab.tf_encode(t, 12))
  np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), expected)
  pairs = tf.constant([texts[:2], texts[2:4]])  # any batch shape
  assert vocab.tf_encode(pairs, 12).shape == (2, 2, 12)


def test_json_round_trip(tmp_path):
  vocab = text.Vocabulary.build(TEXTS)
  vocab.save(tmp_path / 'vocab.json')
  again = text.Vocabulary.load(tmp_path / 'vocab.json')
  assert again.tokens == vocab.tokens and len(again) == len(vocab)
  assert text.Vocabulary.from_json(vocab.to_json()).tokens == vocab.tokens
