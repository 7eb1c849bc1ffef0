"""`vision_jax.benchmark` on the captioning method: synthetic token batches, `--decode`."""

import os

import numpy as np
import pytest

from vision_jax import benchmark, config_lib
from vision_jax.data import text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION_SCENES = os.path.join(REPO, 'experiments/vision_language/caption_scenes.py')


def test_synthetic_tokens_are_captions():
  config = config_lib.load_config(CAPTION_SCENES + ':decoder=transformer,local')
  method = benchmark.make_method(config)
  assert len(method.vocab) == benchmark.SYNTHETIC_VOCAB_SIZE
  batch = method.synthetic_batch(256, (32, 32, 3), np.random.default_rng(0))
  assert batch['image'].shape == (256, 32, 32, 3)
  tokens = batch['tokens']
  assert tokens.shape == (256, config.model.max_len) and tokens.dtype == np.int32
  vocab = text.Vocabulary
  assert (tokens[:, 0] == vocab.bos_id).all()
  eos_at = np.argmax(tokens == vocab.eos_id, axis=1)
  assert ((tokens == vocab.eos_id).sum(1) == 1).all()
  position = np.arange(tokens.shape[1])[None]
  words = tokens[(position > 0) & (position < eos_at[:, None])]
  assert words.min() >= len(text.SPECIAL_TOKENS) and words.max() < len(method.vocab)
  assert (tokens[position > eos_at[:, None]] == vocab.pad_id).all()
  # Lengths from one word up to max_len - 2.
  assert eos_at.min() == 2 and eos_at.max() == config.model.max_len - 1


def test_labels_are_still_needed_by_classifiers():
  config = config_lib.load_config(
      os.path.join(REPO, 'experiments/classification/cnn_mnist.py:local'))
  with config.unlocked():
    config.data.num_classes = None
  with pytest.raises(config_lib.ConfigError, match='num_classes'):
    benchmark.jax_step(config, count_flops=False)


def test_benchmark_times_the_captioning_step_and_beam_search(capsys):
  # Without dropout the step has no random-number call sites to compile.
  code = benchmark.main(['--config', CAPTION_SCENES + ':decoder=transformer,local',
                         '--steps', '2', '--warmup', '1', '--decode', '--batch_size', '8',
                         '--config.data.name=no_such_dataset',
                         '--config.model.dropout_rate=0.0'])
  assert code == 0
  out = capsys.readouterr().out
  assert 'batch 8 of (32, 32, 3) + tokens (25,) (vocabulary of 124)' in out
  assert out.count('ms/step') == 1 and 'ex/s' in out
  assert 'captions/s' in out and 'ms/batch of 8' in out and 'beam 3' in out
  length = float(out.split(' tokens  compile')[0].rsplit(' ', 1)[-1])
  assert 1 <= length <= config_lib.load_config(CAPTION_SCENES).model.max_len - 1
