"""Freed host memory stays mapped, so large per-step buffers stop page-faulting."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees 128 MB from a worker thread, as XLA:CPU does with an
# execution's temporary buffers, twice; prints the page faults of the second round.
SCRIPT = '''
    import ctypes, resource, sys, threading
    from vision_jax import host_memory
    if sys.argv[1] == 'keep':
        assert host_memory.keep_freed_memory()
    libc = ctypes.CDLL('libc.so.6')
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = (ctypes.c_void_p,)
    def step():
        buffer = libc.malloc(128 << 20)
        ctypes.memset(buffer, 1, 128 << 20)
        libc.free(buffer)
    for round in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        worker = threading.Thread(target=step)
        worker.start()
        worker.join()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def faults_of_second_round(mode: str) -> int:
  result = subprocess.run([sys.executable, '-c', textwrap.dedent(SCRIPT), mode], cwd=REPO,
                          env={**os.environ, 'PYTHONPATH': REPO}, capture_output=True,
                          text=True, timeout=120, check=True)
  return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_memory_is_reused_without_page_faults():
  pages = (128 << 20) // 4096
  assert faults_of_second_round('default') > pages // 2  # glibc unmaps and refaults
  assert faults_of_second_round('keep') < pages // 20
