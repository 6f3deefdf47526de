"""The arithmetic behind the GPU figures: benchmarks/launch_run.py and benchmarks/gpu_summary.py."""

import json
import os

from absl.testing import absltest

from benchmarks import gpu_summary
from benchmarks import launch_run


def _write_metrics(workdir, records):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


class LaunchRunTest(absltest.TestCase):

  def test_end_to_end_rate_skips_the_compiling_window(self):
    batch = 10
    train = [{'step': 20, 'images_per_sec': 5.0},  # the window with the compilation
             {'step': 40, 'images_per_sec': 200.0},
             {'step': 60, 'images_per_sec': 400.0},
             {'step': 70, 'images_per_sec': 100.0}]
    rates = launch_run.train_rates(train, batch)
    # 200, 200 and 100 images in 1, 0.5 and 1 s.
    self.assertAlmostEqual(rates['images_per_sec'], (200 + 200 + 100) / (1 + 0.5 + 1))
    self.assertEqual(rates['window_median_images_per_sec'], 200.0)
    self.assertEqual((rates['window_min_images_per_sec'], rates['window_max_images_per_sec']),
                     (100.0, 400.0))
    self.assertEqual(rates['steps_timed'], 50)
    self.assertEqual(rates['first_window_images_per_sec'], 5.0)

  def test_summary_of_a_run(self):
    workdir = self.create_tempdir().full_path
    _write_metrics(workdir, [
        {'step': 2, 'kind': 'train', 'loss': 2.5, 'top1_err': 0.9, 'images_per_sec': 10.0},
        {'step': 4, 'kind': 'train', 'loss': 2.0, 'top1_err': 0.8, 'images_per_sec': 20.0},
        {'step': 4, 'kind': 'eval', 'val_loss': None, 'val_top1_err': 1.0}])
    for name in ('2', '4', '4.orbax-checkpoint-tmp'):
      os.makedirs(os.path.join(workdir, 'checkpoints', name))
    summary = launch_run.summarize_run(workdir, batch=4)
    self.assertEqual(summary['checkpoint_steps'], [2, 4])
    self.assertEqual((summary['loss_first'], summary['loss_last']), (2.5, 2.0))
    self.assertTrue(summary['loss_falling'])
    self.assertTrue(summary['all_losses_finite'])
    self.assertIsNone(summary['eval']['val_loss'])
    self.assertAlmostEqual(summary['images_per_sec'], 20.0)

  def test_a_nan_loss_is_not_falling(self):
    workdir = self.create_tempdir().full_path
    _write_metrics(workdir, [
        {'step': 2, 'kind': 'train', 'loss': 2.5, 'images_per_sec': 10.0},
        {'step': 4, 'kind': 'train', 'loss': float('nan'), 'images_per_sec': 20.0}])
    summary = launch_run.summarize_run(workdir, batch=4)
    self.assertFalse(summary['all_losses_finite'])
    self.assertFalse(summary['loss_falling'])
    self.assertEqual(summary['checkpoint_steps'], [])


class GpuSummaryTest(absltest.TestCase):

  def test_fractions_of_the_peaks(self):
    out = self.create_tempdir().full_path
    gflop = 4.35
    rows = [{'net': 'paper', 'dtype': 'bfloat16', 'variant': 'shipped', 'batch': b,
             'jax_img_s': rate, 'train_gflop_per_image': gflop, 'compile_s': 1.0}
            for b, rate in ((256, 50_000.0), (512, 80_000.0))]
    with open(os.path.join(out, 'step_jax.json'), 'w') as f:
      json.dump({'peaks': {'bfloat16': 700_000.0}, 'rows': rows}, f)
    text = gpu_summary.table(out)
    tflops = 80_000 * gflop / 1e3  # 348 TFLOP/s
    self.assertIn(f'{tflops:9.1f}{tflops / 700:7.0%}{tflops / 989.5:7.0%}', text)
    self.assertIn('best bf16 paper step: 80,000 img/s at batch 512 (goal 16,000: met)', text)

  def test_missing_parts_are_left_out(self):
    text = gpu_summary.table(self.create_tempdir().full_path)
    self.assertIn('JAX train step', text)
    self.assertNotIn('launch.py end to end', text)


if __name__ == '__main__':
  absltest.main()
