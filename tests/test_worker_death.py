"""launch.py with grain worker processes, killed for real: one worker (-9), or launch itself (-9).

A worker killed mid-run stops the run with one line (no traceback), exit status 2, and
every checkpoint on disk complete; launch killed with -9 leaves no worker running
a few seconds later.
"""

import os
import signal
import subprocess
import sys
import time

from absl.testing import absltest

from alexnet_jax import prepare
from alexnet_jax.storage import checkpointing
from tests import XLA_TEST_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children(pid: int) -> list[int]:
  """The grain worker processes `pid` started (multiprocessing's resource tracker excluded)."""
  found = []
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    try:
      with open(f'/proc/{name}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      with open(f'/proc/{name}/cmdline', 'rb') as f:
        command = f.read()
    except OSError:
      continue
    if int(fields[1]) == pid and fields[0] != 'Z' and b'spawn_main' in command:
      found.append(int(name))
  return found


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@absltest.skipUnless(os.path.isdir('/proc'), 'reads /proc')
class WorkerDeathTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = os.path.join(absltest.get_default_test_tmpdir(), 'worker_death_digits')
    prepare.ensure_prepared('digits', cls.data, image_size=72)

  def start(self) -> tuple[subprocess.Popen, str, list[int]]:
    """launch.py training with two worker processes, once both run and a checkpoint is saved."""
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    overrides = dict(batch_size=16, num_train_steps=5000, **{
        'model.width': 0.125, 'model.dtype': 'float32', 'data.dir': self.data,
        'data.worker_count': 2, 'data.num_threads': 1, 'checkpoint.every_steps': 2,
        'log.tensorboard': False, 'log.progress': False, 'final_eval_crops': 1})
    launch = subprocess.Popen(
        [sys.executable, 'launch.py', '--config=configs/digits.py', f'--workdir={workdir}',
         *[f'--config.{k}={v}' for k, v in overrides.items()]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=XLA_TEST_FLAGS))
    self.addCleanup(lambda: launch.poll() is None and launch.kill())
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and launch.poll() is None:
      workers = _children(launch.pid)
      if len(workers) == 2 and checkpointing.finished_steps(workdir):
        return launch, workdir, workers
      time.sleep(0.5)
    self.fail(f'launch never ran with two workers: {launch.communicate()[1][-3000:]}')

  def test_a_worker_killed_mid_run_gives_one_line_and_complete_checkpoints(self):
    launch, workdir, workers = self.start()
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = launch.communicate(timeout=300)
    self.assertEqual(launch.returncode, 2, stderr[-3000:])
    self.assertNotIn('Traceback', stderr)
    self.assertEqual(
        stderr.strip().splitlines()[-1],
        'error: a data worker process (data.worker_count) ended unexpectedly (exit code -9, '
        'killed by SIGKILL (kill -9, or the out-of-memory killer)); the run stopped with its '
        'checkpoints complete: rerun the same command to resume from the newest one')
    folder = os.path.join(workdir, 'checkpoints')
    steps = checkpointing.finished_steps(workdir)
    self.assertNotEmpty(steps)
    # orbax writes a checkpoint in a '<step>.orbax-checkpoint-tmp-*' folder, renamed when done.
    self.assertEqual([n for n in os.listdir(folder) if 'tmp' in n], [],
                     'an unfinished checkpoint was left')
    self.assertFalse(any(_alive(p) for p in workers))

  def test_kill_9_of_launch_leaves_no_worker(self):
    launch, _, workers = self.start()
    launch.send_signal(signal.SIGKILL)
    launch.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
      time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for pid in left:
      os.kill(pid, signal.SIGKILL)
    self.assertEqual(left, [], 'worker processes outlived launch.py')


if __name__ == '__main__':
  absltest.main()
