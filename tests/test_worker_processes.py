"""Worker processes: capped at the host's cores, and gone soon after their parent is killed -9.

Real processes: a parent builds the training input's grain iterator with worker
processes (input_pipeline's own `_iterator`), prints their pids, and is killed with
SIGKILL; its workers must be gone within a few seconds. The same for prepare's pool.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest

from alexnet_jax.config import resolution
from configs import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRAIN_PARENT = textwrap.dedent('''
    import multiprocessing, sys, time
    import grain, ml_collections
    from alexnet_jax.data import input_pipeline

    def slow(x):
      time.sleep(0.01)
      return x

    if __name__ == '__main__':
      config = ml_collections.ConfigDict(dict(num_threads=1, prefetch=1, worker_count=2))
      dataset = grain.MapDataset.range(10**6).map(slow)
      iterator = input_pipeline._iterator(dataset, config)
      next(iterator)
      print(' '.join(str(p.pid) for p in multiprocessing.active_children()
                     if 'resource_tracker' not in p.name), flush=True)
      time.sleep(600)
''')

POOL_PARENT = textwrap.dedent('''
    import multiprocessing, time
    from alexnet_jax.prepare import pool

    if __name__ == '__main__':
      # As pool.execute starts them; each busy with a part far longer than the test (or
      # still importing when the parent dies).
      workers = pool.new_pool(2)
      busy = [workers.submit(time.sleep, 600) for _ in range(2)]
      time.sleep(3)  # both started and into their task
      print(' '.join(str(p.pid) for p in multiprocessing.active_children()
                     if 'resource_tracker' not in p.name), flush=True)
      time.sleep(600)
''')


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


class OrphanTest(absltest.TestCase):

  def assert_workers_die_with(self, script: str) -> None:
    parent = subprocess.Popen([sys.executable, '-c', script], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    try:
      workers = [int(p) for p in parent.stdout.readline().split()]
      self.assertLen(workers, 2)
      self.assertTrue(all(_alive(p) for p in workers))
      parent.send_signal(signal.SIGKILL)
      parent.wait(30)
      deadline = time.monotonic() + 10
      while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
      left = [p for p in workers if _alive(p)]
      for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
      self.assertEqual(left, [], 'worker processes outlived their parent\'s kill -9')
    finally:
      if parent.poll() is None:
        parent.kill()
      parent.stdout.close()

  @absltest.skipUnless(os.path.isdir('/proc'), 'reads /proc')
  def test_grain_workers_end_after_kill_9_of_their_parent(self):
    self.assert_workers_die_with(GRAIN_PARENT)

  @absltest.skipUnless(os.path.isdir('/proc'), 'reads /proc')
  def test_prepare_workers_end_after_kill_9_of_their_parent(self):
    self.assert_workers_die_with(POOL_PARENT)


class WorkerCapTest(absltest.TestCase):

  def test_a_request_above_the_cores_is_cut_with_a_line(self):
    config = digits.get_config()
    config.data.worker_count = 1000
    with self.assertLogs(level='WARNING') as logs:
      resolved = resolution.resolve_auto(config, platform='cpu', cpu_count=4, devices=1,
                                         processes=1)
    self.assertEqual(resolved.data.worker_count, 4)
    self.assertLen(logs.output, 1)
    self.assertIn('data.worker_count=1000 cut to 4', logs.output[0])

  def test_a_request_within_the_cores_is_kept_silently(self):
    config = digits.get_config()
    config.data.worker_count = 3
    resolved = resolution.resolve_auto(config, platform='cpu', cpu_count=4, devices=1,
                                       processes=1)
    self.assertEqual(resolved.data.worker_count, 3)


if __name__ == '__main__':
  absltest.main()
