r"""The lecture tour: every method trained briefly, in lecture order, and one report.

    python -m vision_jax.tour --workdir runs/tour [--only cnn,captioning] \
        [--budget quick|full]

Each method is an ordinary experiment run in its own folder under the tour's
(`runs/tour/<method>`, with its config.json, metrics, checkpoints and figures), started
as `python -m vision_jax.train` in a child process. A method that finished is not run
again: an interrupted tour, started again, resumes the run it stopped in (from its last
checkpoint) and continues with the next. A method that fails is marked failed in the
report with its error and the tour goes on; it then exits with status 1. On a terminal
the top row shows the tour's own progress (the method, its step, the time elapsed and
left) above the runs' output and progress bars; elsewhere each method starts with a line
that says the same.

The quick budget (`make run`) trains each method for about a minute on 2 CPU cores; the
full budget runs the experiments' own recipes (hours on a CPU). The methods are listed in
`vision_jax/tour_methods.py`. The report is `<workdir>/index.html`, a static page that
opens from the file system.
"""

import argparse
import fcntl
import json
import os
import pty
import re
import select as select_module
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Callable, Sequence

from vision_jax import reporting
from vision_jax import tour_methods
from vision_jax import tour_report
from vision_jax.tour_methods import Method

BUDGETS = ('quick', 'full', 'smoke')
STATE_FILE = tour_methods.STATE_FILE
RESULT_FILE = tour_methods.RESULT_FILE
LOG_FILE = tour_methods.LOG_FILE
_STEP = re.compile(rb'step \d+/\d+')  # a run's progress, as `reporting.Progress` prints it


class TourError(ValueError):
  """A tour that cannot start: an unknown method, a folder holding another budget."""


def select(only: str | None, methods: Sequence[Method] = tour_methods.METHODS
           ) -> list[Method]:
  """The methods named by `--only` (keys or groups), with the earlier ones they use."""
  if not only:
    return list(methods)
  by_key = {m.key: m for m in methods}
  names = [name.strip() for name in only.split(',') if name.strip()]
  wanted = set()
  for name in names:
    matched = {m.key for m in methods if name in (m.key, m.group)}
    if not matched:
      groups = dict.fromkeys(m.group for m in methods)
      raise TourError(f'--only: no method or group {name!r}; methods: {", ".join(by_key)}; '
                      f'groups: {", ".join(groups)}')
    wanted |= matched
  pending = list(wanted)
  while pending:  # Methods a chosen one takes a workdir from.
    for key in by_key[pending.pop()].uses.values():
      if key not in wanted:
        wanted.add(key)
        pending.append(key)
  return [m for m in methods if m.key in wanted]


def expected_seconds(method: Method, budget: str) -> float:
  return {'quick': method.quick_seconds, 'full': 60 * method.full_minutes,
          'smoke': 15}[budget]


def _write_json(path: str, value: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)  # A crash never leaves half a file.


def _copy_window_size(fd: int, rows_taken: int) -> None:
  """Gives the child's terminal our width and our height less the pinned status line."""
  try:
    rows, cols, x, y = struct.unpack(
        'HHHH', fcntl.ioctl(sys.stderr.fileno(), termios.TIOCGWINSZ, b'\0' * 8))
    fcntl.ioctl(fd, termios.TIOCSWINSZ,
                struct.pack('HHHH', max(rows - rows_taken, 1), cols, x, y))
  except OSError:
    pass


class StatusLine:
  """The tour's progress, pinned to the top row of a terminal above the runs' output.

  The rows below scroll (a scroll region), so each run's own progress bar redraws
  under it as usual; on anything but a terminal it does nothing.
  """

  def __init__(self, stream):
    self.stream = stream
    try:  # A terminal of a few rows at least (a pseudo-terminal may report none).
      self.enabled = stream.isatty() and os.get_terminal_size(stream.fileno()).lines >= 4
    except (AttributeError, OSError, ValueError):
      self.enabled = False
    self.text = ''

  def __enter__(self):
    if self.enabled:
      rows = os.get_terminal_size(self.stream.fileno()).lines
      # Scroll rows 2.. only, and start writing at the bottom.
      self.stream.write(f'\n\x1b[2;{rows}r\x1b[{rows};1H')
      self.stream.flush()
    return self

  def show(self, text: str) -> None:
    if not self.enabled or text == self.text:
      return
    self.text = text
    cols = os.get_terminal_size(self.stream.fileno()).columns
    # Save the cursor, write row 1 in reverse video, restore the cursor.
    self.stream.write(f'\x1b7\x1b[1;1H\x1b[7m{text[:cols]}\x1b[K\x1b[0m\x1b8')
    self.stream.flush()

  def __exit__(self, *exc):
    if self.enabled:
      self.stream.write('\x1b7\x1b[1;1H\x1b[K\x1b8\x1b[r')  # Clear it; scroll everything.
      rows = os.get_terminal_size(self.stream.fileno()).lines
      self.stream.write(f'\x1b[{rows};1H\n')
      self.stream.flush()


def run_logged(args: list[str], log_path: str,
               on_progress: Callable[[str], None] | None = None) -> tuple[int, str]:
  """Runs `args`, showing its output live and appending it to `log_path`.

  On a terminal the child gets a pseudo-terminal of its own, so that its progress bar
  redraws in place as when it is run by hand. `on_progress` is called with the child's
  latest 'step N/M' (or '' before its first) about once a second. Returns the exit
  status and the last error line the child printed ('' when none).
  """
  interactive = sys.stderr.isatty()
  if interactive:
    read_fd, child_fd = pty.openpty()
    _copy_window_size(child_fd, rows_taken=1)
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=child_fd,
                               stderr=child_fd, close_fds=True)
    os.close(child_fd)
  else:
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    read_fd = process.stdout.fileno()
  tail, step = b'', ''
  try:
    with open(log_path, 'ab') as log:
      while True:
        ready, _, _ = select_module.select([read_fd], [], [], 1.0)
        if ready:
          try:
            chunk = os.read(read_fd, 65536)
          except OSError:  # EIO: the child closed its pseudo-terminal.
            chunk = b''
          if not chunk:
            break
          sys.stderr.buffer.write(chunk)
          sys.stderr.flush()
          log.write(chunk)
          log.flush()  # A crash of the tour itself still leaves the run's output.
          tail = (tail + chunk)[-20000:]
          steps = _STEP.findall(chunk)
          step = steps[-1].decode() if steps else step
        if on_progress:
          on_progress(step)
    status = process.wait()
  except KeyboardInterrupt:
    process.send_signal(signal.SIGTERM)  # The trainer checkpoints and exits.
    process.wait()
    raise
  finally:
    if interactive:
      os.close(read_fd)
  return status, _last_error(tail.decode('utf-8', 'replace'))


def _last_error(output: str) -> str:
  """The line that says what went wrong: `error: ...` or a traceback's last line."""
  lines = [line.strip() for line in output.replace('\r', '\n').splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith('error:'):
      return line[len('error:'):].strip()
  for i, line in enumerate(lines):
    if line.startswith('Traceback'):
      return next((l for l in reversed(lines[i:]) if not l.startswith(('File ', '^'))),
                  line)
  return lines[-1] if lines else ''


def _check_budget(workdir: str, budget: str) -> None:
  state = tour_report.read_json(os.path.join(workdir, STATE_FILE))
  if state and state.get('budget') != budget:
    raise TourError(f'{workdir} holds a tour with the {state.get("budget")} budget; '
                    f'give the {budget} budget another --workdir (nothing was changed)')
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, STATE_FILE), {'budget': budget})


def run_tour(workdir: str, budget: str = 'quick', *, only: str | None = None,
             methods: Sequence[Method] = tour_methods.METHODS,
             stream=sys.stderr) -> int:
  """Runs the selected methods that have not finished, writes the report; 0 if all ran."""
  if budget not in BUDGETS:
    raise TourError(f'--budget must be one of {", ".join(BUDGETS)}, got {budget!r}')
  chosen = select(only, methods)
  workdir = os.path.abspath(workdir)
  _check_budget(workdir, budget)

  def say(text: str) -> None:
    stream.write(text + '\n')
    stream.flush()

  def done_earlier(method):
    result = tour_report.read_json(os.path.join(workdir, method.key, RESULT_FILE))
    return bool(result and result.get('status') == 'done')

  todo = [m for m in chosen if not done_earlier(m)]
  expected = sum(expected_seconds(m, budget) for m in todo)
  say(f'The lecture tour, {budget} budget, in {workdir}: {len(chosen)} methods, '
      f'{len(chosen) - len(todo)} done earlier; about {reporting.duration(expected)} '
      'on 2 CPU cores (and a few minutes more the first time, to generate the embedded '
      'datasets).')
  for i, method in enumerate(chosen, 1):
    state = ('done earlier' if method not in todo
             else '~' + reporting.duration(expected_seconds(method, budget)))
    say(f'  {i:2d}. {method.key:<22s} {method.title}  ({state})')

  start = time.time()
  spent_expected = 0.0
  with StatusLine(stream) as status:
    for index, method in enumerate(todo, 1):
      run_dir = os.path.join(workdir, method.key)
      os.makedirs(run_dir, exist_ok=True)
      method_start = time.time()

      def time_left(now, method=method, method_start=method_start):
        # What remains at the pace the tour has kept against its estimates so far.
        done_seconds = method_start - start
        pace = done_seconds / spent_expected if spent_expected > 0 else 1.0
        this = max(expected_seconds(method, budget) * pace - (now - method_start), 0.0)
        return this + (expected - spent_expected - expected_seconds(method, budget)) * pace

      def progress(step, index=index, method=method):
        now = time.time()
        status.show(f' tour {index}/{len(todo)}: {method.key} | {step or "starting"} | '
                    f'{reporting.duration(now - start)} elapsed, about '
                    f'{reporting.duration(time_left(now))} left')

      say(f'\n=== tour {index}/{len(todo)}: {method.title} [{method.key}] | '
          f'{reporting.duration(method_start - start)} elapsed, about '
          f'{reporting.duration(time_left(method_start))} left ===')
      args = tour_methods.command(method, budget, workdir)
      code, error = run_logged(args, os.path.join(run_dir, LOG_FILE), progress)
      seconds = time.time() - method_start
      spent_expected += expected_seconds(method, budget)
      result = {'status': 'failed' if code else 'done', 'seconds': seconds,
                'budget': budget, 'command': args[1:] if not method.script else args}
      if code:
        result['error'] = error or f'exit status {code}'
        say(f'--- {method.key} FAILED after {reporting.duration(seconds)}: {result["error"]}')
      else:
        say(f'--- {method.key} done in {reporting.duration(seconds)}')
      _write_json(os.path.join(run_dir, RESULT_FILE), result)

  report = tour_report.write_report(workdir, chosen, budget)
  failed = [m.key for m in chosen if not done_earlier(m)]
  say(f'\nThe report: {report}' + (f'\nFailed: {", ".join(failed)}' if failed else ''))
  return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.tour',
                                   description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='runs/tour', help='the tour\'s folder')
  parser.add_argument('--only', default=None,
                      help='comma-separated methods or groups: ' + ', '.join(
                          dict.fromkeys([m.key for m in tour_methods.METHODS]
                                        + list(tour_methods.GROUPS))))
  parser.add_argument('--budget', default='quick', choices=BUDGETS,
                      help='quick: a minute or two per method; full: the recipes; '
                           'smoke: seconds each (tests)')
  args = parser.parse_args(argv)
  try:
    return run_tour(args.workdir, args.budget, only=args.only)
  except TourError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('\ninterrupted: run the same command again to continue where the tour stopped',
          file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
