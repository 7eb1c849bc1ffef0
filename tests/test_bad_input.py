"""Bad input to the launcher: each case is one `error:` line naming the problem, a non-zero
exit, no traceback, and the workdir exactly as it was (or still absent).

To add a case, add a row to CASES: the overrides or arguments that make the mistake and
a substring the error line must contain.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest

from vision_jax import train

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_bad_input')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN_DIGITS = os.path.join(REPO, 'experiments/classification/cnn_digits.py')
# cnn_digits:local, narrow and short, for the cases that get as far as training.
TINY = {'model.features': '(8, 16)', 'model.dense_features': '(32,)', 'total_steps': '2',
        'checkpoint_every_steps': '2', 'evals.eval.num_figure_images': '0'}


@dataclasses.dataclass(frozen=True)
class Case:
  """One mistake.

  Attributes:
    name: the test id.
    expect: a substring of the `error:` line (may contain {root}, the case's tmp dir).
    overrides: `--config.<field>=<value>` arguments on top of TINY.
    config: the `--config` argument.
    workdir: 'new' (does not exist yet), 'file' (an existing regular file), or
      'corrupt' (a finished run whose latest checkpoint's array files are garbage).
    prepare: makes the case's input files under its tmp dir; returns more overrides.
    xfail: why the case fails today, when it does in code outside the tests.
    in_process: run `train.main` in this process (fast) rather than the launcher as a
      subprocess (for what only a whole process shows: Orbax's shutdown at exit).
  """
  name: str
  expect: str
  overrides: dict[str, str] = dataclasses.field(default_factory=dict)
  config: str = CNN_DIGITS + ':local'
  workdir: str = 'new'
  prepare: Callable[[str], dict[str, str]] | None = None
  xfail: str | None = None
  in_process: bool = True


def image_folder(root: str, bad_file: str | None = None, content: bytes | None = None,
                 truncate: bool = False) -> str:
  """An ImageFolder `root/<split>/<class>/<image>` of 8x8 grey PNGs, with one bad file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label in ('a', 'b'):
      os.makedirs(os.path.join(root, split, label))
      for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), np.uint8)).save(
            os.path.join(root, split, label, f'{i}.png'))
  if bad_file:
    path = os.path.join(root, bad_file)
    if truncate:
      with open(os.path.join(root, 'train', 'a', '0.png'), 'rb') as f:
        content = f.read()[:40]
    with open(path, 'wb') as f:
      f.write(content)
  return root


def folder_with(bad_file, **kwargs):
  def prepare(tmp):
    root = image_folder(os.path.join(tmp, 'images'), bad_file, **kwargs)
    return {'data.name': f'folder:{root}', 'batch_size': '8', 'evals.eval.batch_size': '8'}
  return prepare


CASES = [
    Case('truncated_png', expect='{root}/images/train/a/broken.png',
         prepare=folder_with('train/a/broken.png', truncate=True)),
    Case('text_file_named_png', expect='{root}/images/train/b/notes.png',
         prepare=folder_with('train/b/notes.png', content=b'not an image\n')),
    Case('unknown_pp_op', expect="'no_such_op'",
         overrides={'data.pp_train': 'decode|no_such_op(3)|value_range(0, 1)'}),
    Case('negative_total_steps', expect='total_steps', overrides={'total_steps': '-5'}),
    Case('zero_total_steps', expect='total_steps', overrides={'total_steps': '0'}),
    Case('workdir_is_a_file', expect='{root}/workdir', workdir='file'),
    Case('corrupt_checkpoint', expect='{root}/workdir/checkpoints/2 cannot be restored',
         workdir='corrupt', overrides={'total_steps': '4'}, in_process=False),
    Case('missing_config_file', expect='config file not found: experiments/no_such.py',
         config='experiments/no_such.py'),
    Case('unknown_config_field', expect='unknown config field modle.features',
         overrides={'modle.features': '(8,)'}),
    Case('wrong_typed_value', expect="config field batch_size expects int, got 'many'",
         overrides={'batch_size': 'many'}),
    Case('init_from_path_missing', expect='init_from.path /nonexistent does not exist',
         overrides={'init_from.path': '/nonexistent'}),
    Case('unknown_dataset', expect="unknown dataset 'no_such_dataset'",
         overrides={'data.name': 'no_such_dataset'}),
    Case('empty_dataset_name', expect='data.name', overrides={'data.name': ''}),
    Case('unknown_dataset_version', expect='9.9.9', overrides={'data.name': 'digits:9.9.9'}),
]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  """A workdir of cnn_digits:local TINY with checkpoints at steps 2 (kept pristine)."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'workdir')
  args = ['--config', CNN_DIGITS + ':local', '--workdir', workdir,
          f'--config.data.data_dir={data_dir}'] + [f'--config.{k}={v}' for k, v in TINY.items()]
  assert train.main(args) == 0
  return workdir


def make_workdir(kind: str, path: str, finished_run: str) -> None:
  if kind == 'file':
    with open(path, 'w') as f:
      f.write('notes, not a workdir\n')
  elif kind == 'corrupt':
    shutil.copytree(finished_run, path)
    item = os.path.join(path, 'checkpoints', '2', 'default')
    for folder, _, files in os.walk(item):
      for name in files:
        if os.path.basename(folder) == 'd':  # OCDBT's array data files.
          with open(os.path.join(folder, name), 'wb') as f:
            f.write(b'\x00garbage')


@pytest.mark.parametrize('case', [
    pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                 if c.xfail else []) for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(case, tmp_path, data_dir, request,
                                                          capfd, file_hashes):
  root = str(tmp_path)
  workdir = os.path.join(root, 'workdir')
  if case.workdir != 'new':
    make_workdir(case.workdir, workdir, request.getfixturevalue('finished_run'))
  overrides = {'data.data_dir': data_dir, **TINY, **case.overrides}
  if case.prepare:
    overrides.update(case.prepare(root))
  before = file_hashes(workdir)
  argv = ['--config', case.config, '--workdir', workdir] + [
      f'--config.{k}={v}' for k, v in overrides.items()]
  if case.in_process:  # Saves the start-up of a process; fd-level capture sees everything.
    capfd.readouterr()
    returncode = train.main(argv)
    stdout, stderr = capfd.readouterr()
    result = subprocess.CompletedProcess(argv, returncode, stdout, stderr)
  else:
    result = subprocess.run(
        [sys.executable, '-m', 'vision_jax.train', *argv], cwd=REPO,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, capture_output=True, text=True,
        timeout=300, check=False)
  output = f'stdout:\n{result.stdout}\nstderr:\n{result.stderr}'
  assert result.returncode != 0, output
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, output
  assert case.expect.format(root=root) in errors[0], output
  assert 'Traceback' not in result.stdout + result.stderr, output
  if before is None:
    assert not os.path.exists(workdir) or not os.listdir(workdir), (
        f'the failed run left {os.listdir(workdir)} in its new workdir')
  else:
    assert file_hashes(workdir) == before, 'the failed run changed the workdir'
