"""Training, its dry run and its dataset checks on a raw dataset, with no flag saying so."""

import os
import shutil

from absl.testing import absltest
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.core import errors
from alexnet_jax.data import fingerprint
from alexnet_jax.data import input_pipeline
from alexnet_jax.training import dry_run
from tests.helpers import files
from tests.helpers import training


def setUpModule():
  global ROOT, RAW
  ROOT = files.make_tempdir()
  RAW = os.path.join(ROOT, 'raw')
  prepare.prepare('digits', RAW, image_size=72, progress=False, storage='raw')


def tearDownModule():
  shutil.rmtree(ROOT, ignore_errors=True)


class RawTrainingTest(absltest.TestCase):

  def test_trains_and_evaluates_on_a_raw_dataset(self):
    workdir = files.make_tempdir(self)
    config = training.tiny_config(RAW, num_train_steps=4, final_eval_crops=1)
    training.train_on_devices(config, workdir, 1)
    evals = [m for m in training.read_metrics(workdir) if m.get('kind') == 'eval']
    self.assertEqual(evals[-1]['step'], 4)
    self.assertBetween(evals[-1]['val_top1_err'], 0.0, 1.0)

  def test_the_fingerprint_holds_the_labels_file(self):
    config = training.tiny_config(RAW)
    info = input_pipeline.load_info(config.data)
    print_ = fingerprint.of_dataset(config.data, info)
    labels = np.load(os.path.join(RAW, 'train.labels.npy'))
    self.assertEqual(print_.labels['train'].tolist(), labels.tolist())
    self.assertIn('labels/val', print_.parts)
    jpeg = fingerprint.of_dataset(training.tiny_config(training.digits_dir()).data,
                                  input_pipeline.load_info(
                                      training.tiny_config(training.digits_dir()).data))
    # The same source, so the same labels in the same order; the pixels differ by the JPEG
    # error, so the statistics do, and a run does not resume across the two.
    self.assertEqual(jpeg.parts['labels/train'], print_.parts['labels/train'])
    self.assertEqual(fingerprint.differences(jpeg, print_),
                     ['mean image differs', 'PCA statistics differ'])

  def test_dry_run_names_the_storage(self):
    for folder, storage in ((RAW, 'raw'), (training.digits_dir(), 'jpeg')):
      text = dry_run.format_plan(dry_run.build_plan(training.tiny_config(folder)))
      self.assertIn(f'input: {storage} storage (dataset.json of {folder})', text)

  def test_a_raw_file_cut_short_writes_nothing_to_the_workdir(self):
    cut = os.path.join(files.make_tempdir(self), 'cut')
    shutil.copytree(RAW, cut)
    os.truncate(os.path.join(cut, 'val.u8'), 1000)
    workdir = os.path.join(files.make_tempdir(self), 'run')
    with self.assertRaisesRegex(errors.InputError, 'val.u8 is 1,000 bytes, not the '):
      training.train_on_devices(training.tiny_config(cut), workdir, 1)
    self.assertEqual([f for _, _, names in os.walk(workdir) for f in names], [])


if __name__ == '__main__':
  absltest.main()
