"""Generated datasets: a pool of worker processes and the TFDS builder base class using it.

A generated example is a pure function of (config, split, index), computed in Python
and numpy; `GeneratedBuilder.generate` maps such a function over the indices on one
worker process per core while the builder prepares.
"""

import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import tensorflow_datasets as tfds

# Seeds derive from (seed, SPLIT_IDS[split], index), so the splits never share a draw.
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2, 'test_novel': 3}


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))  # respects container and taskset limits
  except AttributeError:
    return os.cpu_count() or 1


class Workers:
  """Worker processes, one per core, that map a module-level function over indices.

  Generation is Python and numpy, so it scales with processes, not threads. The
  workers are fresh interpreters: unlike multiprocessing's fork or spawn, they
  inherit no threads from the caller (JAX, TensorFlow) and do not re-run the
  caller's main script. They start on first use; `close` ends them.
  """

  def __init__(self, count: int | None = None, chunk: int = 128):
    # Beyond a few workers the main process, writing the records, is the bottleneck.
    self.count = min(_usable_cores(), 6) if count is None else count
    self.chunk = chunk
    self._procs = []

  def map(self, fn, num: int, *args):
    """Yields fn(*args, i) for i in range(num), in order."""
    chunks = [range(s, min(s + self.chunk, num)) for s in range(0, num, self.chunk)]
    if self.count < 2 or len(chunks) < 2:
      yield from (fn(*args, i) for i in range(num))
      return
    if not self._procs:
      self._start()
    procs = self._procs
    ahead = 2 * len(procs)  # chunks queued; chunk i always goes to worker i % len(procs)
    finished = False
    try:
      for i, indices in enumerate(chunks[:ahead]):
        self._send(procs[i % len(procs)], (fn, args, indices))
      for i in range(len(chunks)):
        proc = procs[i % len(procs)]
        try:
          results = pickle.load(proc.stdout)
        except EOFError:
          raise RuntimeError('a data generation worker died; its error is printed above') from None
        if i + ahead < len(chunks):
          self._send(proc, (fn, args, chunks[i + ahead]))
        yield from results
      finished = True
    finally:
      if not finished:  # unread results are left in the pipes
        self.close()

  def _start(self):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))
    command = [sys.executable, '-c', 'from vision_jax.data import generation; generation.serve()']
    self._procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=dict(os.environ, PYTHONPATH=path))
                   for _ in range(self.count)]

  @staticmethod
  def _send(proc, task):
    pickle.dump(task, proc.stdin, pickle.HIGHEST_PROTOCOL)
    proc.stdin.flush()

  def close(self):
    for proc in self._procs:  # they keep no state, so stopping them loses nothing
      proc.kill()
      proc.wait()
      proc.stdin.close()
      proc.stdout.close()
    self._procs = []


def serve():
  """A worker's loop: (fn, args, indices) in on stdin, [fn(*args, i), ...] out on stdout."""
  tasks, results = sys.stdin.buffer, sys.stdout.buffer
  sys.stdout = sys.stderr  # stray prints must not corrupt the results
  while True:
    try:
      fn, args, indices = pickle.load(tasks)
    except EOFError:
      return
    pickle.dump([fn(*args, i) for i in indices], results, pickle.HIGHEST_PROTOCOL)
    results.flush()


class GeneratedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose examples `Workers` compute while it prepares.

  Subclasses call `self.generate(fn, num, *args)` in `_generate_examples`; `fn` must be
  a module-level function (the workers unpickle it by name).
  """

  def download_and_prepare(self, *args, **kwargs):
    self._workers = Workers()
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      self._workers.close()

  def generate(self, fn, num: int, *args):
    """fn(*args, i) for i in range(num), in order, on the workers while preparing."""
    workers = getattr(self, '_workers', None) or Workers(count=1)
    return workers.map(fn, num, *args)


def png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, 1 or 3] array, without row filters.

  Several times faster than PIL or TFDS's TensorFlow encoder on these tiny
  noisy images, at about the same size.
  """
  height, width, channels = array.shape
  rows = np.concatenate([np.zeros((height, 1), np.uint8), array.reshape(height, -1)], 1)
  chunk = lambda tag, data: (struct.pack('>I', len(data)) + tag + data +
                             struct.pack('>I', zlib.crc32(tag + data)))
  header = struct.pack('>IIBBBBB', width, height, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(rows.tobytes(), 6)) + chunk(b'IEND', b''))
