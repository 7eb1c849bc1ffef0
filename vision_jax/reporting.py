"""What a run tells its user: metrics.jsonl, TensorBoard events and a progress line.

Only process 0 writes; the others get writers that do nothing.
"""

import json
import math
import os
import sys
import time
from typing import Mapping, TextIO

import numpy as np


class MetricWriter:
  """Appends `{"step": N, "train/loss": ...}` lines to metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled or not metrics:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    with self._summary.as_default(step=int(step)):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value)
    self._summary.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """An HxWx3 uint8 image (a figure) into TensorBoard."""
    if not self.enabled:
      return
    with self._summary.as_default(step=int(step)):
      self._tf.summary.image(name, image[None])
    self._summary.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._summary.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return (f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
          if seconds >= 3600 else f'{seconds // 60:02d}:{seconds % 60:02d}')


class Progress:
  """A redrawn progress bar on a terminal; plain periodic lines otherwise (logs, CI)."""

  def __init__(self, total_steps: int, start_step: int, *, enabled: bool = True,
               stream: TextIO = sys.stderr):
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream
    self.interactive = enabled and stream.isatty()
    self._last_step, self._last_time = start_step, time.time()
    self._rate = float('nan')

  def update(self, step: int, examples_per_step: int, metrics: Mapping[str, float],
             force_line: bool = False) -> float:
    """Redraws (or prints) the state at `step`; returns examples/s since the last call."""
    now = time.time()
    if step > self._last_step:
      self._rate = (step - self._last_step) * examples_per_step / max(now - self._last_time, 1e-9)
      self._last_step, self._last_time = step, now
    if not self.enabled:
      return self._rate
    eta = (self.total_steps - step) * examples_per_step / self._rate if self._rate > 0 else math.nan
    fields = ' '.join(f'{k.split("/")[-1]}={v:.4g}' for k, v in metrics.items())
    text = (f'step {step}/{self.total_steps} | {self._rate:,.0f} ex/s | '
            f'ETA {_duration(eta)} | {fields}')
    if self.interactive:
      done = int(30 * step / max(self.total_steps, 1))
      self.stream.write(f'\r[{"#" * done}{"." * (30 - done)}] {text}\x1b[K')
      if force_line:
        self.stream.write('\n')
    else:
      self.stream.write(text + '\n')
    self.stream.flush()
    return self._rate

  def message(self, text: str) -> None:
    if self.enabled:
      self.stream.write(('\n' if self.interactive else '') + text + '\n')
      self.stream.flush()
