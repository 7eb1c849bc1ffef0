"""OpenAI CLIP's byte-pair tokenizer, in host code and as the tf.data op `bpe_tokenize`.

For real text (COCO captions, OpenAI's pretrained CLIP weights) the word vocabulary of
`data.text` is too small; CLIP reads byte-pair tokens. The merges come from the file the
user brings, `bpe_simple_vocab_16e6.txt.gz` of OpenAI's CLIP repository (nothing is
downloaded). The algorithm is the published one (`simple_tokenizer.py`):

  * text cleaning: `ftfy.fix_text` when ftfy is installed (it is not a dependency; it
    only changes text with broken encodings, 'cafÃ©' -> 'café'), then HTML entities
    unescaped twice, whitespace collapsed and stripped, lower case;
  * pre-tokenisation by a regex (the `regex` package, for \\p{L} and \\p{N}): runs of
    letters, single digits, the contractions 's 't 're 've 'm 'll 'd, runs of other
    symbols;
  * each piece's UTF-8 bytes mapped to printable characters (`bytes_to_unicode`), the
    last one marked with '</w>', then merged by the ranks of the merges file.

The vocabulary is the 256 byte characters, the same with '</w>', one token per merge,
then '<|startoftext|>' and '<|endoftext|>' (49,408 tokens with the full file; sot and
eot are 49406 and 49407). A CLIP row is [sot] + ids + [eot] padded with 0, truncated so
that eot stays last, as `clip.tokenize(..., truncate=True)` does.

  tokenizer = bpe.load('~/clip/bpe_simple_vocab_16e6.txt.gz')
  tokenizer.encode_batch(['a photo of a cat'], max_len=77)   # [[49406, 320, ..., 49407, 0...]]
  tokenizer.decode(row)                                       # 'a photo of a cat'

  pp: choose_one('captions', 'caption')|bpe_tokenize(77, '~/clip/bpe_simple_vocab_16e6.txt.gz')
"""

import functools
import gzip
import html
import os
import re
import zlib
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from vision_jax import config_lib
from vision_jax.data.preprocess import inkey_outkey, register

try:
  import ftfy  # pylint: disable=g-import-not-at-top
except ImportError:  # Optional: it only repairs mis-decoded text (mojibake).
  ftfy = None

START_OF_TEXT, END_OF_TEXT = '<|startoftext|>', '<|endoftext|>'
END_OF_WORD = '</w>'
# OpenAI keeps the first 49152 - 256 - 2 merges, so that bytes, merges and the two
# markers make 49152 + 256 tokens.
MAX_MERGES = 49152 - 256 - 2
PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
           r"""|[^\s\p{L}\p{N}]+""")
REGEX_REQUIREMENT = 'regex==2024.11.6'


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """Byte -> a printable character: the printable Latin-1 bytes map to themselves, the
  other 68 (controls, space, soft hyphen...) to chr(256 + n), so no byte becomes
  whitespace or a control character that the BPE would have to treat specially."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  chars = printable[:]
  byte_values = printable[:]
  extra = 0
  for b in range(256):
    if b not in printable:
      byte_values.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(byte_values, map(chr, chars)))


def get_pairs(word: Sequence[str]) -> set[tuple[str, str]]:
  """The adjacent symbol pairs of a word (a sequence of symbols)."""
  return set(zip(word[:-1], word[1:]))


def clean(text: str) -> str:
  """OpenAI's cleaning: ftfy (when installed), HTML unescaped twice (COCO has '&amp;amp;'),
  whitespace collapsed and stripped, lower case."""
  if ftfy is not None:
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text))
  return re.sub(r'\s+', ' ', text).strip().lower()


def _read_merges(path: str) -> list[tuple[str, str]]:
  # Imported here: pipeline imports preprocess, which registers this module's op.
  from vision_jax.data.pipeline import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
    lines = data.decode('utf-8').split('\n')
  except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise config_lib.ConfigError(
        f'BPE merges file {path} is not gzip-compressed UTF-8 text '
        f'(bpe_simple_vocab_16e6.txt.gz of OpenAI CLIP): {e}') from None
  except OSError as e:
    raise DatasetNotFoundError(
        f'BPE merges file {path} cannot be read: {e.strerror or e}; it is '
        "bpe_simple_vocab_16e6.txt.gz of OpenAI's CLIP repository") from None
  merges = []
  # Line 0 is the header ('#version: 0.2'); blank lines (the file's last) carry nothing.
  for number, line in enumerate(lines[1:MAX_MERGES + 1], start=2):
    if not line.strip():
      continue
    pair = tuple(line.split())
    if len(pair) != 2:
      raise config_lib.ConfigError(
          f'BPE merges file {path}, line {number}: {line!r} is not two symbols')
    merges.append(pair)
  return merges


class BytePairTokenizer:
  """OpenAI CLIP's byte-pair tokenizer, from its merges file.

  Attributes:
    path: the merges file (gzip text: a header line, then one 'a b' merge per line).
    tokens: every token, its position is its id.
    vocab_size: the number of tokens (49,408 with OpenAI's file).
    pad_id: 0, the padding of `encode_batch` rows (also the id of '!' inside a word,
      which is why `decode` drops only the padding after the text).
    bos_id: the id of '<|startoftext|>'.
    eos_id: the id of '<|endoftext|>'.
  """

  pad_id = 0

  def __init__(self, path: str):
    try:
      import regex  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f'the BPE tokenizer needs the regex package (pip install '
                        f'{REGEX_REQUIREMENT}) for \\p{{L}} and \\p{{N}}') from None
    self.path = os.path.expanduser(path)
    merges = _read_merges(self.path)
    self._byte_encoder = bytes_to_unicode()
    self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
    byte_chars = list(self._byte_encoder.values())
    self.tokens = (*byte_chars, *(c + END_OF_WORD for c in byte_chars),
                   *(a + b for a, b in merges), START_OF_TEXT, END_OF_TEXT)
    # Two merges can make the same token; the later id wins, as in OpenAI's dict.
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    self._ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.vocab_size = len(self.tokens)
    self.bos_id, self.eos_id = self._ids[START_OF_TEXT], self._ids[END_OF_TEXT]
    # Words recur across captions; the markers are tokens of their own.
    self._cache = {START_OF_TEXT: (START_OF_TEXT,), END_OF_TEXT: (END_OF_TEXT,)}
    self._pattern = regex.compile(PATTERN, regex.IGNORECASE)

  def __len__(self) -> int:
    return self.vocab_size

  def bpe(self, piece: str) -> tuple[str, ...]:
    """The tokens of one pre-tokenised piece (already byte-mapped): its characters,
    the last with '</w>', merged lowest rank first until no known pair is left."""
    if piece in self._cache:
      return self._cache[piece]
    word = (*piece[:-1], piece[-1] + END_OF_WORD)
    while len(word) > 1:
      pair = min(get_pairs(word), key=lambda p: self._ranks.get(p, float('inf')))
      if pair not in self._ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    self._cache[piece] = word
    return word

  def encode(self, text: str | bytes) -> list[int]:
    """Token ids of `text`, without sot and eot."""
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    ids = []
    for piece in self._pattern.findall(clean(text)):
      mapped = ''.join(self._byte_encoder[b] for b in piece.encode('utf-8'))
      ids.extend(self._ids[t] for t in self.bpe(mapped))
    return ids

  def encode_batch(self, texts: Iterable[str | bytes], max_len: int) -> np.ndarray:
    """int32 [N, max_len] CLIP rows: sot, the ids (truncated to max_len - 2), eot, 0s."""
    if max_len < 2:
      raise ValueError(f'max_len {max_len} leaves no room for the start and end tokens')
    texts = list(texts)
    rows = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, t in zip(rows, texts):
      ids = [self.bos_id, *self.encode(t)[:max_len - 2], self.eos_id]
      row[:len(ids)] = ids
    return rows

  def decode(self, ids: Iterable[int]) -> str:
    """The text of ids up to the first eot, without sot and the trailing padding.

    As OpenAI's, every word-final token ends in a space, so punctuation comes back as a
    word of its own ('a cat, a dog.' -> 'a cat , a dog .'); encoding that again gives
    the same ids.
    """
    ids = np.asarray(ids).reshape(-1).tolist()
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    while ids and ids[-1] == self.pad_id:  # Padding; a 0 before real tokens is '!'.
      ids.pop()
    text = bytearray()
    for i in ids:
      if i == self.bos_id or not 0 <= i < self.vocab_size:
        continue
      token = self.tokens[i]
      word_end = token.endswith(END_OF_WORD)
      if word_end:
        token = token[:-len(END_OF_WORD)]
      text.extend(self._byte_decoder[c] for c in token)
      if word_end:
        text.extend(b' ')
    return text.decode('utf-8', errors='replace').strip()

  def tf_encode(self, texts, max_len: int) -> tf.Tensor:
    """`encode_batch` for a string tensor of any shape: int32 [..., max_len]."""
    texts = tf.convert_to_tensor(texts, tf.string)

    def encode(values) -> np.ndarray:
      values = np.asarray(values, dtype=object)  # A scalar string arrives as bytes.
      rows = self.encode_batch(values.reshape(-1).tolist(), max_len)
      return rows.reshape(*values.shape, max_len)

    ids = tf.numpy_function(encode, [texts], tf.int32, stateful=False)
    ids.set_shape(texts.shape.concatenate([max_len]))
    return ids


@functools.lru_cache(maxsize=None)
def _load(path: str) -> BytePairTokenizer:
  return BytePairTokenizer(path)


def load(path: str) -> BytePairTokenizer:
  """The tokenizer of the merges file `path`, read once per process.

  Raises:
    DatasetNotFoundError: (a FileNotFoundError) the file is missing or unreadable.
    ConfigError: (a ValueError) it is not a gzip merges file.
  """
  return _load(os.path.abspath(os.path.expanduser(path)))


@register('bpe_tokenize')
@inkey_outkey('caption', 'tokens')
def bpe_tokenize(max_len: int, path: str):
  """CLIP byte-pair ids of a text (or of every text of a tensor of them, e.g. an
  image's 5 captions -> [5, max_len]), int32: sot, the tokens (truncated), eot, 0s.
  `path` is OpenAI's bpe_simple_vocab_16e6.txt.gz; it is read when the spec is parsed."""
  tokenizer = load(path)
  if max_len < 2:
    raise ValueError(f'bpe_tokenize({max_len}): max_len leaves no room for the start and '
                     'end tokens')
  return lambda texts: tokenizer.tf_encode(texts, max_len)
