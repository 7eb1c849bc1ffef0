"""The lecture tour: selection, commands, resume, failures and the report in a browser."""

import dataclasses
import fcntl
import html.parser
import io
import json
import os
import pty
import struct
import termios

import pytest

from vision_jax import config_lib
from vision_jax import tour
from vision_jax import tour_methods
from vision_jax import tour_report

BY_KEY = {m.key: m for m in tour_methods.METHODS}


def test_methods_in_lecture_order_with_unique_keys():
  keys = [m.key for m in tour_methods.METHODS]
  assert len(set(keys)) == len(keys)
  groups = list(tour_methods.GROUPS)
  assert groups[:4] == ['filters', 'naive_bayes', 'cnn', 'resnet']
  assert groups[-2:] == ['clip', 'text_to_image']
  for method in tour_methods.METHODS:  # every config and figure a method names exists
    assert os.path.isfile(method.config.partition(':')[0]), method.config
    for key in method.uses.values():  # a method uses only earlier ones
      assert keys.index(key) < keys.index(method.key)


def test_select_by_key_group_and_dependencies():
  assert [m.key for m in tour.select('captioning')] == [
      'caption_rnn', 'caption_attention', 'caption_transformer', 'caption_vit']
  # DALL-E's prior needs its VQ-VAE, the judge and the CLIP run: they come along, in order.
  assert [m.key for m in tour.select('dalle_prior,cnn')] == [
      'cnn', 'clip', 'judge', 'dalle_vqvae', 'dalle_prior']
  with pytest.raises(tour.TourError, match="no method or group 'captoning'"):
    tour.select('captoning')


def test_commands_per_budget():
  method = BY_KEY['dalle_prior']
  quick = tour_methods.command(method, 'quick', '/w', python='py')
  assert quick[:6] == ['py', '-m', 'vision_jax.train', '--config',
                       'experiments/vision_language/dalle_scenes.py:stage=prior', '--workdir']
  assert quick[6] == '/w/dalle_prior'
  assert '--config.total_steps=300' in quick and '--config.schedule.warmup_steps=30' in quick
  assert '--config.dalle.vqvae_workdir=/w/dalle_vqvae' in quick
  assert '--config.evals.text_to_image.classifier_workdir=/w/judge' in quick
  smoke = tour_methods.command(method, 'smoke', '/w', python='py')
  assert smoke[4].endswith(':stage=prior,local') and '--config.total_steps=300' not in smoke
  assert tour_methods.command(BY_KEY['cnn'], 'smoke', '/w')[4].endswith('cnn_digits.py:local')
  resnet = tour_methods.command(BY_KEY['resnet'], 'quick', '/w')
  assert '--config.schedule.boundaries_steps=(200, 260)' in resnet
  assert tour_methods.reproduce_command(BY_KEY['cnn']) == (
      'python -m vision_jax.train --config experiments/classification/cnn_digits.py '
      '--workdir runs/cnn')


@pytest.mark.parametrize('budget', ['quick', 'full', 'smoke'])
def test_every_command_is_a_config_the_trainer_accepts(budget):
  for method in tour_methods.METHODS:
    if method.script:
      continue
    args = tour_methods.command(method, budget, '/w')
    parser = config_lib.command_line_parser('test', 'doc')
    parser.add_argument('--workdir')
    _, config = config_lib.parse_command_line(parser, args[3:])
    if budget == 'quick':  # the warm-up fits in the run
      warmup = config.get('schedule', {}).get('warmup_steps')
      assert warmup is None or warmup < config.total_steps, method.key


def test_goal_verdicts():
  assert tour_methods.Goal('a', 'a', 0.9).met(0.95)
  assert tour_methods.Goal('a', 'a', 0.9).met(0.8999999761581421)  # float32(0.9)
  assert not tour_methods.Goal('a', 'a', 0.9).met(0.85)
  assert tour_methods.Goal('a', 'a', 100, higher_is_better=False).met(90)
  assert tour_methods.Goal('a', 'a').met(0.5) is None


def test_last_error_line():
  assert tour._last_error('step 3\nerror: dataset foo not found\n') == 'dataset foo not found'
  traceback = ('Traceback (most recent call last):\n  File "x.py", line 1\n    f()\n'
               'ValueError: bad shape\n')
  assert tour._last_error(traceback) == 'ValueError: bad shape'


def test_status_line_is_pinned_above_a_terminals_scrolling_rows():
  parent, child = pty.openpty()
  fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack('HHHH', 10, 40, 0, 0))
  with open(child, 'w', closefd=False) as stream:
    with tour.StatusLine(stream) as status:
      status.show('tour 1/2: cnn | step 5/20')
      status.show('tour 1/2: cnn | step 5/20')  # unchanged: not redrawn
  written = os.read(parent, 10_000).decode()
  os.close(parent)
  os.close(child)
  assert '\x1b[2;10r' in written  # rows 2 to 10 scroll, row 1 stays
  assert written.count('\x1b[1;1H\x1b[7mtour 1/2: cnn | step 5/20') == 1
  assert written.rstrip().endswith('\x1b[r\x1b[10;1H')  # scrolling restored at the end
  quiet = io.StringIO()
  with tour.StatusLine(quiet) as status:  # not a terminal: nothing
    status.show('tour 1/2')
  assert quiet.getvalue() == ''


class _Page(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.sections, self.images, self.links = [], [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'section':
      self.sections.append(attrs['id'])
    elif tag == 'img':
      self.images.append(attrs['src'])
    elif tag == 'a':
      self.links.append(attrs['href'])


@pytest.fixture(scope='module')
def smoke_tour(tmp_path_factory):
  """A two-method tour on the smoke budget, run twice; the second run must train nothing."""
  workdir = str(tmp_path_factory.mktemp('tour'))
  first = io.StringIO()
  assert tour.run_tour(workdir, 'smoke', only='filters,naive_bayes', stream=first) == 0
  result = os.path.join(workdir, 'naive_bayes', tour_methods.RESULT_FILE)
  stamp = os.stat(result).st_mtime_ns
  second = io.StringIO()
  assert tour.run_tour(workdir, 'smoke', only='filters,naive_bayes', stream=second) == 0
  return workdir, first.getvalue(), second.getvalue(), stamp


def test_tour_runs_reports_and_resumes(smoke_tour):
  workdir, first, second, stamp = smoke_tour
  assert 'tour 2/2: Naive Bayes' in first and 'naive_bayes done in' in first
  # The second start finds both methods done and runs nothing.
  assert '2 done earlier' in second and '=== tour' not in second
  assert os.stat(os.path.join(workdir, 'naive_bayes', tour_methods.RESULT_FILE)
                 ).st_mtime_ns == stamp
  assert os.path.exists(os.path.join(workdir, 'naive_bayes', 'config.json'))

  page = _Page()
  with open(os.path.join(workdir, 'index.html'), encoding='utf-8') as f:
    text = f.read()
  page.feed(text)
  assert page.sections == ['filters', 'naive_bayes']
  assert page.images == ['filters/filters_chelsea.png', 'filters/filters_1d.png',
                         'naive_bayes/naive_bayes/class_pixel_probabilities.png',
                         'naive_bayes/eval/predictions.png']
  for src in page.images + [l for l in page.links if not l.startswith('#')]:
    assert os.path.exists(os.path.join(workdir, src)), src
  assert '#naive_bayes' in page.links  # the summary links to the sections
  accuracy = tour_report.final_metrics(os.path.join(workdir, 'naive_bayes'))['eval/accuracy']
  assert f'<td class="num">{accuracy:.3f}</td>' in text
  assert 'nb_digits.py --workdir runs/naive_bayes' in text  # the full recipe's command


def test_report_renders_in_headless_chromium(smoke_tour, tmp_path):
  if tour_report.find_browser() is None:
    pytest.skip('no Chromium here (Debian package chromium)')
  workdir = smoke_tour[0]
  screenshot = str(tmp_path / 'top.png')
  assert tour_report.check_in_browser(os.path.join(workdir, 'index.html'),
                                      ['filters', 'naive_bayes'], screenshot=screenshot) == []
  assert os.path.getsize(screenshot) > 10_000
  # A missing figure is caught.
  os.rename(os.path.join(workdir, 'filters', 'filters_1d.png'), str(tmp_path / 'moved.png'))
  try:
    problems = tour_report.check_in_browser(os.path.join(workdir, 'index.html'),
                                            ['filters', 'naive_bayes', 'cnn'])
  finally:
    os.rename(str(tmp_path / 'moved.png'), os.path.join(workdir, 'filters', 'filters_1d.png'))
  assert problems == ['image did not load: filters/filters_1d.png', 'section missing: cnn']


def test_a_failed_method_does_not_stop_the_tour(tmp_path):
  broken = dataclasses.replace(BY_KEY['cnn'], key='broken', group='broken',
                               config='experiments/classification/no_such_experiment.py')
  methods = (broken, BY_KEY['filters'])
  out = io.StringIO()
  assert tour.run_tour(str(tmp_path), 'smoke', methods=methods, stream=out) == 1
  result = json.load(open(tmp_path / 'broken' / tour_methods.RESULT_FILE))
  assert result['status'] == 'failed'
  assert 'config file not found' in result['error']
  assert json.load(open(tmp_path / 'filters' / tour_methods.RESULT_FILE))['status'] == 'done'
  text = (tmp_path / 'index.html').read_text()
  assert 'Failed: config file not found' in text and 'Failed: broken' in out.getvalue()


def test_another_budget_is_refused_and_nothing_changes(tmp_path):
  (tmp_path / tour_methods.STATE_FILE).write_text(json.dumps({'budget': 'quick'}))
  with pytest.raises(tour.TourError, match='holds a tour with the quick budget'):
    tour.run_tour(str(tmp_path), 'smoke', only='filters')
  assert sorted(os.listdir(tmp_path)) == [tour_methods.STATE_FILE]
