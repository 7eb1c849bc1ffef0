"""Test set-up: 8 fake CPU devices (before JAX starts), quiet TensorFlow, shared data dir."""

import hashlib
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Fast CPU compiles: XLA's full LLVM optimisation costs seconds per random-number call
# site and tiny test models gain nothing from it. Subprocesses inherit both flags.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=1').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
