"""Config loading, overrides and the launcher's one-line errors."""

import re

import ml_collections
import pytest

from vision_jax import config_lib, train

CNN_DIGITS = 'experiments/classification/cnn_digits.py'


def test_overrides_keep_types_and_clear_the_twin_duration():
  config = config_lib.load_config(CNN_DIGITS)
  config_lib.apply_overrides(config, {
      'batch_size': '32', 'lr': '1e-2', 'data.name': 'folder:/data/x',
      'model.features': '(8, 16)', 'total_steps': '7', 'data.data_dir': '/tmp/d'})
  assert config.batch_size == 32 and isinstance(config.batch_size, int)
  assert config.lr == 0.01
  assert config.data.name == 'folder:/data/x'
  assert config.model.features == (8, 16)
  assert config.total_steps == 7 and config.total_epochs is None
  assert config.data.data_dir == '/tmp/d'


def test_local_mode_argument():
  assert config_lib.load_config(CNN_DIGITS + ':local').total_steps == 20


@pytest.mark.parametrize('overrides, message', [
    ({'data.nme': 'x'}, 'unknown config field data.nme (did you mean data.name?)'),
    ({'batch_size': 'big'}, 'config field batch_size expects int'),
    ({'data': 'x'}, 'config field data is a group'),
])
def test_bad_overrides_name_the_field(overrides, message):
  config = config_lib.load_config(CNN_DIGITS)
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.apply_overrides(config, overrides)


@pytest.mark.parametrize('argv, message', [
    (['--config', 'experiments/nope.py'], 'config file not found: experiments/nope.py'),
    (['--config', CNN_DIGITS + ':bogus'], 'rejected argument'),
    (['--config', CNN_DIGITS, '--config.optimizer.nmae=adam'], 'unknown config field optimizer.nmae'),
    (['--config', CNN_DIGITS, '--config.total_steps=x1'], 'config field total_steps expects'),
])
def test_launcher_errors_are_one_line_and_nonzero(argv, message, capsys, tmp_path):
  assert train.main(argv + ['--workdir', str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and message in err and '\n' not in err


def test_steps_from_epochs():
  config = config_lib.load_config(CNN_DIGITS)
  assert config_lib.steps(config, 'total', steps_per_epoch=22) == 40 * 22


def test_method_options_are_fields_to_override():
  parser = config_lib.command_line_parser('test', 'doc')
  _, config = config_lib.parse_command_line(parser, [
      '--config', 'experiments/classification/cnn_digits.py:local',
      '--config.method=naive_bayes', '--config.naive_bayes.smoothing=0.5'])
  assert config.naive_bayes.smoothing == 0.5 and config.naive_bayes.threshold == 0.5
  assert config.classification.label_smoothing == 0.0  # The loaded method's group.
  with pytest.raises(config_lib.ConfigError, match='did you mean naive_bayes.smoothing'):
    config_lib.parse_command_line(parser, [
        '--config', 'experiments/classification/nb_digits.py:local',
        '--config.naive_bayes.smothing=0.5'])


def test_evaluator_options_are_fields_to_override():
  parser = config_lib.command_line_parser('test', 'doc')
  _, config = config_lib.parse_command_line(parser, [
      '--config', 'experiments/vision_language/clip_scenes.py:local',
      '--config.evals.probe.train_split=train[:400]'])
  assert config.evals.probe.train_split == 'train[:400]'
  assert config.evals.probe.knn_k == 200  # the probe's defaults are filled in
  assert config.evals.zero_shot.templates == ('a {}.', 'there is a {}.', 'an image of a {}.')
  with pytest.raises(config_lib.ConfigError, match='did you mean evals.probe.knn_k'):
    config_lib.parse_command_line(parser, [
        '--config', 'experiments/vision_language/clip_scenes.py:local',
        '--config.evals.probe.knn_kk=5'])


def test_completing_options_leaves_the_defaults_placeholders_alone():
  """A method's OPTIONS holds placeholders (field references): a value set in one run's
  options must not become every later method's default."""
  from ml_collections.config_dict import placeholder  # pylint: disable=g-import-not-at-top
  options = {'num_classes': placeholder(int), 'size': 1}
  first = config_lib.complete({'num_classes': 3}, ml_collections.ConfigDict(options), 'm')
  second = config_lib.complete({}, ml_collections.ConfigDict(options), 'm')
  assert first.num_classes == 3 and second.num_classes is None
