"""The tour's report: one static HTML page, and its check in a headless browser.

    python -m vision_jax.tour_report --workdir runs/tour [--screenshot top.png]

rewrites `runs/tour/index.html` from what the runs left and checks it in headless
Chromium (the Debian package `chromium`): every section present, every image loaded.
The page links the figures where the runs wrote them (beside it), needs no network and
opens from the file system.
"""

import argparse
import html
import html.parser
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Sequence

from vision_jax import reporting
from vision_jax import tour_methods
from vision_jax.tour_methods import Goal, Method

REPORT = 'index.html'
_BUDGET_NOTE = {
    'quick': ('; the quick budget trains each method for a minute or two, so <span '
              'class="short">short</span> says how far that gets, not that the recipe '
              'misses its goal'),
    'smoke': '; the smoke budget runs each experiment\'s seconds-long local mode',
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-top: 1px solid #ccc;
       padding-top: 1rem; }
table { border-collapse: collapse; margin: 0.8rem 0; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pass { color: #17702a; font-weight: 600; } .short { color: #a35a00; font-weight: 600; }
.failed { color: #b00020; font-weight: 600; }
figure { display: inline-block; margin: 0.5rem 1rem 0.5rem 0; vertical-align: top; }
figure img { max-width: 100%; max-height: 34rem; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
code { background: #f5f5f5; padding: 0.1rem 0.3rem; font-size: 0.85rem; word-break: break-all; }
.note { color: #555; }
"""

# Marks the page once it has loaded, so a headless browser's DOM says what loaded.
_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken',
      broken.map(function (i) { return i.getAttribute('src'); }).join(' '));
  document.body.setAttribute('data-checked', 'yes');
});
"""


def read_json(path: str) -> dict | None:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def final_metrics(run_dir: str) -> dict[str, float]:
  """The last value of every metric in the run's metrics.jsonl."""
  values = {}
  try:
    with open(os.path.join(run_dir, 'metrics.jsonl'), encoding='utf-8') as f:
      for line in f:
        try:
          values.update(json.loads(line))
        except ValueError:
          continue  # A line cut short by a crash.
  except OSError:
    pass
  values.pop('step', None)
  return values


def _number(value: float | None) -> str:
  if value is None or not math.isfinite(value):
    return '–'
  return f'{value:.3f}' if abs(value) < 100 else f'{value:.1f}'


def _goal_text(goal: Goal) -> str:
  if goal.target is None:
    return '–'
  return ('≥ ' if goal.higher_is_better else '≤ ') + _number(goal.target)


def _verdict(goal: Goal, value: float | None) -> str:
  met = None if value is None else goal.met(value)
  return {True: '<span class="pass">pass</span>', False: '<span class="short">short</span>',
          None: '–'}[met]


def _seconds(seconds: float | None) -> str:
  return '–' if seconds is None else reporting.duration(seconds)


def _summary_goals(method: Method, metrics: dict) -> list[tuple[Goal | None, float | None]]:
  """(goal, value) rows of the summary: the goals with targets, else the first goal."""
  goals = [g for g in method.goals if g.target is not None] or list(method.goals[:1])
  return [(goal, metrics.get(goal.metric)) for goal in goals] or [(None, None)]


def _status_cell(result: dict | None) -> str:
  if result is None:
    return '<span class="note">not run</span>'
  if result.get('status') != 'done':
    return '<span class="failed">failed</span>'
  return ''


def write_report(workdir: str, methods: Sequence[Method], budget: str) -> str:
  """Writes `workdir/index.html` for `methods` from their runs' files; returns its path."""
  results = {m.key: read_json(os.path.join(workdir, m.key, tour_methods.RESULT_FILE))
             for m in methods}
  metrics = {m.key: final_metrics(os.path.join(workdir, m.key)) for m in methods}
  esc = html.escape

  summary = []
  for method in methods:
    result = results[method.key]
    status = _status_cell(result)
    for i, (goal, value) in enumerate(_summary_goals(method, metrics[method.key])):
      first = i == 0
      summary.append(
          '<tr>'
          + (f'<td><a href="#{method.key}">{esc(method.title)}</a></td>' if first else '<td></td>')
          + (f'<td>{esc(goal.label)}</td><td class="num">{_number(value)}</td>'
             f'<td class="num">{_goal_text(goal)}</td>' if goal else '<td colspan="3">figures</td>')
          + (f'<td class="num">{_seconds((result or {}).get("seconds"))}</td>' if first
             else '<td></td>')
          + f'<td>{status or (_verdict(goal, value) if goal else "–")}</td></tr>')

  sections = []
  for method in methods:
    result, values = results[method.key], metrics[method.key]
    parts = [f'<section id="{method.key}"><h2>{esc(method.title)}</h2>',
             f'<p>{method.about}</p>']
    if result is None:
      parts.append('<p class="note">Not run yet.</p>')
    elif result.get('status') != 'done':
      parts.append(f'<p class="failed">Failed: {esc(result.get("error", ""))}</p>'
                   f'<p class="note">Its output: <a href="{method.key}/tour_log.txt">'
                   'tour_log.txt</a></p>')
    for figure in method.figures:
      path = os.path.join(workdir, method.key, figure)
      if os.path.exists(path):
        src = f'{esc(method.key)}/{esc(figure)}'
        parts.append(f'<figure><a href="{src}"><img src="{src}" alt="{esc(figure)}"></a>'
                     f'<figcaption>{esc(figure)}</figcaption></figure>')
      elif result and result.get('status') == 'done':
        parts.append(f'<p class="note">{esc(figure)} was not written.</p>')
    if method.goals:
      rows = ''.join(
          f'<tr><td>{esc(g.label)}</td><td class="num">{_number(values.get(g.metric))}</td>'
          f'<td class="num">{_goal_text(g)}</td><td>{_verdict(g, values.get(g.metric))}</td>'
          f'<td><code>{esc(g.metric)}</code></td></tr>' for g in method.goals)
      parts.append('<table><tr><th>metric</th><th>value</th><th>goal</th><th></th>'
                   f'<th>key in metrics.jsonl</th></tr>{rows}</table>')
    if result:
      parts.append(f'<p class="note">Ran in {_seconds(result.get("seconds"))} '
                   f'({esc(result.get("budget", budget))} budget); its files: '
                   f'<a href="{method.key}/">{method.key}/</a>.</p>')
    parts.append('<p>With the full budget: <code>'
                 f'{esc(tour_methods.reproduce_command(method))}</code></p></section>')
    sections.append('\n'.join(parts))

  total = sum((r or {}).get('seconds', 0.0) for r in results.values())
  done = sum(1 for r in results.values() if r and r.get('status') == 'done')
  failed = sum(1 for r in results.values() if r and r.get('status') != 'done')
  page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>vision_jax: the lecture tour</title><style>{_STYLE}</style>
<script>{_CHECK_SCRIPT}</script></head>
<body>
<h1>The lecture tour</h1>
<p class="note">{done} of {len(methods)} methods ran{f', {failed} failed' if failed else ''}
in {reporting.duration(total)} (min:s) on the <b>{esc(budget)}</b> budget. Goals are those
the experiments' docstrings state for their full recipes{_BUDGET_NOTE.get(budget, '')}.
Made by <code>python -m vision_jax.tour --budget {esc(budget)}</code>.</p>
<table id="summary"><tr><th>method</th><th>metric</th><th>value</th><th>goal</th>
<th>time</th><th></th></tr>
{''.join(summary)}
</table>
{''.join(sections)}
</body></html>
"""
  path = os.path.join(workdir, REPORT)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(page)
  os.replace(tmp, path)
  return path


def find_browser() -> str | None:
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  return None


class _BodyAndSections(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.body: dict[str, str] = {}
    self.sections: list[str] = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'body':
      self.body = {k: v or '' for k, v in attrs.items()}
    elif tag == 'section' and 'id' in attrs:
      self.sections.append(attrs['id'])


def _browser_args(browser: str) -> list[str]:
  return [browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
          '--allow-file-access-from-files', '--virtual-time-budget=15000']


def check_in_browser(report: str, expected_sections: Sequence[str], *,
                     screenshot: str | None = None, browser: str | None = None) -> list[str]:
  """Renders `report` in headless Chromium; returns the problems found (none: [])."""
  browser = browser or find_browser()
  if browser is None:
    return ['no Chromium here (install the Debian package chromium)']
  url = 'file://' + os.path.abspath(report)
  with tempfile.TemporaryDirectory() as profile:
    args = _browser_args(browser) + [f'--user-data-dir={profile}']
    dom = subprocess.run(args + ['--dump-dom', url], capture_output=True, text=True,
                         timeout=120)
    if screenshot:
      subprocess.run(args + [f'--screenshot={os.path.abspath(screenshot)}',
                             '--window-size=1280,1100', url],
                     capture_output=True, timeout=120, check=True)
  parser = _BodyAndSections()
  parser.feed(dom.stdout)
  problems = []
  if parser.body.get('data-checked') != 'yes':
    problems.append(f'the page did not finish loading in {browser} '
                    f'(exit status {dom.returncode}: {dom.stderr.strip()[-300:]})')
  broken = parser.body.get('data-broken', '').split()
  problems += [f'image did not load: {src}' for src in broken]
  problems += [f'section missing: {key}' for key in expected_sections
               if key not in parser.sections]
  return problems


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.tour_report',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', default='runs/tour')
  parser.add_argument('--screenshot', default=None, help='a PNG of the top of the page')
  args = parser.parse_args(argv)
  state = read_json(os.path.join(args.workdir, tour_methods.STATE_FILE))
  if state is None:
    print(f'error: {args.workdir} holds no tour ({tour_methods.STATE_FILE} is missing)',
          file=sys.stderr)
    return 2
  methods = [m for m in tour_methods.METHODS
             if os.path.exists(os.path.join(args.workdir, m.key, tour_methods.RESULT_FILE))]
  report = write_report(args.workdir, methods, state['budget'])
  problems = check_in_browser(report, [m.key for m in methods], screenshot=args.screenshot)
  for problem in problems:
    print(f'error: {problem}', file=sys.stderr)
  images = len([f for m in methods for f in m.figures
                if os.path.exists(os.path.join(args.workdir, m.key, f))])
  if not problems:
    print(f'{report}: {len(methods)} sections and {images} images loaded in headless Chromium')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
