"""The commands on an imported run: import_weights and predict as a user runs them, and
evaluate over a prepared dataset (their refusals of bad input are in tests/test_bad_input.py).

evaluate's loss over a split is compared with the cross-entropy that an independently
written torchvision-layout network (tests/helpers/torch_alexnet.py) gives on the same
stored images with torchvision's preprocessing.
"""

import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import torch

from alexnet_jax import prepare
from alexnet_jax.evaluation import checkpoint_eval
from tests.helpers import REPO
from tests.helpers import files
from tests.helpers import images as test_images
from tests.helpers import subprocesses
from tests.helpers import torch_alexnet

CLASSES = 4


def run_command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        cwd=REPO, env=subprocesses.subprocess_env(), timeout=300, check=False)


def image_folder(root: str, seed: int = 0) -> None:
  """train/ and val/ of CLASSES folders class_0.. with one 256x256 photo-like PNG each."""
  rng = np.random.default_rng(seed)
  for split in ('train', 'val'):
    for label in range(CLASSES):
      folder = os.path.join(root, split, f'class_{label}')
      os.makedirs(folder)
      coarse = rng.uniform(0, 255, (8, 8, 3)).repeat(32, 0).repeat(32, 1)
      torch_alexnet.save_png(coarse.astype(np.uint8), os.path.join(folder, 'a.png'))


class ImportedRunCommandsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = files.make_tempdir()
    torch.manual_seed(2)
    cls.net = torch_alexnet.he_init(
        torch_alexnet.TorchvisionAlexNet(CLASSES, (8, 16, 24, 16, 16), 32)).eval()
    cls.pth = os.path.join(cls.tmp, 'alexnet.pth')
    torch.save(cls.net.state_dict(), cls.pth)
    cls.workdir = os.path.join(cls.tmp, 'run')
    cls.imported = run_command('alexnet_jax.import_weights', '--source=torchvision',
                               f'--input={cls.pth}', f'--workdir={cls.workdir}')

  def test_import_command_writes_a_run(self):
    self.assertEqual(self.imported.returncode, 0, self.imported.stderr)
    self.assertIn('torchvision weights as a run at step 0', self.imported.stdout)
    for name in ('config.json', 'dataset_info.json', 'mean_image.npy', 'checkpoints/0'):
      self.assertTrue(os.path.exists(os.path.join(self.workdir, name)), name)

  def test_predict_command_on_the_imported_run(self):
    image = os.path.join(self.tmp, 'photo.png')
    torch_alexnet.save_png(np.full((300, 260, 3), 90, np.uint8), image)
    done = run_command('alexnet_jax.predict', f'--workdir={self.workdir}', '--crops=1', image)
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn('checkpoint step 0', done.stdout)
    self.assertIn('class_', done.stdout)

  def test_evaluate_loss_equals_torch_cross_entropy(self):
    root, data = os.path.join(self.tmp, 'folder'), os.path.join(self.tmp, 'prepared')
    image_folder(root)
    prepare.prepare(root, data, image_size=256, progress=False)
    result = checkpoint_eval.evaluate_run(self.workdir, crops=1, data_dir=data, progress=False)
    stored, labels = test_images.read_split(data, 'val')
    with torch.no_grad():
      logits = self.net(torch_alexnet.torchvision_input(np.stack(stored)))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    self.assertEqual(result.count, CLASSES)
    self.assertAlmostEqual(result.loss, loss, delta=1e-4)
    top1_wrong = (logits.argmax(-1).numpy() != np.asarray(labels)).mean()
    self.assertAlmostEqual(result.top1_err, top1_wrong)


if __name__ == '__main__':
  absltest.main()
