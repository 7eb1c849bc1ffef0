"""Test set-up: 8 fake CPU devices (before JAX starts), quiet TensorFlow, shared data dir."""

import hashlib
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Fast CPU compiles: tiny test models gain nothing from XLA's LLVM optimisation or its
# fusion emitters, and compiling dominates the suite; without both, a ViViT training
# run's compiles take a fifth of the time and the whole run half the CPU time.
# Subprocesses inherit the flags.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0'
                           ' --xla_cpu_use_fusion_emitters=false').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One compilation cache for the session (subprocesses and xdist workers share it): the
# many runs that compile the same steps (resumed, 8 devices against 1, two processes)
# compile them once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      tempfile.gettempdir(), f'vision_jax_test_cache_{os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()}')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session, so each embedded dataset is prepared once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


@pytest.fixture(scope='session')
def digits_data_dir(data_dir):
  """`data_dir` with the embedded `digits` prepared, for runs whose processes start at once."""
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.get_builder('digits', data_dir)
  return data_dir


def _file_hashes(root) -> dict[str, str] | None:
  """Every file under `root` (or `root` itself, if a file) by its SHA-256; None if absent."""
  root = str(root)
  if not os.path.exists(root):
    return None
  paths = [root] if os.path.isfile(root) else [
      os.path.join(folder, name) for folder, _, files in os.walk(root) for name in files]
  hashes = {}
  for path in paths:
    with open(path, 'rb') as f:
      hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return hashes


@pytest.fixture
def file_hashes():
  """`file_hashes(root)`: what a failed run must leave unchanged."""
  return _file_hashes


@pytest.fixture(scope='session')
def scenes_data_dir(tmp_path_factory):
  """A data dir holding small versions of `scenes/multi` and `scenes/compositional`
  under their own names (96 training, 24 test images), so experiments on the scenes
  run against it unchanged but with `data.data_dir` set."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vision_jax.data import scenes  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('scenes_data'))
  configs = scenes.Scenes.builder_configs  # TFDS memoizes the configs by name.
  for name in ('multi', 'compositional'):
    original = configs[name]
    configs[name] = dataclasses.replace(original, num_train=96, num_validation=8, num_test=24)
    try:
      scenes.Scenes(config=name, data_dir=root).download_and_prepare()
    finally:
      configs[name] = original  # Reading needs only what was written.
  return root


@pytest.fixture(scope='session')
def scenes_video_data_dir(tmp_path_factory):
  """A data dir holding a small `scenes_video` under its own name (40 training, 12 test
  clips), so the video experiments run against it unchanged but with `data.data_dir`."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vision_jax.data import scenes_video  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('scenes_video_data'))
  configs = scenes_video.ScenesVideo.builder_configs
  original = configs['default']
  configs['default'] = dataclasses.replace(original, num_train=40, num_validation=4,
                                           num_test=12)
  try:
    scenes_video.ScenesVideo(config='default', data_dir=root).download_and_prepare()
  finally:
    configs['default'] = original
  return root


# Files whose tests share nothing costly run test by test on any worker (`make test`
# uses `--dist loadgroup`); the autodiff contract keeps each model's cases together (they
# share its compiled functions); every other file stays on one worker, with its module
# fixtures built once.
_SPREAD_FILES = ('test_train.py', 'test_experiments.py', 'test_captioning.py')


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    name = item.path.name
    if name in _SPREAD_FILES:
      continue
    group = name
    if name == 'test_autodiff.py' and hasattr(item, 'callspec'):
      group += ':' + str(item.callspec.params.get('name', ''))
    item.add_marker(pytest.mark.xdist_group(group))
