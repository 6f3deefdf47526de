"""Multi-process start-up and peer loss, through real `launch.py` processes on localhost.

Every run here is two (or three) `launch.py` processes with one CPU device each and a short
--distributed_timeout, on the tiny digits config. Each case checks what a user sees: the exit
status of every process, exactly one `error:` line (the expected one), no Python traceback and
no C++ abort, and that nothing was written or lost. The kill -9 case kills process 1 of a
training run, then (started again) process 0, the coordinator, and resumes: the finished run
must equal an uninterrupted one. A survivor of the coordinator may also end with JAX's own
abort (docs/cluster.md, "When a process is lost"); that is pinned too.

The unit tests at the end check the pieces without processes: the launcher's variables, the
arguments JAX is given, and the verdict on differing configs.

On any machine and JAX (the CPU platform is enough):

  JAX_PLATFORMS=cpu python3 -m pytest -q tests/test_cluster.py tests/test_multihost.py
"""

import errno
import functools
import inspect
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
import jax

from alexnet_jax.core import errors
from alexnet_jax.distributed import agreement
from alexnet_jax.distributed import environment
from alexnet_jax.distributed import startup
from alexnet_jax.distributed import watch
from alexnet_jax.storage import checkpointing
from tests import XLA_TEST_FLAGS
from tests.helpers import REPO
from tests.helpers import checkpoints
from tests.helpers import training
from tests.helpers.subprocesses import free_port

TIMEOUT = 3  # --distributed_timeout of the start-up cases, in seconds
# The wait of runs whose processes must all meet: a loaded machine may start one of them
# seconds after the other, which must not read as a missing peer.
MEET = '--distributed_timeout=120'
STEPS = 32  # enough steps after each kill that the run is still training when it comes
CHECKPOINT_EVERY = 4
ABORTS = ('Traceback', 'Check failure', 'Fatal Python error', 'terminate called', 'Aborted')
# What JAX's client prints before it aborts its process when its coordinator is gone.
JAX_COORDINATOR_GONE = 'JAX distributed service detected fatal errors'
# A survivor stops within this many seconds of a peer's kill -9 (JAX's heartbeat: 100 s).
LOSS_NOTICED_S = 30


def lost_line(victim: int) -> str:
  role = ' (the coordinator)' if victim == 0 else ''
  return (f'error: process {victim}{role} of 2 was lost: it ended without a word (killed, '
          'crashed, or its host or network failed); stopped this process too. Every checkpoint '
          'folder left is complete; start all processes again to resume from the newest')


def error_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith('error:')]


class ClusterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='test_cluster_')
    config = training.tiny_config(
        training.digits_dir(), batch_size=16, num_train_steps=STEPS, final_eval_crops=1,
        **{'mesh.data': -1, 'mesh.model': 1, 'checkpoint.every_steps': CHECKPOINT_EVERY,
           'log.every_steps': CHECKPOINT_EVERY})
    cls.config_file = training.write_config_file(os.path.join(cls.root, 'config.py'), config)
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
    """Waits for a finished checkpoint of `step` or later; every one of `procs` still runs then."""
    while not any(s >= step for s in checkpointing.finished_steps(workdir)):
      for proc in procs:
        self.assert_running(proc)
      time.sleep(0.05)
    for proc in procs:
      self.assert_running(proc)

  def assert_coordinator_lost(self, proc: subprocess.Popen) -> None:
    """`proc` survived process 0, JAX's coordinator: the watch and JAX's client race to end
    it (docs/cluster.md, "When process 0 itself dies"). Either the watch's line and status,
    JAX's message possibly printed before it, or JAX's abort with no line of this program's."""
    output = self.output(proc)
    self.assertNotIn('Traceback', output)
    if proc.returncode == -signal.SIGABRT:
      self.assertIn(JAX_COORDINATOR_GONE, output)
      self.assertEqual(error_lines(output), [], output[-3000:])
    else:
      self.assertEqual(proc.returncode, errors.EXIT_PEER_LOST, output[-3000:])
      self.assertEqual(error_lines(output), [lost_line(0)], output[-3000:])

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
    low, high = environment.PORT_RANGE
    self.assertLessEqual(high, 32768)  # below Linux's ephemeral ports
    for job in (1, 4095, 123456, 9999999):
      ports = {environment.slurm_port(job + k * 4096, step) for k in range(4) for step in range(3)}
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
      self.wait_for_checkpoint(workdir, newest + CHECKPOINT_EVERY, procs)  # both running
      os.kill(procs[victim].pid, signal.SIGKILL)
      killed = time.monotonic()
      survivor = procs[1 - victim]
      survivor.wait(timeout=LOSS_NOTICED_S)  # bounded: long before JAX's heartbeat timeout
      self.assertLess(time.monotonic() - killed, LOSS_NOTICED_S)
      if victim == 1:
        self.assert_one_error(survivor, errors.EXIT_PEER_LOST, lost_line(victim))
      else:
        self.assert_coordinator_lost(survivor)
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
    # Far more steps than the test waits for: the Ctrl-C lands while both processes train.
    procs = [self.process(workdir, port, i, MEET, '--config.num_train_steps=1000')
             for i in range(2)]
    self.wait_for_checkpoint(workdir, CHECKPOINT_EVERY, procs)  # both running
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


class CheckpointWriteAfterPeerLossTest(checkpoints.CheckpointTestCase):
  """A checkpoint write that fails because a peer died is reported as the loss, not the disk."""

  def failed_save(self, session) -> BaseException:
    ckpt = self.checkpointer()
    broken = OSError(errno.ENOSPC, 'No space left on device')
    with mock.patch.object(watch, '_session', session), \
         mock.patch.object(grain.checkpoint.CheckpointHandler, 'save', side_effect=broken):
      with self.assertRaises(Exception) as caught:
        ckpt.save(1, checkpoints.make_state(self.mesh),
                  data_iterator=checkpoints.make_iterator(), meta={'epoch': 1})
        ckpt.wait()
    return caught.exception

  def test_write_error_after_a_lost_peer_names_the_peer(self):
    lost = threading.Event()
    lost.set()
    session = types.SimpleNamespace(lost=lost, lost_message='process 1 of 2 was lost')
    error = self.failed_save(session)
    self.assertIsInstance(error, watch.PeerLost)
    self.assertEqual(str(error), 'process 1 of 2 was lost')

  def test_write_error_without_a_lost_peer_is_the_disk(self):
    error = self.failed_save(None)
    self.assertIsInstance(error, checkpointing.CheckpointWriteError)
    self.assertIn('no space left on the device', str(error))


class DistributedTest(absltest.TestCase):

  def test_single_process_is_a_no_op(self):
    self.assertFalse(startup.init_distributed())
    self.assertFalse(startup.init_distributed(num_processes=1))
    startup.sync_hosts('nothing to wait for')

  def test_bad_flags(self):
    with self.assertRaisesRegex(ValueError, '--num_processes is required'):
      startup.init_distributed('127.0.0.1:1234')
    with self.assertRaisesRegex(ValueError, r'--process_id must be in \[0, 2\), got 2'):
      startup.init_distributed('127.0.0.1:1234', 2, 2)
    with self.assertRaisesRegex(ValueError, r'--coordinator_address .* is required'):
      startup.init_distributed(None, 2, 0)

  def test_cluster_detection(self):
    slurm = dict(SLURM_JOB_ID='7', SLURM_STEP_NODELIST='node[1-2]', SLURM_NTASKS='4',
                 SLURM_PROCID='1', SLURM_LOCALID='1')
    self.assertEqual(environment.cluster_process_count(slurm), 4)
    # salloc without srun: no step, so not a multi-process run of this program.
    self.assertEqual(environment.cluster_process_count(
        {k: v for k, v in slurm.items() if k != 'SLURM_STEP_NODELIST'}), 1)
    self.assertEqual(environment.cluster_process_count(
        dict(OMPI_MCA_orte_hnp_uri='1.2.3.4:5', OMPI_COMM_WORLD_SIZE='2')), 2)
    self.assertEqual(environment.cluster_process_count(
        dict(TPU_WORKER_HOSTNAMES='w0,w1,w2,w3')), 4)
    self.assertEqual(environment.cluster_process_count({}), 1)

  def test_cluster_variables_that_are_not_counts_are_named(self):
    slurm = dict(SLURM_JOB_ID='7', SLURM_STEP_NODELIST='node1', SLURM_NTASKS='2',
                 SLURM_PROCID='0', SLURM_LOCALID='0')
    ompi = dict(OMPI_MCA_orte_hnp_uri='1.2.3.4:5', OMPI_COMM_WORLD_SIZE='2')
    for env, name, value in ((slurm, 'SLURM_NTASKS', 'abc'), (slurm, 'SLURM_NTASKS', '0'),
                             (slurm, 'SLURM_PROCID', '1.5'), (slurm, 'SLURM_LOCALID', ''),
                             (ompi, 'OMPI_COMM_WORLD_SIZE', 'two')):
      with self.assertRaisesRegex(errors.InputError,
                                  f"^the environment variable {name}='{value}' must be an "
                                  'integer >= '):
        environment.cluster_process_count(dict(env, **{name: value}))

  def test_no_cluster_to_detect_is_one_line(self):
    code = ('from alexnet_jax.distributed import startup; '
            'startup.init_distributed(auto_detect=True, timeout_s=5)')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'OMPI_', 'TPU_', 'JAX_COORDINATOR'))}
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'), timeout=300)
    self.assertIn('errors.InputError: no cluster found to join (--auto_distributed): give '
                  '--coordinator_address, --num_processes and --process_id', proc.stderr)


class LauncherVariablesTest(absltest.TestCase):
  """Process 0's address and the process count, from SLURM's and Open MPI's variables."""

  def test_first_slurm_node(self):
    for nodes in ('node001', 'node001,host2', 'node[001-015],host2', 'node[001,007-015],host2',
                  ' node001 '):
      self.assertEqual(environment.first_slurm_node(nodes), 'node001', nodes)
    self.assertEqual(environment.first_slurm_node('gpu-a[7]'), 'gpu-a7')
    self.assertEqual(environment.first_slurm_node(''), '')

  def test_slurm_membership(self):
    env = dict(SLURM_JOB_ID='7', SLURM_STEP_ID='2', SLURM_STEP_NODELIST='gpu[003-004],cpu1',
               SLURM_NTASKS='8', SLURM_PROCID='5', SLURM_LOCALID='1')
    self.assertEqual(environment.from_slurm(env, None), environment.Membership(
        f'gpu003:{environment.slurm_port(7, 2)}', 8, 5, (1,), 'SLURM'))
    self.assertEqual(environment.from_slurm(env, 23456).coordinator, 'gpu003:23456')
    with self.assertRaisesRegex(errors.InputError, 'SLURM_STEP_NODELIST is empty'):
      environment.from_slurm(dict(env, SLURM_STEP_NODELIST=' '), None)

  def test_ompi_membership(self):
    env = dict(OMPI_MCA_orte_hnp_uri='1531576320.0;tcp://10.96.0.1,10.148.0.1:34911',
               OMPI_COMM_WORLD_SIZE='4', OMPI_COMM_WORLD_RANK='3',
               OMPI_COMM_WORLD_LOCAL_RANK='1')
    # JAX's own port for the job: 61440 + (job id / 4096) mod 4096.
    port = 61440 + (1531576320 // 4096) % 4096
    self.assertEqual(environment.from_ompi(env, None), environment.Membership(
        f'10.96.0.1:{port}', 4, 3, (1,), 'Open MPI'))
    six = dict(env, OMPI_MCA_orte_hnp_uri='1314521088.0;tcp6://[fe80::b9b:ac5d,2620:10d::2]:43370')
    self.assertEqual(environment.from_ompi(six, 23456).coordinator, '[fe80::b9b:ac5d]:23456')
    with self.assertRaisesRegex(errors.InputError, 'OMPI_COMM_WORLD_RANK=4 but'):
      environment.from_ompi(dict(env, OMPI_COMM_WORLD_RANK='4'), None)


class InitializeArgumentsTest(absltest.TestCase):
  """jax.distributed.initialize gets the run's timeouts, and only those its release takes."""

  def initialize_with(self, signature_of) -> dict:
    calls = []

    @functools.wraps(signature_of)
    def fake(*args, **kwargs):
      calls.append(inspect.signature(signature_of).bind(*args, **kwargs).arguments)

    with mock.patch.object(jax.distributed, 'initialize', fake):
      startup._initialize(7, coordinator_address='node0:1234', num_processes=2, process_id=1,
                          local_device_ids=None, cluster_detection_method='deactivate')
    self.assertLen(calls, 1)
    return dict(calls[0])

  def test_this_jax_gets_every_timeout(self):
    got = self.initialize_with(jax.distributed.initialize)
    self.assertEqual(got, dict(
        coordinator_address='node0:1234', num_processes=2, process_id=1, local_device_ids=None,
        cluster_detection_method='deactivate', initialization_timeout=7,
        heartbeat_timeout_seconds=startup.HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=startup.SHUTDOWN_TIMEOUT_S))

  def test_an_older_jax_gets_only_what_it_takes(self):
    def initialize(coordinator_address=None, num_processes=None, process_id=None,
                   local_device_ids=None, initialization_timeout=300):
      del coordinator_address, num_processes, process_id, local_device_ids
      del initialization_timeout

    got = self.initialize_with(initialize)
    self.assertEqual(got, dict(coordinator_address='node0:1234', num_processes=2, process_id=1,
                               local_device_ids=None, initialization_timeout=7))


class AgreementTest(absltest.TestCase):
  """The verdict every process computes from everyone's fields."""

  def test_equal_fields_agree(self):
    self.assertEqual(agreement.verdict_line('config', [{'a': 1, 'b': [1, 2]}] * 3), '')
    agreement.agree('config', {'a': 1})  # one process: nothing to compare

  def test_differences_are_named_with_both_values(self):
    everyone = [{'batch_size': 16, 'seed': 0, 'name': 'x'},
                {'batch_size': 32, 'seed': 3, 'name': 'x'},
                {'batch_size': 16, 'seed': 0, 'name': 'y' * 50}]
    self.assertEqual(
        agreement.verdict_line('config', everyone),
        'the processes of this run have different configs: process 1 differs from process 0 in '
        'batch_size (32 vs 16), seed (3 vs 0); process 2 differs from process 0 in name ("' +
        'y' * 36 + '... vs "x"). Start every process with the same --config and --config.* '
        'overrides')

  def test_many_differences_are_counted(self):
    first, other = {f'f{i}': 0 for i in range(8)}, {f'f{i}': 1 for i in range(8)}
    line = agreement.verdict_line('dataset', [first, other])
    self.assertIn('f5 (1 vs 0) and 2 more. Start every process with the same data', line)


if __name__ == '__main__':
  absltest.main()
