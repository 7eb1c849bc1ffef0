"""Keeps freed host memory in the process, so XLA:CPU does not page-fault on every step.

XLA:CPU allocates each execution's temporary buffers (hundreds of MB for a ResNet
training step) with `posix_memalign` from its worker threads and frees them at the end.
glibc serves such large blocks of a thread's arena with `mmap` and returns them with
`munmap`, so every step faults its whole working set back in, page by page: for
ResNet-20 at batch 128, 300 MB and 74,000 page faults per step, a third of the step's
time (BENCHMARKS.md). One arena that never gives memory back to the system keeps those
pages mapped and reused.
"""

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to reuse freed memory; True if it applied (Linux with glibc).

  Call it before JAX starts its CPU backend: threads that already have an arena keep it.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False  # not glibc (e.g. musl)
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
              and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
