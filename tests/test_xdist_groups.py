"""`make test`'s `--dist loadgroup` really keeps each group on one worker."""

import pytest

pytestmark = pytest.mark.xdist_group('test_xdist_groups')


def test_the_group_reaches_the_scheduler(request):
  """pytest-xdist tells the scheduler a test's group by suffixing its node id with
  '@<group>'; with a pytest that ignores the suffix, module fixtures that train are
  built again on every worker, and nothing else says so."""
  if not request.config.getvalue('loadgroup'):
    pytest.skip('not run with --dist loadgroup')
  assert request.node.nodeid.endswith('@test_xdist_groups'), request.node.nodeid
