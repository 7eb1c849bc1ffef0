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


def duration(seconds: float) -> str:
  """'MM:SS', or 'H:MM:SS' from an hour on; '?' when unknown."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return (f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
          if seconds >= 3600 else f'{seconds // 60:02d}:{seconds % 60:02d}')


class Progress:
  """A progress bar redrawn every step on a terminal; plain lines at log steps otherwise.

  Redraws read no device values: they show the loss of the last log step.
  """

  def __init__(self, total_steps: int, start_step: int, examples_per_step: int, *,
               enabled: bool = True, stream: TextIO = sys.stderr, redraw_seconds: float = 0.2):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.enabled = enabled
    self.stream = stream
    self.interactive = enabled and stream.isatty()
    self.redraw_seconds = redraw_seconds
    self._last_step, self._last_time = start_step, time.time()
    self._last_draw = 0.0
    self._rate = float('nan')
    self._metrics: Mapping[str, float] = {}

  def log(self, step: int, metrics: Mapping[str, float]) -> float:
    """Shows `metrics` at a log step; returns the examples/s since the previous log step."""
    now = time.time()
    if step > self._last_step:
      self._rate = ((step - self._last_step) * self.examples_per_step
                    / max(now - self._last_time, 1e-9))
      self._last_step, self._last_time = step, now
    self._metrics = metrics
    if self.enabled and not self.interactive:
      self.stream.write(self._text(step) + '\n')
      self.stream.flush()
    self.tick(step, force=True)
    return self._rate

  def tick(self, step: int, force: bool = False) -> None:
    """Redraws the bar on a terminal, at most every `redraw_seconds`."""
    now = time.time()
    if not self.interactive or (not force and now - self._last_draw < self.redraw_seconds):
      return
    self._last_draw = now
    if step > self._last_step:  # Between log steps: the running rate since the last one.
      rate = (step - self._last_step) * self.examples_per_step / max(now - self._last_time, 1e-9)
    else:
      rate = self._rate
    done = int(30 * step / max(self.total_steps, 1))
    self.stream.write(f'\r[{"#" * done}{"." * (30 - done)}] {self._text(step, rate)}\x1b[K')
    self.stream.flush()

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (an evaluation, say) out of the training throughput."""
    self._last_time += seconds

  def _text(self, step: int, rate: float | None = None) -> str:
    rate = self._rate if rate is None else rate
    eta = (self.total_steps - step) * self.examples_per_step / rate if rate > 0 else math.nan
    fields = ' '.join(f'{k.split("/")[-1]}={v:.4g}' for k, v in self._metrics.items())
    return (f'step {step}/{self.total_steps} | {rate:,.0f} ex/s | ETA {duration(eta)}'
            + (f' | {fields}' if fields else ''))

  def message(self, text: str) -> None:
    if self.enabled:
      self.stream.write(('\n' if self.interactive else '') + text + '\n')
      self.stream.flush()
