"""Training on a raw-pixel prepared dataset: the gather feeds it, and a kill -9 loses nothing.

The digits set is prepared with --format=raw (the real prepare, the real files); the
train iterator is checked against the memory-mapped pixels, and a launch.py run killed
with SIGKILL and resumed ends bitwise equal to an uninterrupted one.
"""

import os
import shutil
import signal
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

  def test_kill_9_and_resume_is_bitwise_the_uninterrupted_run(self):
    config = _config()
    config_file = training.write_config_file(os.path.join(ROOT, 'cfg.py'), config)
    reference = os.path.join(ROOT, 'reference')
    done = faults.launch(config_file, reference)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])

    workdir = os.path.join(ROOT, 'killed')
    log = os.path.join(ROOT, 'killed.log')
    with open(log, 'w') as log_file:
      proc = faults.start_launch(config_file, workdir, log_file)
      try:
        faults.wait_for_train_step(proc, workdir, 5, log)  # past the checkpoint of step 3
        proc.send_signal(signal.SIGKILL)
      finally:
        proc.wait(60)
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    self.assertLess(max(checkpointing.finished_steps(workdir)), STEPS)
    resumed = faults.launch(config_file, workdir)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])

    trains, evals = faults.records(workdir)
    ref_trains, ref_evals = faults.records(reference)
    self.assertEqual(sorted({t[0] for t in trains}), list(range(1, STEPS + 1)))
    # The killed run's lines past its checkpoint are dropped on resume; the rest is exact.
    self.assertEqual(sorted(set(trains)), sorted(set(ref_trains)))  # floats compared exactly
    self.assertEqual(evals, ref_evals)
    for got, want in zip(faults.params_of(config, workdir), faults.params_of(config, reference)):
      np.testing.assert_array_equal(got, want)


if __name__ == '__main__':
  absltest.main()
