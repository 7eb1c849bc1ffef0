"""The README's worked example of a method runs as written and means what it says."""

import os
import re
import sys

import pytest

from vision_jax import config_lib, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


@pytest.fixture(scope='module')
def ema_module(tmp_path_factory):
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    section = f.read().split('## Adding a method', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  folder = tmp_path_factory.mktemp('readme')
  (folder / 'readme_ema_classification.py').write_text(code)
  sys.path.insert(0, str(folder))
  yield 'readme_ema_classification:Method'
  sys.path.remove(str(folder))


def eval_loss(tmp_path, data_dir, name, method='classification', decay=None, **overrides):
  config = config_lib.load_config(CNN_DIGITS + ':local')
  config_lib.apply_overrides(config, {
      'data.data_dir': str(data_dir), 'model.features': '(8, 16)',
      'model.dense_features': '(32,)', 'model.dropout_rate': '0.0', 'total_steps': '4',
      'eval_every_steps': '0', 'method': method, **overrides})
  if decay is not None:
    with config.unlocked():
      config.ema_classification = dict(decay=decay)
  return train.train_and_evaluate(config, str(tmp_path / name))['eval/loss']


def test_readme_ema_method_is_what_evaluators_see(tmp_path, data_dir, ema_module):
  plain = eval_loss(tmp_path, data_dir, 'plain')
  untrained = eval_loss(tmp_path, data_dir, 'untrained', lr='0.0')
  assert abs(plain - untrained) > 1e-3  # Training moved the weights.
  # decay 0: the average is the current weights; decay 1: the initial ones.
  assert eval_loss(tmp_path, data_dir, 'ema0', ema_module, decay=0.0) == pytest.approx(
      plain, rel=1e-5)
  assert eval_loss(tmp_path, data_dir, 'ema1', ema_module, decay=1.0) == pytest.approx(
      untrained, rel=1e-5)
