"""Output paths: written only where absent or a regular file, refused before the work otherwise.

fileio.check_output_path and atomic_write on every kind of file-system object, and
`evaluate --output` refusing a bad path before it evaluates anything.
"""

import os
import socket
import stat
import subprocess
import sys

from absl.testing import absltest

from alexnet_jax.core import errors
from alexnet_jax.core import fileio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


class CheckOutputPathTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path

  def path(self, name: str) -> str:
    return os.path.join(self.folder, name)

  def assert_refused(self, path: str, words: str) -> None:
    with self.assertRaisesRegex(errors.InputError, words):
      fileio.check_output_path(path, '--output')
    with self.assertRaisesRegex(errors.InputError, words):
      fileio.atomic_write(path, lambda f: f.write('new'))

  def test_absent_and_regular_files_are_written(self):
    self.assertEqual(fileio.check_output_path(self.path('new.json')), self.path('new.json'))
    with open(self.path('old.json'), 'w') as f:
      f.write('old')
    fileio.atomic_write(self.path('old.json'), lambda f: f.write('new'))
    self.assertEqual(_read(self.path('old.json')), 'new')

  def test_a_symlink_is_written_through_to_its_target(self):
    with open(self.path('target.json'), 'w') as f:
      f.write('old')
    os.symlink('target.json', self.path('link.json'))
    self.assertEqual(fileio.check_output_path(self.path('link.json')), self.path('target.json'))
    fileio.atomic_write(self.path('link.json'), lambda f: f.write('new'))
    self.assertTrue(os.path.islink(self.path('link.json')))
    self.assertEqual(_read(self.path('target.json')), 'new')

  def test_a_dangling_symlink_creates_its_target(self):
    os.symlink('made.json', self.path('link.json'))
    fileio.atomic_write(self.path('link.json'), lambda f: f.write('new'))
    self.assertTrue(os.path.islink(self.path('link.json')))
    self.assertEqual(_read(self.path('made.json')), 'new')

  def test_a_folder_is_refused_and_kept(self):
    os.mkdir(self.path('dir'))
    self.assert_refused(self.path('dir'), 'is a folder, not a regular file')
    self.assertTrue(os.path.isdir(self.path('dir')))

  def test_a_fifo_is_refused_without_blocking(self):
    os.mkfifo(self.path('fifo'))
    self.assert_refused(self.path('fifo'), 'is a FIFO')
    self.assertFalse(os.path.isfile(self.path('fifo')))

  def test_a_socket_is_refused(self):
    with socket.socket(socket.AF_UNIX) as s:
      s.bind(self.path('sock'))
      self.assert_refused(self.path('sock'), 'is a socket')

  def device(self) -> str:
    """A character device (the null device's numbers) made in the test folder, so that a
    planted bug replaces this node, never /dev/null; /dev/null itself where mknod is denied
    (then only checked, never written)."""
    path = self.path('null')
    try:
      os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
      return ''
    return path

  def test_a_device_is_refused_and_stays_a_device(self):
    device = self.device()
    if not device:
      with self.assertRaisesRegex(errors.InputError, 'is a character device'):
        fileio.check_output_path('/dev/null', '--output')
      return
    self.assert_refused(device, 'is a character device')
    self.assertTrue(stat.S_ISCHR(os.stat(device).st_mode))

  def test_a_symlink_to_a_device_is_refused(self):
    device = self.device()
    if not device:
      self.skipTest('mknod needs root')
    os.symlink(device, self.path('link'))
    self.assert_refused(self.path('link'), r'null \(the target of the symlink')
    self.assertTrue(os.path.islink(self.path('link')))
    self.assertTrue(stat.S_ISCHR(os.stat(device).st_mode))

  def test_a_symlink_loop_is_refused(self):
    os.symlink('b', self.path('a'))
    os.symlink('a', self.path('b'))
    self.assert_refused(self.path('a'), 'is a symlink loop')

  def test_a_missing_parent_is_refused(self):
    with self.assertRaisesRegex(errors.InputError, 'its folder .*nowhere does not exist'):
      fileio.check_output_path(self.path('nowhere/out.json'), '--output')

  def test_a_file_as_parent_is_refused(self):
    with open(self.path('file'), 'w'):
      pass
    with self.assertRaisesRegex(errors.InputError, 'file/out.json: Not a directory'):
      fileio.check_output_path(self.path('file/out.json'), '--output')

  @absltest.skipIf(os.geteuid() == 0, 'root writes into read-only folders')
  def test_a_read_only_folder_is_refused(self):
    os.mkdir(self.path('ro'), 0o555)
    with self.assertRaisesRegex(errors.InputError, 'cannot be written: Permission denied'):
      fileio.check_output_path(self.path('ro/out.json'), '--output')


class EvaluateOutputTest(absltest.TestCase):
  """The --output check runs before the evaluation: a workdir that does not exist is not even
  looked at, so the one line is about --output."""

  def run_evaluate(self, output: str) -> subprocess.CompletedProcess:
    missing_run = os.path.join(self.create_tempdir().full_path, 'no_run')
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={missing_run}',
         f'--output={output}'], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))

  def test_a_folder_is_refused_in_one_line_before_the_work(self):
    folder = self.create_tempdir().full_path
    result = self.run_evaluate(folder)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stderr.strip().splitlines()[-1],
                     f'error: --output {folder} is a folder, not a regular file; give the path '
                     'of a file to write')
    self.assertNotIn('Traceback', result.stderr)

  def test_a_missing_parent_is_refused_before_the_work(self):
    output = os.path.join(self.create_tempdir().full_path, 'nowhere', 'result.json')
    result = self.run_evaluate(output)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertIn('its folder', result.stderr.strip().splitlines()[-1])


if __name__ == '__main__':
  absltest.main()
