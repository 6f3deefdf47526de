"""predict with bad image files among good ones: every good image classified, each bad one a line.

Also `--step=best`, accepted as evaluate accepts it. A FIFO given as an image must be
refused at once (a read of it would block until a writer comes), so every command runs
under a timeout.
"""

import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
from PIL import Image

from alexnet_jax import predict
from alexnet_jax.core import errors
from alexnet_jax.evaluation import finished_run
from tests import trained_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PredictBadImagesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = trained_run.workdir()

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.good = []
    for name in ('a.png', 'b.png'):
      path = os.path.join(self.folder, name)
      Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
      self.good.append(path)
    self.zero = os.path.join(self.folder, 'zero.JPEG')
    open(self.zero, 'wb').close()
    self.fifo = os.path.join(self.folder, 'pipe.JPEG')
    os.mkfifo(self.fifo)

  def cli(self, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={self.workdir}', *args],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))

  def test_good_images_are_classified_and_each_bad_one_reported(self):
    result = self.cli('--crops=1', self.good[0], self.zero, self.fifo, self.folder, self.good[1])
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    for path in self.good:
      self.assertIn(f'{path} (center crop):', result.stdout)
    errors_ = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    self.assertEqual(errors_, [
        f'error: cannot read image {self.zero}: not an image in a format Pillow reads',
        f'error: cannot read image {self.fifo}: it is not a regular file (a FIFO, socket or '
        'device)',
        f'error: cannot read image {self.folder}: it is a folder',
        'error: 3 of 5 images could not be read (listed above); 2 classified'])
    # The good ones get what predict gives them alone.
    _, alone = predict.predict_with_run(self.workdir, self.good, crops=1)
    first = alone[0][1][0]
    self.assertIn(f'  1. {first.prob:7.2%}  {first.name}', result.stdout)

  def test_a_fifo_is_refused_without_reading(self):
    with self.assertRaisesRegex(errors.InputError, 'not a regular file'):
      predict.read_image(self.fifo, 32)

  def test_step_best_is_accepted(self):
    config = finished_run.load_config(self.workdir)
    best = finished_run.choose_step(self.workdir, config, finished_run.BEST)
    result = self.cli('--step=best', '--crops=1', self.good[0])
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn(f'checkpoint step {best}:', result.stdout)
    run, _ = predict.predict_with_run(self.workdir, self.good[:1], crops=1, step='best')
    self.assertEqual(run.step, best)


if __name__ == '__main__':
  absltest.main()
