"""alexnet_jax.core.fileio.atomic_write: the old file or the new one, never half of either."""

import os
import stat

from absl.testing import absltest

from alexnet_jax.core import fileio


class AtomicWriteTest(absltest.TestCase):

  def test_replaces_the_file_readable_by_all(self):
    path = os.path.join(self.create_tempdir().full_path, 'config.json')
    with open(path, 'w') as f:
      f.write('old')
    fileio.atomic_write(path, lambda f: f.write('new'), fsync=True)
    with open(path) as f:
      self.assertEqual(f.read(), 'new')
    self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
    self.assertEqual(os.listdir(os.path.dirname(path)), ['config.json'])

  def test_binary_mode(self):
    path = os.path.join(self.create_tempdir().full_path, 'mean.bin')
    fileio.atomic_write(path, lambda f: f.write(b'\x00\xff'), 'wb')
    with open(path, 'rb') as f:
      self.assertEqual(f.read(), b'\x00\xff')

  def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'metrics.jsonl')
    with open(path, 'w') as f:
      f.write('old')

    def half_then_fail(f):
      f.write('ne')
      raise OSError(28, 'No space left on device')

    with self.assertRaises(OSError):
      fileio.atomic_write(path, half_then_fail)
    with open(path) as f:
      self.assertEqual(f.read(), 'old')
    self.assertEqual(os.listdir(folder), ['metrics.jsonl'])


if __name__ == '__main__':
  absltest.main()
