"""A run's dataset identity: the fingerprint, the resume check, and a run's length and profile.

The fingerprint's labels are checked against the labels of fakes.read_split (which
decodes every record); a re-prepared dataset with 40 val labels changed is
refused on resume in one line that counts them; a run made before fingerprints
existed is accepted and recorded. Also on resume: a config shorter than the
checkpoint is refused with config.json untouched, and a profile window outside
the run says so.
"""

import json
import os
import shutil

from absl.testing import absltest
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import fingerprint
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import prepared_format
from alexnet_jax.storage import workdir_files
from alexnet_jax.training import trainer
from tests import fakes
from tests import relabeled_data
from tests import trained_run

CHANGED = 40


def _data_config(data_dir: str):
  return trained_run.tiny_config(data_dir).data


class FingerprintTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = os.path.join(os.path.dirname(trained_run.workdir()), 'data')
    cls.info = input_pipeline.load_info(_data_config(cls.data))

  def test_labels_are_the_records_labels(self):
    print_ = fingerprint.of_dataset(_data_config(self.data), self.info)
    for split in ('train', 'val'):
      _, labels = fakes.read_split(self.data, split)
      np.testing.assert_array_equal(print_.labels[split], labels)
    self.assertEqual(fingerprint.differences(print_, print_), [])

  def test_changed_val_labels_are_counted(self):
    other = relabeled_data.relabeled_copy(self.data, self.create_tempdir().full_path + '/d',
                                          'val', CHANGED, self.info.num_classes)
    config = _data_config(other)
    before = fingerprint.of_dataset(_data_config(self.data), self.info)
    after = fingerprint.of_dataset(config, input_pipeline.load_info(config))
    size = self.info.split_sizes['val']
    self.assertEqual(fingerprint.differences(before, after),
                     [f'val labels differ ({CHANGED} of {size})'])
    self.assertNotEqual(before.digest, after.digest)
    self.assertEqual(before.for_split('train').digest, after.for_split('train').digest)

  def test_changed_statistics_are_named(self):
    other = self.create_tempdir().full_path + '/d'
    shutil.copytree(self.data, other)
    path = os.path.join(other, prepared_format.STATS_FILE)
    mean, eigvals, eigvecs = prepared_format.read_stats(path)
    prepared_format.write_stats(path, {'mean_image': mean + 1, 'eigvals': eigvals,
                                       'eigvecs': eigvecs})
    config = _data_config(other)
    before = fingerprint.of_dataset(_data_config(self.data), self.info)
    after = fingerprint.of_dataset(config, input_pipeline.load_info(config))
    self.assertEqual(fingerprint.differences(before, after), ['mean image differs'])


class ResumeTest(absltest.TestCase):
  """Resumes of a copy of the shared finished run (4 steps, checkpoints 2 and 4)."""

  def copy(self, relabel: int = 0) -> tuple[str, str]:
    root = self.create_tempdir().full_path
    workdir = shutil.copytree(trained_run.workdir(), os.path.join(root, 'run'))
    data = os.path.join(os.path.dirname(trained_run.workdir()), 'data')
    if relabel:
      data = relabeled_data.relabeled_copy(data, os.path.join(root, 'data'), 'val', relabel, 10)
    return workdir, data

  def resume(self, workdir: str, data: str, **overrides) -> dict:
    config = trained_run.tiny_config(data)
    for key, value in overrides.items():
      node = config
      *path, last = key.split('.')
      for name in path:
        node = node[name]
      node[last] = value
    return trainer.train_and_evaluate(config, workdir)

  def test_the_same_dataset_resumes(self):
    workdir, data = self.copy()
    self.assertEqual(self.resume(workdir, data)['step'], trained_run.STEPS)

  def test_changed_val_labels_are_refused(self):
    workdir, data = self.copy(relabel=CHANGED)
    with open(os.path.join(workdir, 'config.json')) as f:
      before = f.read()
    with self.assertRaisesRegex(errors.InputError,
                                f'val labels differ \\({CHANGED} of 364\\)') as caught:
      self.resume(workdir, data)
    self.assertNotIn('\n', str(caught.exception))
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(f.read(), before)

  def test_a_run_made_before_fingerprints_is_accepted_and_recorded(self):
    workdir, data = self.copy(relabel=CHANGED)
    path = os.path.join(workdir, workdir_files.INFO_FILE)
    with open(path) as f:
      stored = json.load(f)
    del stored['fingerprint']
    with open(path, 'w') as f:
      json.dump(stored, f)
    os.remove(os.path.join(workdir, workdir_files.LABELS_FILE))
    with self.assertLogs('absl', 'INFO') as logs:
      self.resume(workdir, data)
    self.assertTrue(any('no dataset fingerprint' in line for line in logs.output), logs.output)
    recorded = workdir_files.load_fingerprint(workdir)
    self.assertIsNotNone(recorded)
    _, labels = fakes.read_split(data, 'val')
    np.testing.assert_array_equal(recorded.labels['val'], labels)

  def test_a_shorter_run_than_its_checkpoint_is_refused(self):
    workdir, data = self.copy()
    with open(os.path.join(workdir, 'config.json')) as f:
      before = f.read()
    with self.assertRaisesRegex(errors.InputError,
                                f'is at step {trained_run.STEPS}, past the 2 steps'):
      self.resume(workdir, data, num_train_steps=2)
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(f.read(), before)

  def test_a_profile_window_outside_the_run_is_named(self):
    workdir, data = self.copy()
    with self.assertLogs('absl', 'WARNING') as logs:
      self.resume(workdir, data, **{'log.profile_steps': (10, 12)})
    self.assertTrue(any('log.profile_steps (10, 12) starts after the run\'s last step 4: '
                        'nothing is profiled' in line for line in logs.output), logs.output)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'profile')))


if __name__ == '__main__':
  absltest.main()
