"""Duration text, ETA and the one status line used by training and prepare."""

import io

from absl.testing import absltest

from alexnet_jax.core import progress
from tests.helpers.checks import FakeClock


class FormatTest(absltest.TestCase):

  def test_format_duration(self):
    self.assertEqual(progress.format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6), '3d 04:05:06')
    self.assertEqual(progress.format_duration(59.6), '00:01:00')
    self.assertEqual(progress.format_duration(None), '?')
    self.assertEqual(progress.format_duration(float('nan')), '?')
    self.assertEqual(progress.format_duration(-1.0), '?')

  def test_eta_is_the_remaining_work_at_the_pace_so_far(self):
    self.assertEqual(progress.eta_seconds(100, 800, 10.0), 80.0)
    self.assertIsNone(progress.eta_seconds(0, 800, 10.0))
    self.assertIsNone(progress.eta_seconds(100, 800, 0.0))

  def test_bar(self):
    self.assertEqual(progress.bar(0.5, 10), '[#####.....]')
    self.assertEqual(progress.bar(1.7, 4), '[####]')
    self.assertEqual(progress.bar(-1.0, 4), '[....]')


class StatusLineTest(absltest.TestCase):

  def test_redrawn_in_place_at_most_every_interval(self):
    stream, clock = io.StringIO(), FakeClock()
    line = progress.StatusLine(stream, min_interval=1.0, clock=clock)
    line.show('a')
    clock.now = 0.5
    line.show('b')  # Too soon: dropped.
    line.show('c', force=True)
    clock.now = 1.6
    line.show('d')
    line.close()
    self.assertEqual(stream.getvalue(), '\ra\rc\rd\n')

  def test_clear_erases_the_line_and_the_next_show_draws_at_once(self):
    stream = io.StringIO()
    line = progress.StatusLine(stream, min_interval=100.0, clock=FakeClock())
    line.show('abc')
    line.clear()
    line.show('x')
    line.clear()
    line.close()  # Nothing drawn any more: no newline.
    self.assertEqual(stream.getvalue(), '\rabc\r   \r\rx\r \r')

  def test_without_a_stream_lines_are_logged(self):
    clock = FakeClock()
    line = progress.StatusLine(None, min_interval=30.0, clock=clock)
    with self.assertLogs('absl', level='INFO') as logs:
      line.show('first')
      clock.now = 10.0
      line.show('dropped')
      line.show('last', force=True)
      line.close()
    self.assertEqual([r.getMessage() for r in logs.records], ['first', 'last'])


if __name__ == '__main__':
  absltest.main()
