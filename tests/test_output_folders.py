"""Output folders (prepare --output): a folder or absent, a symlink written through to its
target, anything else refused in one line by fileio.check_output_folder, creating nothing."""

import os
import socket
import tempfile

from absl.testing import absltest

from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.prepare import output_dir


class CheckOutputFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    self.path = os.path.join(self.folder, 'out')

  def refused(self, path: str) -> str:
    with self.assertRaises(errors.InputError) as caught:
      fileio.check_output_folder(path, '--output')
    message = str(caught.exception)
    self.assertEqual(message.splitlines(), [message])
    return message

  def test_folder_or_absent_is_accepted_and_nothing_is_made(self):
    self.assertEqual(fileio.check_output_folder(os.path.join(self.path, 'deeper'), '--output'),
                     os.path.join(self.path, 'deeper'))
    self.assertFalse(os.path.lexists(self.path))
    os.makedirs(self.path)
    self.assertEqual(fileio.check_output_folder(self.path), self.path)
    self.assertEqual(os.listdir(self.path), [])  # the write probe is gone

  def test_a_symlink_is_written_through_to_its_target(self):
    os.makedirs(self.path + '.real')
    os.symlink(self.path + '.real', self.path)
    self.assertEqual(fileio.check_output_folder(self.path), self.path + '.real')
    dangling = os.path.join(self.folder, 'dangling')
    os.symlink(os.path.join(self.folder, 'gone'), dangling)
    self.assertEqual(fileio.check_output_folder(dangling), os.path.join(self.folder, 'gone'))

  def test_each_other_kind_is_refused(self):
    with open(self.path, 'w') as f:
      f.write('x')
    self.assertEqual(self.refused(self.path), f'--output {self.path} is a regular file, not a '
                     'folder; give the path of a folder to write')
    self.assertEqual(self.refused(os.path.join(self.path, 'sub')),
                     f'--output {self.path}, a parent of {self.path}/sub, is a regular file, '
                     'not a folder; give the path of a folder to write')
    self.assertIn('/dev/null is a character device, not a folder', self.refused(os.devnull))
    fifo = os.path.join(self.folder, 'fifo')
    os.mkfifo(fifo)
    self.assertIn(f'{fifo} is a FIFO, not a folder', self.refused(fifo))
    with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX) as s:
      s.bind(os.path.join(short, 's'))
      self.assertIn('is a socket, not a folder', self.refused(os.path.join(short, 's')))
    link = os.path.join(self.folder, 'to_file')
    os.symlink(self.path, link)
    self.assertIn(f'{self.path} (the target of the symlink {link}) is a regular file',
                  self.refused(link))
    loop = os.path.join(self.folder, 'loop')
    os.symlink(loop + '.2', loop)
    os.symlink(loop, loop + '.2')
    self.assertEqual(self.refused(loop), f'--output {loop} is a symlink loop')
    self.assertEqual(self.refused(''), '--output is empty; give a folder path')

  def test_prepare_checks_its_output_with_it(self):
    with open(self.path, 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(errors.InputError, 'is a regular file, not a folder'):
      output_dir.checked_output('digits', self.path, 90)
    os.remove(self.path)
    os.symlink(self.path + '.real', self.path)
    self.assertEqual(output_dir.checked_output('digits', self.path, 90), self.path + '.real')


if __name__ == '__main__':
  absltest.main()
