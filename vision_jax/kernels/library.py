"""Builds the C++ CPU kernels, registers them with XLA, and runs them per device.

The kernels (`*.cc` in this directory, XLA FFI handlers) are compiled together for the
host CPU (`g++ -O3 -march=native`) the first time one is traced (only models built
with `config.model.cpu_kernels=True` on a CPU trace them), into
`$VISION_JAX_CACHE_DIR` (default `~/.cache/vision_jax`), keyed by the sources, the
compiler, JAX's version and the CPU, and reused by later processes. Without a compiler
XLA's own operations are used and a warning says so; `VISION_JAX_CPU_KERNELS=0` turns
the kernels off.

Kernels are custom calls that XLA's partitioner cannot split: under `jax.jit` with the
batch sharded over the mesh axis `data` of `jax.sharding.get_abstract_mesh()`
(`vision_jax.parallel.under_mesh`; the trainer's steps are traced so), `per_device`
runs them on each device's shard (`jax.shard_map`), where XLA would otherwise gather
the whole batch onto every device.
"""

import ctypes
import hashlib
import logging
import os
from pathlib import Path
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Callable

import jax
from jax import lax

from vision_jax import parallel

_DIRECTORY = Path(__file__).parent
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')
# FFI target name -> exported handler symbol.
TARGETS = {
    'vision_jax_conv_forward': 'VisionJaxConvForward',
    'vision_jax_conv_weight_grad': 'VisionJaxConvWeightGrad',
    'vision_jax_channel_sums': 'VisionJaxChannelSums',
}
LANES = 16  # the kernels' vector width in float32 channels
DATA_AXIS = parallel.DATA_AXIS
BATCH = jax.P(DATA_AXIS)

_load_lock = threading.Lock()
_loaded: bool | None = None


def enabled() -> bool:
  """Whether kernels are traced here: built and loaded."""
  return _available()


def _cache_dir() -> Path:
  if os.environ.get('VISION_JAX_CACHE_DIR'):
    return Path(os.environ['VISION_JAX_CACHE_DIR'])
  return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'vision_jax'


def _host_cpu() -> str:
  """What -march=native compiles for: the CPU's model and instruction-set flags."""
  try:
    lines = Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    return platform.machine() + platform.processor()
  return '\n'.join(sorted({l for l in lines if l.startswith(('model name', 'flags'))}))


def _sources() -> list[Path]:
  return sorted(_DIRECTORY.glob('*.cc'))


def _library_path(compiler: str) -> Path:
  texts = [p.read_text() for p in sorted(_DIRECTORY.glob('*.h')) + _sources()]
  key = hashlib.sha256('\0'.join(
      [*texts, compiler, ' '.join(_FLAGS), jax.__version__, _host_cpu()]).encode())
  return _cache_dir() / f'cpu_kernels-{key.hexdigest()[:16]}.so'


def _compile(compiler: str, path: Path) -> None:
  """Compiles into a temporary file first, so concurrent processes never see half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    out = Path(tmp) / path.name
    subprocess.run([compiler, *_FLAGS, '-I', jax.ffi.include_dir(), *map(str, _sources()),
                    '-o', str(out)], check=True, capture_output=True, text=True)
    os.replace(out, path)


def _available() -> bool:
  global _loaded
  with _load_lock:
    if _loaded is None:
      _loaded = _load()
    return _loaded


def _load() -> bool:
  if os.environ.get('VISION_JAX_CPU_KERNELS', '1') == '0':
    return False
  compiler = os.environ.get('CXX', 'g++')
  if not shutil.which(compiler):
    logging.warning("vision_jax: no C++ compiler (%s) for the CPU kernels; using XLA's "
                    'own operations', compiler)
    return False
  path = _library_path(compiler)
  try:
    if not path.exists():
      _compile(compiler, path)
    library = ctypes.cdll.LoadLibrary(str(path))
  except (OSError, subprocess.CalledProcessError) as e:
    detail = getattr(e, 'stderr', '') or str(e)
    logging.warning("vision_jax: the CPU kernels did not build; using XLA's own "
                    'operations. %s', detail.strip()[-2000:])
    return False
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')
  return True


def on_cpu(x, cpu_fn: Callable[[Any], Any], xla_fn: Callable[[Any], Any]):
  """cpu_fn(x) when the computation is lowered for a CPU, xla_fn(x) for any other."""
  return lax.platform_dependent(x, cpu=cpu_fn, default=xla_fn)


def data_mesh(batch_size: int):
  """The ambient mesh when it splits this batch over its 'data' axis, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or DATA_AXIS not in mesh.axis_names or DATA_AXIS in mesh.manual_axes
      or mesh.shape[DATA_AXIS] == 1 or batch_size % mesh.shape[DATA_AXIS]):
    return None
  return mesh


def per_device(fn, batch_size: int, in_specs, out_specs, *args):
  """fn on each device's shard of the batch (a shard_map over 'data'), or on all of it.

  `out_specs` is one spec or a tuple of them; outputs whose spec does not split the
  batch (`jax.P()`, e.g. a weight gradient) are summed over the devices.
  """
  mesh = data_mesh(batch_size)
  if mesh is None:
    return fn(*args)
  def local(*shards):
    out = fn(*shards)
    if isinstance(out_specs, jax.P):
      return lax.psum(out, DATA_AXIS) if out_specs == jax.P() else out
    return tuple(lax.psum(o, DATA_AXIS) if spec == jax.P() else o
                 for o, spec in zip(out, out_specs))
  return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       axis_names={DATA_AXIS}, check_vma=False)(*args)
