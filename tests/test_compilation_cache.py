"""The persistent compilation cache of the launchers: on by default, off on request."""

import os
import subprocess
import sys

import jax

from vision_jax import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A program whose compile takes longer than the cache's threshold on any CPU.
PROGRAM = ('from vision_jax import compilation_cache as c; print(c.enable()); '
           'import jax, jax.numpy as jnp; '
           'f = jax.jit(lambda x: sum(jnp.sin(x * i) for i in range(2000))); '
           'f(jnp.ones(3)).block_until_ready()')


def _run(env):
  # Without the test suite's own cache settings (conftest.py), as a user's shell has it.
  base = {k: v for k, v in os.environ.items()
          if k not in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')}
  return subprocess.run([sys.executable, '-c', PROGRAM], cwd=REPO, capture_output=True,
                        text=True, env={**base, **env}, timeout=300, check=True)


def test_a_second_process_finds_the_first_ones_executable(tmp_path):
  cache = tmp_path / 'cache'
  assert _run({compilation_cache.ENV_VAR: str(cache)}).stdout.strip() == str(cache)
  entries = sorted(os.listdir(cache))
  assert entries and all(e.startswith('jit__lambda') for e in entries)
  _run({compilation_cache.ENV_VAR: str(cache)})
  assert sorted(os.listdir(cache)) == entries  # read back, not compiled and written anew


def test_jax_own_setting_is_kept(tmp_path):
  out = _run({'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'mine')}).stdout.strip()
  assert out == str(tmp_path / 'mine') and os.listdir(tmp_path / 'mine')


def test_default_folder_and_switching_off(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  assert compilation_cache.default_directory() == str(tmp_path / 'vision_jax' / 'jax')
  before = jax.config.jax_compilation_cache_dir
  for off in ('', '0'):
    monkeypatch.setenv(compilation_cache.ENV_VAR, off)
    assert compilation_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before
