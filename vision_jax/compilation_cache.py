"""JAX's persistent compilation cache, on by default for the command-line tools.

A second run of the same experiment (a resumed run, the next tour, a rerun with another
workdir) loads its compiled steps and evaluators from disk instead of compiling them
again. Entries are keyed as JAX keys them: the computation, the compile options, the
backend and the jax/jaxlib versions, so a change of any of them compiles afresh.

The folder is `$VISION_JAX_COMPILATION_CACHE` when set (empty or `0`: no cache), else
JAX's own setting when one is made (`JAX_COMPILATION_CACHE_DIR`), else
`$XDG_CACHE_HOME/vision_jax/jax` (`~/.cache/vision_jax/jax`). Library code that imports
vision_jax is left alone: only the `python -m vision_jax.train` launcher calls `enable()`.
"""

import os

import jax

ENV_VAR = 'VISION_JAX_COMPILATION_CACHE'


def default_directory() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'vision_jax', 'jax')


def enable() -> str | None:
  """Turns the cache on (unless switched off); returns its folder, or None."""
  directory = os.environ.get(ENV_VAR)
  if directory in ('', '0'):
    return None
  if directory is None and jax.config.jax_compilation_cache_dir:
    directory = jax.config.jax_compilation_cache_dir  # The user's own JAX setting.
  else:
    directory = directory or default_directory()
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError:
      return None  # A read-only home: compile as before.
    jax.config.update('jax_compilation_cache_dir', directory)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    # Small programs too: on a 2-core CPU even an evaluator's compile takes a second.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  return directory
