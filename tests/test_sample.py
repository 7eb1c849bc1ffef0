"""`python -m vision_jax.sample` on a tiny trained run, and its one-line errors."""

import os
import shutil

import numpy as np
import pytest

from vision_jax import config_lib, sample, train

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_sample')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_MNIST = os.path.join(REPO, 'experiments/generative/vae_mnist.py')
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')


def trained(config_path, workdir, data_dir, **overrides):
  config = config_lib.load_config(config_path + ':local')
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, 'total_steps': '2',
                                      **{k: str(v) for k, v in overrides.items()}})
  train.train_and_evaluate(config, workdir, num_devices=1)
  return workdir


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory, data_dir):
  return trained(VAE_MNIST, str(tmp_path_factory.mktemp('vae') / 'run'), data_dir)


def test_samples_npz_and_grid(vae_run, tmp_path):
  out = str(tmp_path / 'samples')
  assert sample.main(['--workdir', vae_run, '--out', out, '--num', '12', '--seed', '3']) == 0
  with np.load(os.path.join(out, 'samples.npz')) as saved:
    images = saved['images']
    assert set(saved.files) == {'images'}  # Unconditional: no labels.
  assert images.shape == (12, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.getsize(os.path.join(out, 'samples.png')) > 1000
  # The seed decides the samples.
  again = str(tmp_path / 'again')
  assert sample.main(['--workdir', vae_run, '--out', again, '--num', '12', '--seed', '3',
                      '--batch_size', '5']) == 0
  with np.load(os.path.join(again, 'samples.npz')) as saved:
    np.testing.assert_array_equal(saved['images'][:5], images[:5])


@pytest.mark.parametrize('problem, expect', [
    ('no_workdir', 'has no config.json'),
    ('classifier', 'which does not generate images'),
    ('no_checkpoint', 'has no checkpoint'),
    ('sampling_option', "has no sampling option 'guidance'"),
    ('label', 'is not conditional'),
])
def test_bad_requests_are_one_line_errors(problem, expect, vae_run, tmp_path, data_dir,
                                          capsys, file_hashes):
  workdir, extra = vae_run, []
  if problem == 'no_workdir':
    workdir = str(tmp_path / 'nothing')
  elif problem == 'classifier':
    workdir = trained(CNN_DIGITS, str(tmp_path / 'cnn'), data_dir)
  elif problem == 'no_checkpoint':
    workdir = str(tmp_path / 'copy')
    shutil.copytree(vae_run, workdir)
    shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  elif problem == 'sampling_option':
    extra = ['--guidance', '2']
  elif problem == 'label':
    extra = ['--label', '3']
  before = file_hashes(workdir)
  out = str(tmp_path / 'out')
  assert sample.main(['--workdir', workdir, '--out', out, '--num', '4', *extra]) == 2
  errors = capsys.readouterr().err.strip().splitlines()
  assert len(errors) == 1 and errors[0].startswith('error:') and expect in errors[0], errors
  assert not os.path.exists(out)
  assert file_hashes(workdir) == before
