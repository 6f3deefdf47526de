"""Multi-process start-up and peer loss, through real `launch.py` processes on localhost.

Every run here is two (or three) `launch.py` processes with one CPU device each and a short
--distributed_timeout, on the tiny digits config. Each case checks what a user sees: the exit
status of every process, exactly one `error:` line (the expected one), no Python traceback and
no C++ abort, and that nothing was written or lost. The kill -9 case kills process 1 of a
training run, then (started again) process 0, the coordinator, and resumes: the finished run
must equal an uninterrupted one.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from unittest import mock

from absl.testing import absltest
import grain

from alexnet_jax.storage import checkpointing
from alexnet_jax.distributed import cluster
from alexnet_jax.core import errors
from tests import XLA_TEST_FLAGS
from tests import test_checkpoint
from tests import test_train

REPO = test_train.REPO
TIMEOUT = 3  # --distributed_timeout of the start-up cases, in seconds
# The wait of runs whose processes must all meet: a loaded machine may start one of them
# seconds after the other, which must not read as a missing peer.
MEET = '--distributed_timeout=120'
STEPS = 16
CHECKPOINT_EVERY = 4
ABORTS = ('Traceback', 'Check failure', 'Fatal Python error', 'terminate called', 'Aborted')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def error_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith('error:')]


class ClusterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='test_cluster_')
    config = test_train.tiny_config(
        test_train.digits_dir(), batch_size=16, num_train_steps=STEPS, final_eval_crops=1,
        **{'mesh.data': -1, 'mesh.model': 1, 'checkpoint.every_steps': CHECKPOINT_EVERY,
           'log.every_steps': CHECKPOINT_EVERY})
    cls.config_file = test_train.write_config_file(os.path.join(cls.root, 'config.py'), config)
    # One CPU device per process; every run after the first reads its programs from the cache.
    cls.env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=XLA_TEST_FLAGS,
                   JAX_COMPILATION_CACHE_DIR=os.path.join(cls.root, 'xla_cache'),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    for key in [k for k in cls.env if k.startswith('SLURM_')]:
      del cls.env[key]

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  # --------------------------------------------------------------------------- helpers

  def start(self, workdir: str, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile('w+', dir=self.root, suffix='.log', delete=False)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={self.config_file}',
         f'--workdir={workdir}', f'--distributed_timeout={TIMEOUT}', *args],
        cwd=REPO, env=dict(self.env, **(env or {})), stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # pytype: disable=not-writable
    self.addCleanup(self.reap, proc)
    return proc

  @staticmethod
  def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
    proc.log.close()

  @staticmethod
  def output(proc: subprocess.Popen, wait: bool = True) -> str:
    if wait:
      proc.wait()
    with open(proc.log.name) as f:
      return f.read()

  def assert_running(self, proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
      self.fail(f'process {proc.pid} ended early:\n{self.output(proc)[-3000:]}')

  def process(self, workdir: str, port: int, process_id: int, *args: str,
              num_processes: int = 2) -> subprocess.Popen:
    return self.start(workdir, f'--coordinator_address=127.0.0.1:{port}',
                      f'--num_processes={num_processes}', f'--process_id={process_id}', *args)

  def assert_one_error(self, proc: subprocess.Popen, status: int, line: str) -> None:
    """`proc` exits with `status`, its one error line is `line`, and it shows no crash."""
    output = self.output(proc)
    self.assertEqual(proc.returncode, status, output[-3000:])
    self.assertEqual(error_lines(output), [line], output[-3000:])
    for word in ABORTS:
      self.assertNotIn(word, output)

  def wait_for_line(self, proc: subprocess.Popen, text: str) -> None:
    """Waits until `text` is in the output of `proc` (which must still be running)."""
    while True:
      if text in self.output(proc, wait=False):
        return
      self.assert_running(proc)
      time.sleep(0.1)

  def wait_for_checkpoint(self, workdir: str, step: int, procs: list[subprocess.Popen]) -> None:
    while not any(s >= step for s in checkpointing.finished_steps(workdir)):
      for proc in procs:
        self.assert_running(proc)
      time.sleep(0.05)

  # --------------------------------------------------------------------------- start-up

  def test_missing_peer_named_by_process_0_from_slurm_variables(self):
    port, workdir = free_port(), os.path.join(self.root, 'missing')
    slurm = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_ID': '0', 'SLURM_STEP_NODELIST': 'localhost',
             'SLURM_NTASKS': '2', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}
    proc = self.start(workdir, f'--coordinator_port={port}', env=slurm)
    self.assert_one_error(
        proc, 2,
        f'error: waited {TIMEOUT} s at coordinator localhost:{port} for the 2 processes of this '
        'run: 1 arrived, process id 1 never did (start it with the same coordinator, or check '
        '--num_processes; --distributed_timeout sets the wait)')
    self.assertFalse(os.path.exists(workdir))

  def test_missing_process_0_named_by_a_peer(self):
    port, workdir = free_port(), os.path.join(self.root, 'no_process_0')
    proc = self.process(workdir, port, 1)
    self.assert_one_error(
        proc, 2,
        f'error: no process 0 answered at 127.0.0.1:{port} within {TIMEOUT} s: process 1 of 2 '
        'waited in vain (process 0 not started, or on another address or port, or unreachable; '
        '--distributed_timeout sets the wait)')
    self.assertFalse(os.path.exists(workdir))

  def test_duplicate_process_id_stops_every_process(self):
    port, workdir = free_port(), os.path.join(self.root, 'duplicate')
    # The peers wait long enough for process 0, which starts once both are waiting.
    peers = [self.process(workdir, port, 1, '--distributed_timeout=120') for _ in range(2)]
    for peer in peers:  # both report in before process 0 listens: it sees both claims
      self.wait_for_line(peer, 'reporting to process 0')
    first = self.process(workdir, port, 0)
    output = self.output(first)
    pids = sorted(str(p.pid) for p in peers)
    host = socket.gethostname()
    # Which of the two reached process 0 first is up to the scheduler; both are named.
    lines = error_lines(output)
    self.assertLen(lines, 1, output)
    named = sorted(lines[0].split(' pid ')[1:])
    self.assertEqual([n.split(' ')[0].rstrip(':;') for n in named], pids, lines[0])
    for proc in [first] + peers:
      self.assert_one_error(proc, 2, lines[0])
    self.assertTrue(lines[0].startswith(f'error: two processes claim process id 1: host {host} '),
                    lines[0])
    self.assertTrue(lines[0].endswith('each process needs its own id in [0, 2)'), lines[0])
    self.assertFalse(os.path.exists(workdir))

  def test_different_process_counts_stop_every_process(self):
    port, workdir = free_port(), os.path.join(self.root, 'counts')
    peer = self.process(workdir, port, 1, MEET, num_processes=3)
    first = self.process(workdir, port, 0, MEET)
    line = (f'error: process 1 (host {socket.gethostname()} pid {peer.pid}) was started for 3 '
            'processes, process 0 for 2; give every process the same --num_processes')
    self.assert_one_error(first, 2, line)
    self.assert_one_error(peer, 2, line)

  def test_taken_port_fails_at_once(self):
    port, workdir = free_port(), os.path.join(self.root, 'taken')
    with socket.socket() as holder:
      holder.bind(('127.0.0.1', port))
      holder.listen()
      proc = self.process(workdir, port, 0, '--distributed_timeout=600')
      # The 600 s wait is never entered: the port is checked before anything waits.
      self.assert_one_error(
          proc, 2,
          f'error: the coordinator port {port} on this host is already in use (by another '
          'program, another run, or an earlier start of this one that is still running); stop '
          'it, or give every process another port with --coordinator_address=HOST:PORT')
    self.assertFalse(os.path.exists(workdir))

  def test_different_configs_stop_every_process_before_anything_is_written(self):
    port, workdir = free_port(), os.path.join(self.root, 'configs')
    procs = [self.process(workdir, port, 0, MEET),
             self.process(workdir, port, 1, MEET, '--config.batch_size=32', '--config.seed=3')]
    line = ('error: the processes of this run have different configs: process 1 differs from '
            'process 0 in batch_size (32 vs 16), seed (3 vs 0). Start every process with the '
            'same --config and --config.* overrides')
    for proc in procs:
      self.assert_one_error(proc, 2, line)
    self.assertFalse(os.path.exists(workdir))

  def test_slurm_ports_differ_for_jobs_4096_apart_and_for_steps(self):
    low, high = cluster.PORT_RANGE
    self.assertLessEqual(high, 32768)  # below Linux's ephemeral ports
    for job in (1, 4095, 123456, 9999999):
      ports = {cluster.slurm_port(job + k * 4096, step) for k in range(4) for step in range(3)}
      self.assertLen(ports, 12, job)
      self.assertTrue(all(low <= p < high for p in ports), ports)

  # --------------------------------------------------------------------------- peer loss

  def test_kill_9_stops_the_survivor_and_the_next_start_resumes(self):
    reference = os.path.join(self.root, 'reference')
    port = free_port()
    procs = [self.process(reference, port, i, MEET) for i in range(2)]
    for proc in procs:
      output = self.output(proc)
      self.assertEqual(proc.returncode, 0, output[-3000:])
      self.assertEqual(error_lines(output), [])

    workdir = os.path.join(self.root, 'killed')
    newest = 0
    for victim in (1, 0):  # a peer, then the coordinator
      port = free_port()
      procs = [self.process(workdir, port, i, MEET) for i in range(2)]
      self.wait_for_checkpoint(workdir, newest + CHECKPOINT_EVERY, procs)
      os.kill(procs[victim].pid, signal.SIGKILL)
      role = ' (the coordinator)' if victim == 0 else ''
      self.assert_one_error(
          procs[1 - victim], errors.EXIT_PEER_LOST,
          f'error: process {victim}{role} of 2 was lost: it ended without a word (killed, '
          'crashed, or its host or network failed); stopped this process too. Every checkpoint '
          'folder left is complete; start all processes again to resume from the newest')
      self.assertEqual(procs[victim].wait(), -signal.SIGKILL)
      newest = max(checkpointing.finished_steps(workdir))
    self.assertLess(newest, STEPS)

    port = free_port()
    procs = [self.process(workdir, port, i, MEET) for i in range(2)]
    for proc in procs:
      output = self.output(proc)
      self.assertEqual(proc.returncode, 0, output[-3000:])
      # The newest folder was complete: restored as it is, nothing moved to damaged/.
      self.assertIn(f'Resumed from step {newest}.', output)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints', 'damaged')))
    self.assertEqual(self.records(workdir), self.records(reference))

  def test_ctrl_c_in_one_process_stops_the_other_naming_it(self):
    workdir, port = os.path.join(self.root, 'ctrl_c'), free_port()
    procs = [self.process(workdir, port, i, MEET) for i in range(2)]
    self.wait_for_checkpoint(workdir, CHECKPOINT_EVERY, procs)
    os.kill(procs[1].pid, signal.SIGINT)
    self.assert_one_error(
        procs[0], errors.EXIT_PEER_LOST,
        'error: process 1 of 2 stopped with exit status 130 (its output says why); stopped this '
        'process too')
    output = self.output(procs[1])
    self.assertEqual(procs[1].returncode, errors.EXIT_INTERRUPTED, output[-3000:])
    self.assertEqual([l for l in output.splitlines() if l.startswith('interrupted:')],
                     ['interrupted: Ctrl-C; stopped before finishing (files written so far are '
                      'complete; rerun the same command to go on)'])
    self.assertEqual(error_lines(output), [])

  @staticmethod
  def records(workdir: str) -> list[tuple]:
    """(step, kind, loss or val_loss) of every metrics line: each step once, as trained."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = [json.loads(line) for line in f]
    return [(r['step'], r['kind'], r.get('loss', r.get('val_loss'))) for r in lines]


class CheckpointWriteAfterPeerLossTest(test_checkpoint.CheckpointTestCase):
  """A checkpoint write that fails because a peer died is reported as the loss, not the disk."""

  def failed_save(self, session) -> BaseException:
    ckpt = self.checkpointer()
    broken = OSError(errno.ENOSPC, 'No space left on device')
    with mock.patch.object(cluster, '_session', session), \
         mock.patch.object(grain.checkpoint.CheckpointHandler, 'save', side_effect=broken):
      with self.assertRaises(Exception) as caught:
        ckpt.save(1, test_checkpoint.make_state(self.mesh),
                  data_iterator=test_checkpoint.make_iterator(), meta={'epoch': 1})
        ckpt.wait()
    return caught.exception

  def test_write_error_after_a_lost_peer_names_the_peer(self):
    lost = threading.Event()
    lost.set()
    session = types.SimpleNamespace(lost=lost, lost_message='process 1 of 2 was lost')
    error = self.failed_save(session)
    self.assertIsInstance(error, cluster.PeerLost)
    self.assertEqual(str(error), 'process 1 of 2 was lost')

  def test_write_error_without_a_lost_peer_is_the_disk(self):
    error = self.failed_save(None)
    self.assertIsInstance(error, checkpointing.CheckpointWriteError)
    self.assertIn('no space left on the device', str(error))


if __name__ == '__main__':
  absltest.main()
