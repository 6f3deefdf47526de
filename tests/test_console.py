"""What the console shows: log lines without absl's prefix, sensible precision, no orbax notices."""

import logging as py_logging
import os
import re
import subprocess
import sys
from unittest import mock

from absl import logging
from absl.testing import absltest
import numpy as np

from alexnet_jax.core import cli
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import metric_log
from tests import trained_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\] ')


def record(level: int, msg: str, pathname: str = '/x/alexnet_jax/train.py') -> py_logging.LogRecord:
  return py_logging.LogRecord('absl', level, pathname, 1, msg, (), None)


class FormatterTest(absltest.TestCase):

  def test_message_alone_and_warnings_named(self):
    formatter = cli.ConsoleFormatter()
    self.assertEqual(formatter.format(record(py_logging.INFO, 'Training 4 steps')),
                     'Training 4 steps')
    self.assertEqual(formatter.format(record(py_logging.WARNING, 'Took over the lock')),
                     'WARNING: Took over the lock')
    self.assertEqual(formatter.format(record(py_logging.ERROR, 'The lock was taken')),
                     'ERROR: The lock was taken')

  def test_installed_on_absl_handler_unless_the_prefix_is_asked_for(self):
    handler = logging.get_absl_handler()
    before = handler.python_handler.formatter
    self.addCleanup(handler.setFormatter, before)
    with mock.patch.dict(os.environ, {cli.LOG_PREFIX_ENV: '1'}):
      cli.plain_console_logs()
    self.assertIs(handler.python_handler.formatter, before)
    with mock.patch.dict(os.environ, {cli.LOG_PREFIX_ENV: ''}):
      cli.plain_console_logs()
    self.assertIsInstance(handler.python_handler.formatter, cli.ConsoleFormatter)


class PrecisionTest(absltest.TestCase):

  def test_lr_and_rates(self):
    self.assertEqual(metric_log.format_lr(np.float32(0.01)), '0.01')
    self.assertEqual(metric_log.format_lr(float(np.float32(0.01))), '0.01')  # 0.0100000007...
    self.assertEqual(metric_log.format_lr(np.float32(1e-5)), '1e-05')
    self.assertEqual(metric_log.format_rate(1234.56), '1,235')
    self.assertEqual(metric_log.format_rate(70.7408), '70.7')
    reporter = metric_log.ProgressReporter(10, enabled=True, progress_bar=False)
    line = reporter.train_line(2, {'loss': 2.5, 'lr': float(np.float32(0.001)),
                                   'images_per_sec': 31234.7})
    self.assertIn('lr 0.001, 31,235 img/s', line)


class OrbaxNoticeTest(absltest.TestCase):

  def test_read_only_reader_says_nothing(self):
    """A read-only Checkpointer (predict, evaluate) opened under the console's filter."""
    seen = []
    handler = py_logging.Handler()
    handler.emit = seen.append
    handler.addFilter(cli._QuietLibraries())  # pylint: disable=protected-access
    logger = py_logging.getLogger('absl')
    logger.addHandler(handler)
    self.addCleanup(logger.removeHandler, handler)
    unfiltered = []
    plain = py_logging.Handler()
    plain.emit = unfiltered.append
    logger.addHandler(plain)
    self.addCleanup(logger.removeHandler, plain)
    directory = os.path.join(trained_run.workdir(), 'checkpoints')
    with checkpointing.Checkpointer(directory, read_only=True) as ckpt:
      self.assertTrue(ckpt.all_steps())
    said = lambda records: [r.getMessage() for r in records if 'read only' in r.getMessage()]
    self.assertNotEmpty(said(unfiltered))  # orbax does say it
    self.assertEqual(said(seen), [])
    other = record(py_logging.WARNING, 'a real problem', '/site-packages/orbax/checkpoint/x.py')
    self.assertTrue(cli._QuietLibraries().filter(other))  # pylint: disable=protected-access


class CommandConsoleTest(absltest.TestCase):
  """launch.py's own log line, as a user sees it and with ALEXNET_JAX_LOG_PREFIX=1."""

  def run_launch(self, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # so launch.py adds its own
    proc = subprocess.run(
        [sys.executable, 'launch.py', '--config=configs/digits.py', '--print_config'],
        cwd=REPO, env=dict(base, JAX_PLATFORMS='cpu', PYTHONPATH=REPO, **env),
        capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc.stderr

  def test_log_lines_without_and_with_absl_prefix(self):
    plain = self.run_launch(ALEXNET_JAX_LOG_PREFIX='')
    self.assertIn('XLA:CPU options added to XLA_FLAGS', plain)
    self.assertEqual([l for l in plain.splitlines() if ABSL_PREFIX.match(l)], [])
    prefixed = self.run_launch(ALEXNET_JAX_LOG_PREFIX='1')
    line = next(l for l in prefixed.splitlines() if 'XLA:CPU options added' in l)
    self.assertRegex(line, ABSL_PREFIX)


if __name__ == '__main__':
  absltest.main()
