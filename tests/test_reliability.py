"""Faults injected into real `launch.py` runs: kill -9, SIGTERM, damaged checkpoints, full disk.

Every run here is `python launch.py` in a subprocess on the tiny digits config (batch 64:
22 steps an epoch, so a 30-step run has an epoch-end eval and checkpoint inside it). One
uninterrupted reference run is the yardstick: whatever happens to the others, their
(step, loss) records, eval records and final parameters must equal it bitwise (CPU).

The runs share a persistent XLA compilation cache (launch_env), so only the reference run
compiles; the others start in seconds. A cached executable is the one compiled, so the
numbers stay bitwise equal.

The kill points are random; the seed is printed with any failure and can be fixed with
ALEXNET_FAULT_SEED=N to replay one.
"""

import atexit
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import lockfile
from tests.helpers import REPO
from tests.helpers import subprocesses
from tests.helpers.faults import damage
from tests.helpers.faults import launch
from tests.helpers.faults import params_of
from tests.helpers.faults import records
from tests.helpers.faults import start_launch
from tests.helpers.training import digits_dir
from tests.helpers.training import final_params
from tests.helpers.training import read_metrics
from tests.helpers.training import tiny_config
from tests.helpers.training import write_config_file

DOUBLE_CTRL_C = 'Ctrl-C twice'
NUM_STEPS = 30  # 22 steps an epoch at batch 64: an epoch-end eval at 22, the last at 30


def launch_env() -> dict[str, str]:
  """Environment of the commands run here: eight CPU devices, the shared compilation cache.

  Log lines keep absl's prefix (ALEXNET_JAX_LOG_PREFIX), which tells them from messages.
  """
  return subprocesses.launch_env(compile_cache=True, ALEXNET_JAX_LOG_PREFIX='1')


_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\] ')


def message_lines(output: str) -> list[str]:
  """What a command said to the user: its output less log records and their continuations."""
  return [l for l in output.splitlines() if l.strip() and not _LOG_LINE.match(l)
          and not l.startswith(' ')]


def traceback_of(stderr: str) -> str:
  """The first traceback in `stderr` and what follows it: the message of a failed check."""
  return stderr[stderr.find('Traceback'):][:4000]


def reliability_config(**overrides):
  settings = {'batch_size': 64, 'num_train_steps': NUM_STEPS, 'final_eval_crops': 1,
              'checkpoint.every_steps': 4}
  settings.update(overrides)
  return tiny_config(digits_dir(), **settings)


def data_positions(config, workdir: str) -> dict[int, int]:
  """Step -> the data position stored in that checkpoint's meta."""
  del config  # the layout is the same for every config (docs/checkpoints.md)
  positions = {}
  for step in checkpointing.finished_steps(workdir):
    with open(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')) as f:
      positions[step] = json.load(f)[checkpointing.DATA_POSITION]
  return positions


def folder_digest(folder: str) -> dict[str, str]:
  digests = {}
  for path in sorted(glob.glob(os.path.join(folder, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return digests


class FaultTestCase(parameterized.TestCase):
  """Holds the uninterrupted reference run, made once per process."""

  _reference = {}

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='test_reliability_')
    cls.config = reliability_config()
    cls.config_file = write_config_file(os.path.join(cls.root, 'cfg.py'), cls.config)
    if 'workdir' not in FaultTestCase._reference:
      workdir = tempfile.mkdtemp(prefix='test_reliability_reference_')
      atexit.register(shutil.rmtree, workdir, ignore_errors=True)
      proc = launch(cls.config_file, workdir)
      if proc.returncode != 0:
        raise AssertionError(f'the reference run failed:\n{proc.stderr[-3000:]}')
      FaultTestCase._reference.update(workdir=workdir, records=records(workdir),
                                      params=params_of(cls.config, workdir))
    cls.reference = FaultTestCase._reference['workdir']

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def wait_for_step(self, proc, workdir: str, step: int, log: str, what: str) -> int:
    """Polls metrics.jsonl until its newest train line is >= step; returns that step.

    Counts lines only once this run's loop has started (its "Training N steps" log line):
    before that the newest lines are those of the run before it, which may be past `step`
    and which this run drops back to its checkpoint.
    """
    deadline = time.time() + 240
    while time.time() < deadline:
      with open(log) as f:
        started = re.search(r'Training \d+ steps', f.read()) is not None
      lines = read_metrics(workdir, while_running=True) if started else []
      steps = [r['step'] for r in lines if r['kind'] == 'train']
      if steps and steps[-1] >= step:
        return steps[-1]
      if proc.poll() is not None:
        with open(log) as f:
          self.fail(f'the run ended (status {proc.returncode}) before {what}: {f.read()[-3000:]}')
      time.sleep(0.02)
    self.fail(f'step {step} not reached in time for {what}')

  def wait_for_text(self, proc, log: str, text: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
      with open(log) as f:
        if text in f.read():
          return
      if proc.poll() is not None:
        return  # it ended already (the first Ctrl-C did it all)
      time.sleep(0.005)
    self.fail(f'{text!r} not printed in time')

  def copy_of_reference(self) -> str:
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(self.reference, workdir)
    return workdir

  def assert_equals_reference(self, workdir: str, msg: str = ''):
    trains, evals = records(workdir)
    ref_trains, ref_evals = FaultTestCase._reference['records']
    steps = [t[0] for t in trains]
    self.assertEqual(steps, list(range(1, NUM_STEPS + 1)), f'train steps missing or repeated {msg}')
    self.assertEqual(trains, ref_trains, msg)  # bitwise: floats compared exactly
    self.assertEqual([e['step'] for e in evals], [22, NUM_STEPS], msg)
    self.assertEqual(evals, ref_evals, msg)
    for got, want in zip(params_of(self.config, workdir), FaultTestCase._reference['params']):
      np.testing.assert_array_equal(got, want, err_msg=msg)
    # One batch per step: a checkpoint's position counts the batches its steps consumed,
    # never those the device feed had read ahead.
    positions = data_positions(self.config, workdir)
    self.assertEqual(positions, {s: s for s in positions}, msg)
    leftovers = [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if not n.isdigit() and n != checkpointing.DAMAGED_DIR]
    self.assertEqual(leftovers, [], f'unfinished checkpoint folders left {msg}')


class CrashResumeTest(FaultTestCase):

  def test_kills_and_preemption_lose_nothing(self):
    """kill -9, Ctrl-C, SIGTERM during an eval, Ctrl-C twice, at random steps; then run to the end.

    Every restart after a kill takes over the lock the killed run left; every Ctrl-C
    saves its step (or, pressed twice, ends the process at once); nothing is lost.
    """
    # Batches are on the devices ahead of each step, so every kill lands with some read ahead.
    self.assertEqual(self.config.data.device_prefetch, 2)
    seed = int(os.environ.get('ALEXNET_FAULT_SEED', random.randrange(10**6)))
    rng = random.Random(seed)
    msg = f'(ALEXNET_FAULT_SEED={seed})'
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    lock = os.path.join(workdir, 'run.lock')
    # (signal, first step at which to send it): before the epoch end, during its eval, after.
    plan = [(signal.SIGKILL, rng.randint(2, 7)), (signal.SIGINT, rng.randint(10, 18)),
            (signal.SIGTERM, 22), (DOUBLE_CTRL_C, rng.randint(25, 28))]
    left_lock = None  # the pid of a killed run whose lock file stayed behind
    for i, (sig, step) in enumerate(plan):
      log = os.path.join(self.create_tempdir().full_path, f'run{i}.log')
      with open(log, 'w') as log_file:
        proc = start_launch(self.config_file, workdir, log_file)
        try:
          seen = self.wait_for_step(proc, workdir, step, log, f'signal {sig} at step {step} {msg}')
          if sig == signal.SIGKILL:
            time.sleep(rng.uniform(0, 0.3))  # land anywhere in a step, a save, a log line
          if sig == DOUBLE_CTRL_C:
            proc.send_signal(signal.SIGINT)
            self.wait_for_text(proc, log, 'Ctrl-C: saving a checkpoint')
            proc.send_signal(signal.SIGINT)  # the second one ends the process at once
          else:
            proc.send_signal(sig)
          proc.wait(timeout=120)
        finally:
          if proc.poll() is None:
            proc.kill()
      with open(log) as f:
        err = f.read()
      self.assertNotIn('Traceback', err, err[-3000:])
      if left_lock is not None:
        self.assertIn(f'Took over the lock of a run that ended without releasing it (host '
                      f'{socket.gethostname()}, pid {left_lock},', err, msg)
      left_lock = None
      finished = checkpointing.finished_steps(workdir)
      leftovers = [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
                   if not n.isdigit()]
      if sig == signal.SIGTERM:
        # The eval of step 22 was running: it finishes, the checkpoint is kept, status 0.
        self.assertEqual(seen, 22, msg)
        self.assertEqual(proc.returncode, 0, err[-3000:])
        self.assertIn('Preemption signal received: saved step 22', err)
        self.assertEqual([e['step'] for e in records(workdir)[1]], [22], msg)
      elif sig == signal.SIGINT:
        # One line, status 130, and a complete checkpoint of the step it stopped at.
        self.assertEqual(proc.returncode, 130, err[-3000:])
        stopped = records(workdir)[0][-1][0]
        self.assertGreaterEqual(stopped, seen, msg)
        self.assertEqual(message_lines(err), [
            f'interrupted: Ctrl-C at step {stopped}: saved the checkpoint of step {stopped} in '
            f'{workdir}/checkpoints; rerun the same command to resume from it'], msg)
        self.assertEqual(finished[-1], stopped, msg)
        self.assertEqual(leftovers, [], f'a half-written checkpoint {msg}')
        self.assertFalse(os.path.exists(lock), 'the lock outlived the run')
      elif sig == DOUBLE_CTRL_C:
        # Ended by the second Ctrl-C (or, had the save been quicker, by the first): either
        # way the checkpoints it finished are complete, and the next run resumes from them.
        self.assertIn(proc.returncode, (-signal.SIGINT, 130), err[-3000:])
        if proc.returncode == -signal.SIGINT:
          left_lock = proc.pid
      else:
        self.assertEqual(proc.returncode, -signal.SIGKILL, msg)
        left_lock = proc.pid
      if left_lock is not None:
        self.assertEqual(lockfile.Holder.parse(open(lock).read()).pid, left_lock)
    proc = launch(self.config_file, workdir)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('Resumed from step', proc.stderr)
    if left_lock is not None:
      self.assertIn(f'pid {left_lock},', proc.stderr)
    self.assertFalse(os.path.exists(lock), 'the lock outlived the run')
    self.assert_equals_reference(workdir, msg)

class ConcurrentRunsTest(FaultTestCase):

  def test_a_second_run_is_refused_and_the_first_is_unharmed(self):
    """A second launch.py on a live workdir (with another learning rate) changes nothing."""
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    log = os.path.join(self.create_tempdir().full_path, 'first.log')
    other = write_config_file(
        os.path.join(self.create_tempdir().full_path, 'other.py'),
        reliability_config(**{'optim.learning_rate': 0.05}))
    with open(log, 'w') as log_file:
      first = start_launch(self.config_file, workdir, log_file)
      try:
        self.wait_for_step(first, workdir, 3, log, 'the second run')
        # Paused, the first run is certainly alive while the second one starts and ends.
        first.send_signal(signal.SIGSTOP)
        try:
          before = folder_digest(workdir)
          second = launch(other, workdir)
          after = folder_digest(workdir)
        finally:
          first.send_signal(signal.SIGCONT)
        first.wait(timeout=300)
      finally:
        if first.poll() is None:
          first.kill()
    self.assertEqual(second.returncode, 2, second.stderr[-3000:])
    self.assertNotIn('Traceback', second.stderr)
    lines = message_lines(second.stderr)
    self.assertLen(lines, 1, second.stderr[-3000:])
    self.assertStartsWith(lines[0], f'error: the workdir {workdir} is in use by another run (host '
                          f'{socket.gethostname()}, pid {first.pid}, started ')
    self.assertEqual(after, before, 'the refused run changed the workdir')
    with open(log) as f:
      self.assertEqual(first.returncode, 0, f.read()[-3000:])
    self.assertFalse(os.path.exists(os.path.join(workdir, 'run.lock')))
    self.assert_equals_reference(workdir)  # bitwise: as if it had run alone
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['optim']['learning_rate'], self.config.optim.learning_rate)


# `python -c SLOW_COMMIT launch.py ...`: launch.py, except that the background thread that
# completes a checkpoint (renames its temporary folder) starts two seconds late, so that a
# save is still in flight a step later. FAILING_COMMIT: and then fails, as on a full disk.
SLOW_COMMIT = """
import asyncio, errno, os, runpy, sys
from orbax.checkpoint._src.path import atomicity

finalize = atomicity.AtomicRenameTemporaryPath.finalize
FAIL = FAIL_PLACEHOLDER

async def slow_finalize(self):
  await asyncio.sleep(2)
  if FAIL:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""
FAILING_COMMIT = SLOW_COMMIT.replace('FAIL_PLACEHOLDER', 'True')
SLOW_COMMIT = SLOW_COMMIT.replace('FAIL_PLACEHOLDER', 'False')


class NanStopTest(FaultTestCase):

  def test_nan_while_a_save_is_in_flight_keeps_a_complete_checkpoint(self):
    """Step 1 is being saved when step 2's loss is NaN: step 1 is named, complete, restorable.

    Logging every 5 steps, the NaN is found by the check before the save of step 2,
    so no checkpoint of the diverged weights is written.
    """
    folder = self.create_tempdir().full_path
    config = reliability_config(**{'optim.learning_rate': 1e30, 'checkpoint.every_steps': 1,
                                   'log.every_steps': 5})
    config_file = write_config_file(os.path.join(folder, 'cfg.py'), config)
    workdir = os.path.join(folder, 'run')
    proc = launch(config_file, workdir, python_args=('-c', SLOW_COMMIT))
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertEqual(message_lines(proc.stderr), [
        'error: loss is nan at step 2: training stopped; the last good checkpoint (step 1) is '
        'kept. Lower config.optim.learning_rate or check the input data, then rerun with the '
        'same workdir.'])
    self.assertEqual(os.listdir(os.path.join(workdir, 'checkpoints')), ['1'])
    state, meta = final_params(config, workdir)
    self.assertEqual(meta['step'], 1)
    for leaf in jax.tree.leaves(state.params):
      self.assertTrue(np.isfinite(np.asarray(leaf)).all())

  def test_nan_while_the_save_in_flight_fails_claims_no_checkpoint(self):
    """The save of step 1 fails (a full disk) when step 2's loss is NaN: the line says so."""
    folder = self.create_tempdir().full_path
    config = reliability_config(**{'optim.learning_rate': 1e30, 'checkpoint.every_steps': 1,
                                   'log.every_steps': 5})
    config_file = write_config_file(os.path.join(folder, 'cfg.py'), config)
    workdir = os.path.join(folder, 'run')
    proc = launch(config_file, workdir, python_args=('-c', FAILING_COMMIT))
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertEqual(errors, [
        f'error: checkpoint of step 1 could not be written (no space left on the device of '
        f'{workdir}/checkpoints); no earlier checkpoint exists'])
    self.assertEqual(checkpointing.finished_steps(workdir), [])


class DamagedCheckpointTest(FaultTestCase):

  @parameterized.parameters('truncate', 'delete')
  def test_damaged_newest_falls_back_to_the_previous(self, how):
    workdir = self.copy_of_reference()
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
    newest, previous = steps[-1], steps[-2]
    damage(os.path.join(workdir, 'checkpoints', str(newest)), how)
    proc = launch(self.config_file, workdir)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr, traceback_of(proc.stderr))
    self.assertRegex(proc.stderr, rf'W.*Checkpoint at step {newest} \(.*\) is unreadable')
    self.assertIn(f'Resuming from checkpoint step {previous} instead of {newest}', proc.stderr)
    self.assertIn(f'Resumed from step {previous}.', proc.stderr)
    self.assertLen(glob.glob(os.path.join(workdir, 'checkpoints', 'damaged', f'{newest}-*')), 1)
    self.assert_equals_reference(workdir)


  def test_no_usable_checkpoint_stops_unless_told(self):
    workdir = self.copy_of_reference()
    folder = os.path.join(workdir, 'checkpoints')
    steps = sorted((int(n) for n in os.listdir(folder) if n.isdigit()), reverse=True)
    for step in steps:
      damage(os.path.join(folder, str(step)), 'truncate')
    before = folder_digest(workdir)
    proc = launch(self.config_file, workdir)
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr, traceback_of(proc.stderr))
    last = proc.stderr.strip().splitlines()[-1]
    self.assertStartsWith(last, f'error: no usable checkpoint in {folder} (step {steps[0]}: ',
                          proc.stderr[-6000:])
    self.assertEndsWith(last, 'Move or delete them to start from scratch, or allow a fresh '
                        'start (config.checkpoint.start_fresh_if_unusable=True).')
    self.assertEqual(folder_digest(workdir), before, 'a refused resume changed the workdir')
    # Told to, it starts over: the same numbers as the reference, from step 1.
    proc = launch(self.config_file, workdir, '--config.checkpoint.start_fresh_if_unusable=True')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('Starting from scratch as requested', proc.stderr)
    self.assertLen(os.listdir(os.path.join(folder, checkpointing.DAMAGED_DIR)), len(steps))
    self.assert_equals_reference(workdir)


# `python -c FULL_DISK launch.py ...`: launch.py, except that writing a checkpoint's meta
# item fails as on a full disk. For where no small tmpfs can be mounted.
FULL_DISK = """
import errno, os, runpy, sys
import orbax.checkpoint as ocp

async def full_disk(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

ocp.JsonCheckpointHandler._save_fn = full_disk
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def disk_usage(folder: str) -> int:
  """Bytes the files under `folder` take on a tmpfs (whole 4 KiB pages)."""
  total = 0
  for dirpath, _, files in os.walk(folder):
    total += sum(-(-os.path.getsize(os.path.join(dirpath, f)) // 4096) * 4096 for f in files)
  return total


class DiskFullTest(FaultTestCase):

  def test_full_disk_keeps_the_previous_checkpoint(self):
    """Resumed on a disk with room for half a checkpoint: the next save fails, cleanly."""
    base = self.create_tempdir().full_path
    disk = os.path.join(base, 'disk')
    os.makedirs(disk)
    newest = os.path.join('checkpoints', str(NUM_STEPS))
    checkpoint_bytes = disk_usage(os.path.join(self.reference, newest))
    size = disk_usage(self.reference) + checkpoint_bytes // 2
    # A small tmpfs gives the real ENOSPC, from the storage library's own writes; without
    # the right to mount one, a patched write raises it.
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', disk],
                             capture_output=True, check=False).returncode == 0
    if mounted:
      self.addCleanup(subprocess.run, ['umount', '-l', disk], check=False)
    workdir = os.path.join(disk, 'run')
    shutil.copytree(self.reference, workdir)
    before = folder_digest(os.path.join(workdir, newest))
    config = reliability_config(num_train_steps=NUM_STEPS + 2)
    config_file = write_config_file(os.path.join(base, 'cfg.py'), config)
    proc = launch(config_file, workdir, python_args=() if mounted else ('-c', FULL_DISK))
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    # orbax's writer thread logs its own tracebacks of the failed write, sometimes after ours.
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, proc.stderr[-3000:])
    last = errors[0]
    self.assertRegex(last, rf'^error: checkpoint of step {NUM_STEPS + 2} could not be written '
                     rf'\(no space left on the device of .*\); the checkpoints written before it '
                     rf'\(.*{NUM_STEPS}\) are intact: make room and rerun to resume from step '
                     rf'{NUM_STEPS}$')
    self.assertEqual(folder_digest(os.path.join(workdir, newest)), before)
    for got, want in zip(params_of(self.config, workdir), FaultTestCase._reference['params']):
      np.testing.assert_array_equal(got, want)


# `python -c FULL_DISK_PREPARE -m alexnet_jax.prepare ...` fails every shard write as a full
# disk does, with array_record's own message, for where no small tmpfs can be mounted.
FULL_DISK_PREPARE = """
import runpy, sys
from array_record.python import array_record_module

class FullDisk:
  def __init__(self, path, options):
    self.path = path
    open(path, 'wb').close()
  def write(self, record):
    pass
  def close(self):
    raise RuntimeError(f'write() failed: No space left on device; writing {self.path}')

array_record_module.ArrayRecordWriter = FullDisk
sys.argv = ['alexnet_jax.prepare', *sys.argv[2:]]
runpy.run_module('alexnet_jax.prepare', run_name='__main__', alter_sys=True)
"""


def run_prepare(*args: str, python_args: tuple[str, ...] = (), **kwargs):
  return subprocess.run([sys.executable, *python_args, '-m', 'alexnet_jax.prepare', *args],
                        cwd=REPO, env=launch_env(), capture_output=True, text=True, **kwargs)


class PrepareFaultTest(parameterized.TestCase):

  def test_full_disk_is_one_line_and_leaves_no_temporary_file(self):
    disk = self.create_tempdir().full_path
    # Room for the work files but not for the first shard (about 1 MB of 72-px JPEGs).
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', disk],
                             capture_output=True, check=False).returncode == 0
    if mounted:
      self.addCleanup(subprocess.run, ['umount', '-l', disk], check=False)
    output = os.path.join(disk, 'out')
    proc = run_prepare('--source=digits', f'--output={output}', '--image_size=72',
                       python_args=() if mounted else ('-c', FULL_DISK_PREPARE), timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    lines = message_lines(proc.stderr + proc.stdout)
    self.assertLen(lines, 1, proc.stderr[-3000:])
    self.assertRegex(lines[0], rf'^error: cannot write {output}/_partial/train-00000\.'
                     r'array_record\.tmp \(no space left on the device, [\d.,]+ MiB free there\)$')
    left = sorted(os.path.relpath(os.path.join(d, n), output)
                  for d, _, names in os.walk(output) for n in names)
    self.assertEqual(left, ['.prepare.lock', '_partial/run.json'], 'temporary files left')

  @parameterized.parameters(1, 2)
  def test_ctrl_c_then_rerun_gives_the_same_dataset(self, workers):
    """Ctrl-C (to the whole process group, workers too) mid-way; the rerun finishes the job.

    In one process the part being converted is abandoned and its files removed; with
    worker processes, the parts they were given still finish.
    """
    output = os.path.join(self.create_tempdir().full_path, 'out')
    args = ['--source=digits', f'--output={output}', '--image_size=72', f'--workers={workers}']
    partial = os.path.join(output, '_partial')
    proc, out, err = ctrl_c_prepare(  # once a part is done: the workers run
        args, lambda _: bool(glob.glob(os.path.join(partial, '*-0000?.json'))))
    self.assertEqual(proc.returncode, 130, err[-3000:])
    self.assertNotIn('Traceback', err)
    lines = message_lines(err + out)
    self.assertLen(lines, 1, err[-3000:])
    done = '[123]' if workers == 1 else '[1234]'
    self.assertRegex(lines[0], rf'^interrupted: Ctrl-C; {done} of 4 parts are finished and kept '
                     rf'in {partial} \(unfinished files removed\): rerun the same command to '
                     r'continue$')
    self.assertFalse(os.path.exists(os.path.join(output, 'dataset.json')))
    self.assertEqual([n for n in os.listdir(partial) if n.endswith('.tmp')], [])
    proc = run_prepare(*args, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    # Byte for byte the dataset an uninterrupted preparation made (one worker, no Ctrl-C).
    reference = digits_dir()
    ours, theirs = folder_digest(output), folder_digest(reference)
    for digests in (ours, theirs):
      digests.pop('dataset.json')
    self.assertEqual(ours, theirs)
    with open(os.path.join(output, 'dataset.json')) as f, \
        open(os.path.join(reference, 'dataset.json')) as g:
      mine, other = json.load(f), json.load(g)
    for description in (mine, other):
      description.pop('report')
    self.assertEqual(mine, other)

  def test_ctrl_c_while_workers_start_is_one_line(self):
    """Ctrl-C while the worker processes are still importing the program: no traceback.

    A spawned worker imports alexnet_jax.prepare before it can ignore Ctrl-C; the
    signal that reaches the process group then must not surface from that import.
    """
    output = os.path.join(self.create_tempdir().full_path, 'out')
    # Both workers' Python is up (it catches SIGINT) and importing the program.
    importing = lambda pid: [p for p in spawned_workers(pid) if catches_sigint(p)]
    started = []
    proc, out, err = ctrl_c_prepare(
        ['--source=digits', f'--output={output}', '--image_size=72', '--workers=2'],
        lambda pid: started.append(len(importing(pid))) or started[-1] >= 2)
    self.assertEqual(max(started, default=0), 2, 'the workers never started')
    self.assertEqual(proc.returncode, 130, err[-3000:])
    self.assertNotIn('Traceback', err)
    lines = message_lines(err + out)
    self.assertLen(lines, 1, err[-3000:])
    self.assertRegex(lines[0], r'^interrupted: Ctrl-C; [0-4] of 4 parts are finished and kept in ')
    self.assertFalse(os.path.exists(os.path.join(output, 'dataset.json')))


def ctrl_c_prepare(args: list[str], ready) -> tuple[subprocess.Popen, str, str]:
  """Runs prepare in its own process group; Ctrl-C to the group once `ready(pid)` (or exit).

  Returns the finished process and its stdout and stderr.
  """
  proc = subprocess.Popen([sys.executable, '-m', 'alexnet_jax.prepare', *args], cwd=REPO,
                          env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ready(proc.pid):
      time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc, out, err


def spawned_workers(parent: int) -> list[int]:
  """Pids of the multiprocessing 'spawn' children of process `parent` (from /proc)."""
  found = []
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        cmdline = f.read()
    except (OSError, IndexError, ValueError):
      continue  # the process ended meanwhile
    if ppid == parent and b'spawn_main' in cmdline:
      found.append(int(entry))
  return found


def catches_sigint(pid: int) -> bool:
  """Whether process `pid` has a handler of its own for SIGINT (SigCgt in /proc)."""
  try:
    with open(f'/proc/{pid}/status') as f:
      caught = next(line for line in f if line.startswith('SigCgt:')).split()[1]
  except (OSError, StopIteration):
    return False
  return bool(int(caught, 16) >> (signal.SIGINT - 1) & 1)


class ReadOnlyWorkdirTest(FaultTestCase):

  def test_plot_on_a_read_only_workdir(self):
    """One line pointing at --plots_dir, which then writes the figures elsewhere."""
    workdir = self.copy_of_reference()
    mounted = subprocess.run(['mount', '--bind', '-o', 'ro', workdir, workdir],
                             capture_output=True, check=False).returncode == 0
    plots = os.path.join(workdir, 'plots')
    if mounted:
      self.addCleanup(subprocess.run, ['umount', '-l', workdir], check=False)
      reason = 'Read-only file system'
    elif os.geteuid() != 0:
      for dirpath, _, _ in os.walk(workdir):
        os.chmod(dirpath, 0o555)
      reason = 'Permission denied'
    else:
      # Root without the right to mount writes through any mode bits: a file where the
      # plots folder should be stands in for the unwritable folder (the same OSError path).
      shutil.rmtree(plots, ignore_errors=True)
      with open(plots, 'w') as f:
        f.write('not a folder')
      reason = 'File exists'
    before = folder_digest(workdir)
    command = [sys.executable, '-m', 'alexnet_jax.plot', f'--workdir={workdir}', '--max_train=64']
    proc = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True,
                          timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertEqual(message_lines(proc.stderr + proc.stdout), [
        f'error: cannot write the figures into {plots} ({reason}); pass --plots_dir=DIR to '
        'write them elsewhere'])
    elsewhere = os.path.join(self.create_tempdir().full_path, 'figures')
    proc = subprocess.run(command + [f'--plots_dir={elsewhere}'], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('training_curves.png', os.listdir(elsewhere))
    self.assertEqual(folder_digest(workdir), before)


class DeterminismTest(FaultTestCase):

  def test_same_numbers_for_any_thread_and_worker_count(self):
    """Six steps with 2 decoder threads and no device prefetch, then with 2 worker processes
    and 2 batches prefetched: equal to the reference (threads, prefetch 2)."""
    steps = 6
    outputs = []
    for threads, workers, ahead in ((2, 0, 0), (1, 2, 2)):
      config = reliability_config(num_train_steps=steps, **{'data.num_threads': threads,
                                                            'data.worker_count': workers,
                                                            'data.device_prefetch': ahead})
      folder = self.create_tempdir().full_path
      config_file = write_config_file(os.path.join(folder, 'cfg.py'), config)
      workdir = os.path.join(folder, 'run')
      proc = launch(config_file, workdir)
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
      outputs.append((records(workdir), params_of(config, workdir)))
    (trains_a, evals_a), params_a = outputs[0]
    (trains_b, evals_b), params_b = outputs[1]
    self.assertEqual(trains_a, FaultTestCase._reference['records'][0][:steps])
    self.assertEqual(trains_b, trains_a)
    self.assertEqual(evals_b, evals_a)
    for a, b in zip(params_a, params_b):
      np.testing.assert_array_equal(a, b)


if __name__ == '__main__':
  absltest.main()
