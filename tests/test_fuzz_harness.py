"""The fuzz harness's own properties: what it counts as a change the user did not ask for."""

import os

from absl.testing import absltest

from tests.fuzz import inputs
from tests.fuzz import runner


class ChangesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_a_named_output_may_be_written(self):
    output = os.path.join(self.root, 'result.json')
    before = runner.snapshot(self.root)
    with open(output, 'w') as f:
      f.write('{}')
    self.assertEqual(runner.changes(before, runner.snapshot(self.root), [output]), [])

  def test_a_special_file_named_as_output_must_stay_what_it_was(self):
    output = os.path.join(self.root, 'out')
    os.mkfifo(output)
    before = runner.snapshot(self.root)
    os.remove(output)
    with open(output, 'w') as f:
      f.write('replaced')
    self.assertEqual(runner.changes(before, runner.snapshot(self.root), [output]), [output])

  def test_the_device_kind_is_made_in_the_case_folder_where_allowed(self):
    path = inputs.make_fs_object(os.path.join(self.root, 'target'), 'devnull')
    if path == os.devnull:  # not root: the harness cannot replace /dev/null either
      self.assertNotEqual(os.geteuid(), 0)
      return
    self.assertEqual(os.path.dirname(path), self.root)
    self.assertTrue(os.path.exists(path) and not os.path.isfile(path))


if __name__ == '__main__':
  absltest.main()
