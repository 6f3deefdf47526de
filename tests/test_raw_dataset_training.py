"""Training on a raw-pixel prepared dataset: the gather feeds it, and a kill -9 loses nothing.

The digits set is prepared with --format=raw (the real prepare, the real files); the
train iterator is checked against the memory-mapped pixels, and a launch.py run killed
with SIGKILL and resumed ends bitwise equal to an uninterrupted one.
"""

import os
import shutil
import signal
import subprocess
import tempfile

from absl.testing import absltest
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.config import resolution
from alexnet_jax.data import batch_sampler
from alexnet_jax.data import gather
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import raw_format
from alexnet_jax.storage import checkpointing
from alexnet_jax.training import dry_run
from tests.helpers import faults
from tests.helpers import subprocesses
from tests.helpers import training

STEPS = 12  # 3 checkpoints, every 3 steps; the kill lands after the first


def setUpModule():
  global ROOT, RAW
  ROOT = tempfile.mkdtemp(prefix='test_raw_dataset_training_')
  RAW = os.path.join(ROOT, 'digits_raw')
  prepare.prepare('digits', RAW, image_size=72, progress=False, storage='raw')


def tearDownModule():
  shutil.rmtree(ROOT, ignore_errors=True)


def _config(**overrides):
  settings = {'batch_size': 32, 'num_train_steps': STEPS, 'final_eval_crops': 1,
              'checkpoint.every_steps': 3, 'data.num_threads': 2}
  settings.update(overrides)
  return training.tiny_config(RAW, **settings)


class RawIteratorTest(absltest.TestCase):

  def test_raw_dataset_trains_through_the_gather(self):
    config = resolution.resolve_auto(_config(**{'data.worker_count': -1}))
    self.assertEqual(config.data.worker_count, 0)  # threads: no decoding to spread
    self.assertTrue(input_pipeline.uses_gather(config.data))
    split = raw_format.open_raw_split(RAW, 'train')
    pixels = np.asarray(split.images)
    with input_pipeline.create_train_iterator(config.data, global_batch_size=32, seed=5,
                                              start=3) as it:
      self.assertIsInstance(it, gather.GatherIterator)
      for k in range(3, 6):
        batch = next(it)
        # Independent: the order a fresh permutation gives, cut from the mapped pixels.
        index = batch_sampler.TrainSampler(
            num_records=len(split.labels), global_batch_size=32, image_size=72, crop_size=64,
            flip=True, lighting_std=0.1, eigvals=np.ones(3), eigvecs=np.eye(3),
            seed=5).indices(k)
        want = np.stack([pixels[i, t:t + 64, l:l + 64] for i, (t, l) in
                         zip(index, batch['crop'])])
        np.testing.assert_array_equal(batch['image'], want)
        np.testing.assert_array_equal(batch['label'], split.labels[index])

  def test_raw_feeding_takes_threads_whatever_the_need(self):
    # Eight H200s at batch 1024 read by one process on 2 cores: JPEG would take processes.
    raw = resolution.feeding('gpu', 2, 1024, 8 * 1024, raw=True)
    self.assertFalse(raw.use_processes)
    self.assertIn('raw storage, read by 2 gather threads', raw.describe())
    self.assertTrue(resolution.feeding('gpu', 2, 1024, 8 * 1024).use_processes)

  def test_dry_run_says_threads_feed_a_raw_dataset(self):
    plan = dry_run.build_plan(_config(**{'data.worker_count': -1}))
    self.assertEqual(plan.worker_count, 0)
    self.assertIn('data.worker_count -1: none, a raw dataset is read by threads', plan.threads_note)
    self.assertIn('input per host: raw storage, read by', dry_run.format_plan(plan))

  def test_jpeg_dataset_keeps_grain(self):
    config = resolution.resolve_auto(training.tiny_config(training.digits_dir()))
    self.assertFalse(input_pipeline.uses_gather(config.data))


class RawKillResumeTest(absltest.TestCase):
  """kill -9 and resume on a raw dataset, with one and with two processes.

  Both runs are compared with one uninterrupted single-process run on two devices, made
  once: the global batch sequence is the same for any process count, and a sum over two
  devices is the same two numbers added whether they sit in one process or two, so the
  two-process run too must end bitwise equal to it. The launches share one compilation
  cache, so only the first compiles.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config(**{'mesh.data': -1})
    cls.config_file = training.write_config_file(os.path.join(ROOT, 'cfg.py'), cls.config)
    cls.reference = os.path.join(ROOT, 'reference')
    done = faults.launch(cls.config_file, cls.reference, devices=2)
    assert done.returncode == 0, done.stderr[-3000:]

  def _start(self, workdir: str, log_name: str, processes: int) -> list[subprocess.Popen]:
    """launch.py as `processes` processes with 2 / processes CPU devices each."""
    log_file = open(os.path.join(ROOT, log_name), 'w')  # pylint: disable=consider-using-with
    self.addCleanup(log_file.close)
    if processes == 1:
      procs = [faults.start_launch(self.config_file, workdir, log_file, devices=2)]
    else:
      port = subprocesses.free_port()
      procs = [faults.start_launch(
          self.config_file, workdir, log_file if i == 0 else subprocess.DEVNULL,
          f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
          f'--process_id={i}', '--distributed_timeout=120', devices=1)
               for i in range(processes)]
    for proc in procs:
      self.addCleanup(lambda p=proc: p.poll() is None and (p.kill(), p.wait()))
    return procs

  def _kill_and_resume(self, processes: int) -> str:
    workdir = os.path.join(ROOT, f'killed_{processes}')
    log = os.path.join(ROOT, f'killed_{processes}.log')
    procs = self._start(workdir, os.path.basename(log), processes)
    faults.wait_for_train_step(procs[0], workdir, 5, log)  # past the checkpoint of step 3
    for proc in procs:
      proc.send_signal(signal.SIGKILL)
    for proc in procs:
      self.assertEqual(proc.wait(60), -signal.SIGKILL)
    self.assertLess(max(checkpointing.finished_steps(workdir)), STEPS)
    resumed = self._start(workdir, f'resumed_{processes}.log', processes)
    resumed_log = os.path.join(ROOT, f'resumed_{processes}.log')
    for proc in resumed:
      self.assertEqual(proc.wait(300), 0, _tail(resumed_log))
    self.assertIn('Resumed from step', _tail(resumed_log, 10**6))
    return workdir

  def _assert_same_run(self, workdir: str) -> None:
    trains, evals = faults.records(workdir)
    ref_trains, ref_evals = faults.records(self.reference)
    self.assertEqual(sorted({t[0] for t in trains}), list(range(1, STEPS + 1)))
    # The killed run's lines past its checkpoint are dropped on resume; the rest is exact.
    self.assertEqual(sorted(set(trains)), sorted(set(ref_trains)))  # floats compared exactly
    self.assertEqual(evals, ref_evals)
    for got, want in zip(faults.params_of(self.config, workdir),
                         faults.params_of(self.config, self.reference)):
      np.testing.assert_array_equal(got, want)

  def test_kill_9_and_resume_is_bitwise_the_uninterrupted_run(self):
    self._assert_same_run(self._kill_and_resume(1))

  def test_two_processes_killed_and_resumed_end_bitwise_as_one_uninterrupted(self):
    self._assert_same_run(self._kill_and_resume(2))


def _tail(path: str, chars: int = 3000) -> str:
  with open(path) as f:
    return f.read()[-chars:]

if __name__ == '__main__':
  absltest.main()
