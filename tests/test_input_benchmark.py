"""benchmarks/input_pipeline.py: its generated images and its rows, on a tiny run."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from benchmarks import input_formats_data
from tests.helpers import REPO
from tests.helpers import subprocesses

ROW_KEYS = {'format', 'threads', 'workers', 'images', 'batch_size', 'images_per_cpu_second',
            'main_cpu_us_per_image', 'main_read_cpu_us_per_image', 'images_per_second'}


class PhotoLikeTest(absltest.TestCase):

  def test_images_vary_smoothly_and_differ(self):
    rng = np.random.default_rng(0)
    a, b = input_formats_data.photo_like(rng, 64), input_formats_data.photo_like(rng, 64)
    self.assertEqual((a.shape, a.dtype), ((64, 64, 3), np.uint8))
    self.assertGreater(a.std(), 15)  # not flat
    self.assertFalse(np.array_equal(a, b))
    # Neighbours are close (gradients and soft shapes), unlike noise: mean step < 1/4 of spread.
    step = np.abs(np.diff(a.astype(np.int16), axis=1)).mean()
    self.assertLess(step, a.std() / 4)


class RowsTest(absltest.TestCase):

  def test_both_storages_prepared_and_timed(self):
    out = os.path.join(self.create_tempdir().full_path, 'rows.json')
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.input_pipeline', '--num_images=48',
         '--image_size=32', '--crop_size=24', '--batch_size=8', '--batches=3', '--warmup=1',
         '--threads=1,2', '--workers=', f'--json={out}'],
        cwd=REPO, env=subprocesses.subprocess_env(JAX_PLATFORMS='cpu'), capture_output=True,
        text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    with open(out) as f:
      rows = json.load(f)['rows']
    self.assertEqual([(r['format'], r['threads']) for r in rows],
                     [('jpeg', 1), ('jpeg', 2), ('raw', 1), ('raw', 2)])
    for row in rows:
      self.assertEqual(set(row), ROW_KEYS)
      self.assertEqual(row['images'], 24)
      self.assertGreater(row['images_per_cpu_second'], 0)
      self.assertGreaterEqual(row['main_read_cpu_us_per_image'], row['main_cpu_us_per_image'])
    self.assertIn('img/CPU-s', proc.stdout)


if __name__ == '__main__':
  absltest.main()
