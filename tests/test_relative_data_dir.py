"""A relative config.data.dir is fixed at the start of a run: a resume from elsewhere keeps it.

sources.absolute_data_dir decides; the trainer stores the absolute folder in config.json.
"""

import contextlib
import json
import os

from absl.testing import absltest

from alexnet_jax.data import prepared_format
from alexnet_jax.data import sources


def _complete_dataset(folder: str) -> None:
  os.makedirs(folder)
  with open(os.path.join(folder, prepared_format.DATASET_FILE), 'w') as f:
    json.dump(dict(format=prepared_format.FORMAT, complete=True, image_size=72,
                   shards={'train': [['t', 1]], 'val': []}), f)
  for name in ('t', prepared_format.STATS_FILE):
    open(os.path.join(folder, name), 'w').close()


class AbsoluteDataDirTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.first = self.create_tempdir().full_path  # where the run was started
    self.elsewhere = self.create_tempdir().full_path  # where it is resumed from
    self.stored = os.path.join(self.first, 'data', 'digits')
    _complete_dataset(self.stored)
    self.enter_context(contextlib.chdir(self.elsewhere))

  def test_a_new_run_resolves_against_the_current_directory(self):
    self.assertEqual(sources.absolute_data_dir('data/digits', None),
                     (os.path.join(self.elsewhere, 'data', 'digits'), ''))

  def test_a_resume_from_elsewhere_keeps_the_stored_dataset_and_says_so(self):
    path, note = sources.absolute_data_dir('data/digits', self.stored)
    self.assertEqual(path, self.stored)
    self.assertIn(f'config.data.dir data/digits is relative: resuming on the dataset this run '
                  f'started with, {self.stored}', note)

  def test_a_stored_folder_gone_resolves_here(self):
    gone = os.path.join(self.first, 'moved_away')
    self.assertEqual(sources.absolute_data_dir('data/digits', gone),
                     (os.path.join(self.elsewhere, 'data', 'digits'), ''))

  def test_an_absolute_folder_is_taken_as_given(self):
    other = os.path.join(self.elsewhere, 'other')
    self.assertEqual(sources.absolute_data_dir(other, self.stored), (other, ''))


if __name__ == '__main__':
  absltest.main()
