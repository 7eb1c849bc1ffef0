"""CLIP byte-pair tokenizer: vocabulary layout, BPE merges by rank, cleaning, CLIP rows,
the tf.data op, errors; OpenAI's ids when the real merges file is at $CLIP_BPE_PATH."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from vision_jax import config_lib
from vision_jax.data import bpe, pipeline, preprocess

# Ranked merges over 'the cat sat on the mat, is it? it's that.'; 'th' (rank 0) must be
# merged before 'at</w>' (rank 2), so 'that' ends as 'th' + 'at</w>'.
MERGES = ['t h', 'th e</w>', 'a t</w>', 'c at</w>', 's at</w>', 'm at</w>', 'o n</w>',
          'i t</w>', "' s</w>", 'i s</w>']


@pytest.fixture(scope='module')
def merges_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('bpe') / 'merges.txt.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(MERGES) + '\n')
  return str(path)


@pytest.fixture(scope='module')
def tokenizer(merges_path):
  return bpe.load(merges_path)


def ids_of(tokenizer, *tokens):
  return [tokenizer.tokens.index(t) for t in tokens]


def test_byte_map_is_printable_and_invertible():
  byte_map = bpe.bytes_to_unicode()
  assert sorted(byte_map) == list(range(256))
  assert len(set(byte_map.values())) == 256
  assert all(c.isprintable() and not c.isspace() for c in byte_map.values())
  assert byte_map[ord('a')] == 'a' and byte_map[0xe9] == 'é'
  assert byte_map[0] == chr(256) and byte_map[ord(' ')] == 'Ġ'  # OpenAI's space, GPT-2's too
  assert bpe.get_pairs(('a', 'b', 'c', 'b', 'c')) == {('a', 'b'), ('b', 'c'), ('c', 'b')}


def test_vocabulary_layout(tokenizer):
  byte_chars = list(bpe.bytes_to_unicode().values())
  tokens = tokenizer.tokens
  assert tokens[:256] == tuple(byte_chars)
  assert tokens[256:512] == tuple(c + '</w>' for c in byte_chars)
  assert tokens[512:512 + len(MERGES)] == tuple(m.replace(' ', '') for m in MERGES)
  assert tokens[-2:] == ('<|startoftext|>', '<|endoftext|>')
  assert tokenizer.vocab_size == len(tokenizer) == 512 + len(MERGES) + 2
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (
      0, 512 + len(MERGES), 512 + len(MERGES) + 1)


def test_merges_by_rank_and_pre_tokenisation(tokenizer):
  assert tokenizer.encode('the cat') == ids_of(tokenizer, 'the</w>', 'cat</w>')
  assert tokenizer.encode('that') == ids_of(tokenizer, 'th', 'at</w>')
  assert tokenizer.encode('tab') == ids_of(tokenizer, 't', 'a', 'b</w>')  # no merge
  assert tokenizer.encode("it's") == ids_of(tokenizer, 'it</w>', "'s</w>")
  assert tokenizer.encode('2024') == ids_of(tokenizer, '2</w>', '0</w>', '2</w>', '4</w>')
  assert tokenizer.encode('on,') == ids_of(tokenizer, 'on</w>', ',</w>')


def test_cleaning(tokenizer):
  the_cat = tokenizer.encode('the cat')
  assert tokenizer.encode('  THE\t cat \n') == the_cat
  assert tokenizer.encode('is &amp; it') == tokenizer.encode('is & it')
  assert tokenizer.encode('is &amp;amp; it') == tokenizer.encode('is & it')  # unescaped twice
  assert tokenizer.encode('is & it') == ids_of(tokenizer, 'is</w>', '&</w>', 'it</w>')


def test_unicode_goes_through_the_byte_map(tokenizer):
  # 'é' is UTF-8 C3 A9, two printable Latin-1 bytes that map to themselves.
  assert tokenizer.encode('É') == ids_of(tokenizer, 'Ã', '©</w>')
  byte_map = bpe.bytes_to_unicode()
  dash = [byte_map[b] for b in '—'.encode('utf-8')]  # E2 80 94: two unprintable bytes
  assert tokenizer.encode('—') == ids_of(tokenizer, *dash[:-1], dash[-1] + '</w>')
  for t in ['café au lait', 'a — b', 'naïve 日本']:
    assert tokenizer.decode(tokenizer.encode(t)) == t


def test_encode_decode_round_trip(tokenizer):
  text = "the cat sat on the mat, didn't it? yes!! 42."
  ids = tokenizer.encode(text)
  assert ids[-5:-3] == [0, 256]  # '!' inside the piece '!!' has id 0, the padding id
  # Every word-final token ends in a space, so punctuation comes back on its own.
  decoded = tokenizer.decode(ids)
  assert decoded == "the cat sat on the mat , didn 't it ? yes !! 4 2 ."
  assert tokenizer.encode(decoded) == ids
  row = tokenizer.encode_batch([text], max_len=len(ids) + 6)[0]
  assert tokenizer.decode(row) == decoded
  assert tokenizer.decode([*row[:-1], 7, 8]) == decoded  # after eot nothing counts
  assert tokenizer.decode(ids_of(tokenizer, 'th', 'e</w>', 'cat</w>')) == 'the cat'


def test_rows_pad_and_truncate_keeping_eot(tokenizer):
  sot, eot = tokenizer.bos_id, tokenizer.eos_id
  the, cat, sat = ids_of(tokenizer, 'the</w>', 'cat</w>', 'sat</w>')
  rows = tokenizer.encode_batch(['the cat', 'the cat sat on the mat', ''], max_len=5)
  assert rows.dtype == np.int32 and rows.shape == (3, 5)
  np.testing.assert_array_equal(rows, [[sot, the, cat, eot, 0],
                                       [sot, the, cat, sat, eot],
                                       [sot, eot, 0, 0, 0]])
  np.testing.assert_array_equal(tokenizer.encode_batch(['the cat'], 2), [[sot, eot]])
  with pytest.raises(ValueError, match='max_len 1'):
    tokenizer.encode_batch(['the cat'], 1)


def test_tf_op_matches_encode_batch(tokenizer, merges_path):
  texts = ['the cat sat on the mat', "It's THAT cat!", 'café &amp; 2 mats']
  op = preprocess.parse(f'bpe_tokenize(8, {merges_path!r})')
  many = preprocess.parse(f'bpe_tokenize(8, {merges_path!r}, inkey="captions", '
                          'outkey="caption_tokens")')
  ds = tf.data.Dataset.from_tensors({'caption': texts[1], 'captions': texts})
  ds = ds.map(lambda ex: many(op(ex)))
  assert ds.element_spec['tokens'].shape == (8,)
  assert ds.element_spec['caption_tokens'].shape == (3, 8)
  example = next(iter(ds.as_numpy_iterator()))
  expected = tokenizer.encode_batch(texts, 8)
  np.testing.assert_array_equal(example['tokens'], expected[1])
  np.testing.assert_array_equal(example['caption_tokens'], expected)
  assert example['tokens'].dtype == np.int32


def test_missing_or_bad_file_is_a_one_line_error(tmp_path, merges_path):
  missing = str(tmp_path / 'bpe_simple_vocab_16e6.txt.gz')
  with pytest.raises(pipeline.DatasetNotFoundError, match='cannot be read') as error:
    bpe.load(missing)
  assert isinstance(error.value, FileNotFoundError)
  assert missing in str(error.value) and '\n' not in str(error.value)
  with pytest.raises(pipeline.DatasetNotFoundError, match='bpe_simple_vocab_16e6'):
    preprocess.parse(f'bpe_tokenize(77, {missing!r})')
  plain = tmp_path / 'plain.txt'
  plain.write_text('#version: 0.2\nt h\n')
  with pytest.raises(config_lib.ConfigError, match='not gzip'):
    bpe.load(str(plain))
  bad = tmp_path / 'bad.txt.gz'
  with gzip.open(bad, 'wt') as f:
    f.write('#version: 0.2\nt h e\n')
  with pytest.raises(config_lib.ConfigError, match='line 2'):
    bpe.load(str(bad))
  assert bpe.load(merges_path) is bpe.load(merges_path)  # read once


REAL_PATH = os.environ.get('CLIP_BPE_PATH', '')


@pytest.mark.skipif(not os.path.isfile(REAL_PATH),
                    reason='OpenAI bpe_simple_vocab_16e6.txt.gz not at $CLIP_BPE_PATH')
def test_openai_ids():
  tokenizer = bpe.load(REAL_PATH)
  assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (49408, 49406, 49407)
  # Published ids of OpenAI's tokenizer (CLIP README examples, HF CLIPTokenizer docs).
  known = {
      'a photo of a cat': [320, 1125, 539, 320, 2368],
      'a photo of a dog': [320, 1125, 539, 320, 1929],
      'a diagram': [320, 22697],
      'the black dog': [518, 1449, 1929],
      'hello world': [3306, 1002],
      'a photo of an astronaut riding a horse on mars':
          [320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496],
  }
  for text, ids in known.items():
    assert tokenizer.encode(text.upper()) == ids, text
    assert tokenizer.decode(tokenizer.encode_batch([text], 77)[0]) == text
  row = tokenizer.encode_batch(['a photo of a cat'], 77)[0]
  assert row[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and not row[7:].any()
