"""Train metrics after a restore equal an uninterrupted run's, bitwise, whatever the cadences.

Log windows of 3 steps against saves every 2 steps: most checkpoints fall inside a log
window, so the first train line after a restore covers steps from before it. The run is
stopped as `kill -9` leaves it: the checkpoints after step k gone (never written), the
metric log running past k (the resume cuts it back); and by a SIGTERM, whose save comes at
the step it stops at. Each resume runs to the end, and its metrics.jsonl must equal the
uninterrupted run's line for line, images/s aside.
"""

import json
import os
import shutil
import signal
import tempfile
from unittest import mock

from absl.testing import absltest

from alexnet_jax.storage import checkpointing
from alexnet_jax.training import stop_signals
from alexnet_jax.training import trainer
from tests import trained_run

STEPS = 13  # log lines at 3, 6, 9, 12 and the last step; saves at every even step
RESTORE_AT = (4, 8)  # inside the windows 4-6 and 7-9: one and two steps carried over
SIGTERM_AT = 5  # a stop off the save cadence, two steps into the window 4-6


def config(data_dir: str):
  c = trained_run.tiny_config(data_dir)
  c.num_train_steps = STEPS
  c.log.every_steps = 3
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 100  # every save stays, so any of them can be the newest one
  return c


def metric_lines(workdir: str) -> list[dict]:
  """metrics.jsonl without images_per_sec and time, the fields a wall clock decides."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for record in records:
    record.pop('images_per_sec', None)
    record.pop('time', None)
  return records


def stop_after(workdir: str, step: int) -> None:
  """The workdir as a run killed after its checkpoint of `step` finished leaves it."""
  folder = os.path.join(workdir, 'checkpoints')
  for later in checkpointing.finished_steps(workdir):
    if later > step:
      shutil.rmtree(os.path.join(folder, str(later)))


class MetricsAcrossResumesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='metrics_across_resumes_')
    cls.config = config(os.path.join(cls.root, 'data'))
    cls.reference = os.path.join(cls.root, 'reference')
    trainer.train_and_evaluate(cls.config, cls.reference)
    cls.want = metric_lines(cls.reference)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_the_reference_has_windows_straddling_saves(self):
    self.assertEqual([r['step'] for r in self.want if r['kind'] == 'train'],
                     [3, 6, 9, 12, STEPS])
    self.assertEqual(checkpointing.finished_steps(self.reference), [2, 4, 6, 8, 10, 12, STEPS])

  def test_restores_inside_a_window_change_no_line(self):
    resumed = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(self.reference, resumed)
    for step in RESTORE_AT:  # the second restore is of a checkpoint the first resume wrote
      stop_after(resumed, step)
      trainer.train_and_evaluate(self.config, resumed)
      self.assertEqual(metric_lines(resumed), self.want, f'after a restore at step {step}')

  def test_sigterm_inside_a_window_changes_no_line(self):
    # SIGTERM saves the step it stops at: off the save cadence, inside the log window 4-6.
    real = stop_signals.PreemptionWatcher.requested

    def requested(watcher, step=None):
      if step == SIGTERM_AT:
        os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler takes it
      return real(watcher, step)

    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    with mock.patch.object(stop_signals.PreemptionWatcher, 'requested', requested):
      trainer.train_and_evaluate(self.config, workdir)
    self.assertEqual(checkpointing.finished_steps(workdir)[-1], SIGTERM_AT)
    trainer.train_and_evaluate(self.config, workdir)
    self.assertEqual(metric_lines(workdir), self.want)


if __name__ == '__main__':
  absltest.main()
