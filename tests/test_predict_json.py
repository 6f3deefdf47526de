"""predict --json: one JSON object per image and line, whose numbers are the model's softmax.

The probabilities are recomputed here: the center view cut and mean-subtracted in
numpy, the network's logits turned into probabilities by a numpy softmax.
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import jax
import numpy as np
from PIL import Image

from alexnet_jax import predict
from alexnet_jax import prepare
from alexnet_jax.data import decoding
from alexnet_jax.evaluation import finished_run
from tests import trained_run
from tests.helpers import REPO


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


class PredictJsonTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = trained_run.workdir()
    cls.trained = finished_run.load_run(cls.workdir)

  def setUp(self):
    super().setUp()
    folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.images, self.paths = [], []
    for name in ('a.png', 'b.png'):
      image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
      path = os.path.join(folder, name)
      Image.fromarray(image).save(path)  # lossless: read back exactly
      self.images.append(image)
      self.paths.append(path)
    self.bad = os.path.join(folder, 'notes.jpg')
    with open(self.bad, 'w') as f:
      f.write('not an image')

  def cli(self, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={self.workdir}', '--json',
         *args], cwd=REPO, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))

  def center_probabilities(self, image: np.ndarray) -> np.ndarray:
    """Softmax of the logits of the center view, the view cut and normalised here."""
    data = self.trained.config.data
    stored = decoding.resize_center_crop(image, data.image_size)  # as prepare stores it
    c, mid = data.crop_size, (data.image_size - data.crop_size) // 2
    view = (stored[mid:mid + c, mid:mid + c].astype(np.float32)
            - self.trained.mean_image[mid:mid + c, mid:mid + c])
    logits = self.trained.model.apply({'params': self.trained.params}, view[None], train=False)
    return softmax(np.asarray(jax.device_get(logits), np.float64))[0]

  def test_one_line_per_image_in_order_with_the_softmax_probabilities(self):
    result = self.cli('--crops=1', self.paths[0], self.bad, self.paths[1])
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stdout.splitlines()
    self.assertLen(lines, 3)  # nothing but the objects on stdout
    records = [json.loads(line) for line in lines]
    self.assertEqual([r['image'] for r in records], [self.paths[0], self.bad, self.paths[1]])
    self.assertEqual(records[1], {
        'image': self.bad, 'error': f'cannot read image {self.bad}: not an image in a format '
                                    'Pillow reads'})
    for record, image in zip((records[0], records[2]), self.images):
      self.assertEqual(record['step'], trained_run.STEPS)
      self.assertEqual(record['crops'], 1)
      want = self.center_probabilities(image)
      order = np.argsort(-want, kind='stable')[:5]
      labels = [label for label, _ in record['top5']]
      probs = np.array([p for _, p in record['top5']])
      self.assertEqual(labels, order.tolist())
      np.testing.assert_allclose(probs, want[order], rtol=1e-4, atol=1e-7)
      self.assertLessEqual(probs.sum(), 1 + 1e-6)
      self.assertTrue(np.all(np.diff(probs) <= 0))
      # The digits' class names, and their names in words.
      self.assertEqual(record['names'], [str(label) for label in labels])
      self.assertEqual(record['descriptions'], [prepare.DIGIT_NAMES[label] for label in labels])
    # stderr as without --json: each bad image, then the count.
    self.assertEqual(result.stderr.splitlines()[-2:], [
        f'error: cannot read image {self.bad}: not an image in a format Pillow reads',
        'error: 1 of 3 images could not be read (listed above); 2 classified'])
    self.assertNotIn('Traceback', result.stderr)

  def test_names_without_descriptions_where_the_dataset_has_none(self):
    # Class names that are their own descriptions (folders named by class): no descriptions.
    top = [predict.ClassScore(3, 0.5, 'n3', 'n3'), predict.ClassScore(1, 0.25, 'n1', 'n1')]
    self.assertEqual(predict.json_record('x.png', top, step=4, crops=10),
                     {'image': 'x.png', 'step': 4, 'crops': 10, 'top5': [[3, 0.5], [1, 0.25]],
                      'names': ['n3', 'n1']})


if __name__ == '__main__':
  absltest.main()
