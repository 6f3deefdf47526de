"""Where a run came from (WORKDIR/run_record.jsonl) and when each metrics.jsonl line was written.

A tiny run is started, stopped as if killed before its last checkpoint, and
resumed: the record gets a line per start and keeps the first; each metrics line
has a wall-clock `time`; float32 values are written at their shortest decimal.
The expected facts come from other sources than the code under test: git run
here, the packages' own `__version__`, JAX's device list, `socket`.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest
import flax
import grain
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from alexnet_jax.storage import run_record
from alexnet_jax.training import trainer
from tests import trained_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(folder: str, *args: str) -> str:
  return subprocess.run(['git', '-C', folder, *args], capture_output=True, text=True,
                        check=True).stdout.strip()


class RunRecordTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp(prefix='alexnet_run_record_')
    cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
    cls.workdir = os.path.join(root, 'run')
    config = trained_run.tiny_config(os.path.join(root, 'data'))
    cls.started = time.time()
    trainer.train_and_evaluate(config, cls.workdir)
    with open(os.path.join(cls.workdir, run_record.RUN_RECORD)) as f:
      cls.first_text = f.read()
    # Killed after logging the last step, before its checkpoint completed.
    shutil.rmtree(os.path.join(cls.workdir, 'checkpoints', str(trained_run.STEPS)))
    trainer.train_and_evaluate(config, cls.workdir)
    cls.ended = time.time()
    cls.records = run_record.read_run_records(cls.workdir)
    with open(os.path.join(cls.workdir, 'metrics.jsonl')) as f:
      cls.metrics_text = f.read()

  def test_one_line_per_start_and_the_first_kept(self):
    self.assertLen(self.records, 2)
    with open(os.path.join(self.workdir, run_record.RUN_RECORD)) as f:
      self.assertTrue(f.read().startswith(self.first_text))
    self.assertEqual([r['step'] for r in self.records], [0, trained_run.CHECKPOINT_EVERY])
    self.assertLess(self.records[0]['time'], self.records[1]['time'])

  def test_the_record_says_where_the_run_came_from(self):
    record = self.records[-1]
    dirty = bool(git(REPO, 'status', '--porcelain', '--untracked-files=no'))
    self.assertEqual(record['git'], {'commit': git(REPO, 'rev-parse', 'HEAD'), 'dirty': dirty})
    modules = {'jax': jax, 'flax': flax, 'optax': optax, 'numpy': np,
               'grain': grain, 'orbax-checkpoint': ocp}
    want = {name: module.__version__ for name, module in modules.items()}
    # jaxlib's own module is not public API; jax pins the jaxlib it needs to its own release.
    want['jaxlib'] = jax.__version__
    self.assertEqual(record['packages'], want)
    self.assertEqual((record['platform'], record['device_kind'], record['device_count'],
                      record['process_count']),
                     ('cpu', jax.devices()[0].device_kind, len(jax.devices()), 1))
    self.assertEqual(record['host'], socket.gethostname())
    self.assertEqual(record['argv'], sys.argv)
    self.assertBetween(record['time'], self.started, self.ended)
    self.assertEqual(record['started'],
                     time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record['time'])))
    self.assertIn('version', record)

  def test_every_metrics_line_has_its_wall_clock_time(self):
    lines = [json.loads(line) for line in self.metrics_text.splitlines()]
    self.assertEqual([(r['step'], r['kind']) for r in lines],
                     [(2, 'train'), (4, 'train'), (4, 'eval')])  # each step once
    times = [r['time'] for r in lines]
    self.assertTrue(all(isinstance(t, float) for t in times), times)
    self.assertEqual(times, sorted(times))
    self.assertBetween(times[0], self.started, self.records[1]['time'])  # kept from start 1
    self.assertBetween(times[-1], self.records[1]['time'], self.ended)  # rewritten by start 2

  def test_float32_values_at_their_shortest_decimal(self):
    self.assertIn('"lr": 0.01,', self.metrics_text)
    for line in self.metrics_text.splitlines():
      record = json.loads(line)
      if record['kind'] == 'train':
        for key in ('loss', 'top1_err', 'top5_err', 'lr'):
          self.assertEqual(repr(record[key]), str(np.float32(record[key])), key)


class SourceRevisionTest(absltest.TestCase):
  """The commit of a checkout, its dirty flag, and None without one."""

  def package_in_repo(self) -> tuple[str, str]:
    repo = self.create_tempdir().full_path
    package = os.path.join(repo, 'alexnet_jax')
    os.makedirs(package)
    with open(os.path.join(package, '__init__.py'), 'w') as f:
      f.write('"""x"""\n')
    git(repo, 'init', '-q')
    git(repo, 'add', '.')
    git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'one')
    return repo, package

  def test_clean_then_dirty_checkout(self):
    repo, package = self.package_in_repo()
    commit = git(repo, 'rev-parse', 'HEAD')
    with open(os.path.join(repo, 'untracked_run_output.txt'), 'w') as f:
      f.write('runs and data are not changes of the code\n')
    self.assertEqual(run_record.source_revision(package), {'commit': commit, 'dirty': False})
    with open(os.path.join(package, '__init__.py'), 'a') as f:
      f.write('# edited\n')
    self.assertEqual(run_record.source_revision(package), {'commit': commit, 'dirty': True})

  def test_no_checkout_or_no_git_is_none(self):
    repo, package = self.package_in_repo()
    os.remove(os.path.join(package, '__init__.py'))  # untracked now: an installed copy
    with open(os.path.join(package, 'other.py'), 'w') as f:
      f.write('')
    git(repo, 'add', '.')
    git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'two')
    with open(os.path.join(package, '__init__.py'), 'w') as f:
      f.write('"""inside another project\'s repository, not tracked by it"""\n')
    self.assertIsNone(run_record.source_revision(package))
    self.assertIsNone(run_record.source_revision(self.create_tempdir().full_path))
    _, tracked = self.package_in_repo()
    with mock.patch.dict(os.environ, {'PATH': self.create_tempdir().full_path}):
      self.assertIsNone(run_record.source_revision(tracked))


if __name__ == '__main__':
  absltest.main()
