"""Checkpoint entries that are neither regular files nor folders: damage found before a read.

Orbax writes only regular files and folders. A FIFO, a socket, a dangling link or a link
loop anywhere in a checkpoint (in state/, where orbax reads only at restore) is found
by a stat of each entry: a resume moves the checkpoint to damaged/ and goes on from the
one before it, a reader refuses in one line naming the entry. Without the check a FIFO
blocks the restore forever (the tests bound it with an alarm).
"""

import contextlib
import os
import signal
import socket
import tempfile

from absl.testing import absltest
import jax.numpy as jnp

from alexnet_jax.storage import checkpoint_files
from alexnet_jax.storage import checkpointing


class Blocked(BaseException):
  """A read still going at the deadline: a BaseException, so that no `except Exception` of
  the code under test takes it for a damaged file."""


@contextlib.contextmanager
def deadline(seconds: int):
  """Raises Blocked in the main thread after `seconds` (a blocked open of a FIFO too)."""
  def expire(signum, frame):
    raise Blocked(f'still reading after {seconds} s')
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _fifo(path: str) -> None:
  os.mkfifo(path)


def _socket(path: str) -> None:
  folder = tempfile.mkdtemp()  # a socket's path has at most 107 bytes: bound short, then moved
  with socket.socket(socket.AF_UNIX) as s:
    s.bind(os.path.join(folder, 's'))
  os.rename(os.path.join(folder, 's'), path)
  os.rmdir(folder)


def _dangling(path: str) -> None:
  os.symlink(path + '.gone', path)


def _loop(path: str) -> None:
  os.symlink(path + '.loop', path)
  os.symlink(path, path + '.loop')


ODD = {'fifo': (_fifo, 'is a FIFO, not a regular file'),
       'socket': (_socket, 'is a socket, not a regular file'),
       'dangling link': (_dangling, 'cannot be read (FileNotFoundError'),
       'link loop': (_loop, 'cannot be read (OSError: [Errno 40]')}


class OddCheckpointEntriesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = os.path.join(self.create_tempdir().full_path, 'checkpoints')
    with checkpointing.Checkpointer(self.folder, async_save=False) as ckpt:
      for step in (1, 2):
        ckpt.save(step, {'w': jnp.full((2,), step, jnp.float32)}, meta={'epoch': step},
                  val_error=1.0 / step)
    self.target = os.path.join(self.folder, '2', 'state', '_METADATA')

  def replace(self, make) -> None:
    if os.path.lexists(self.target):
      os.remove(self.target)
    make(self.target)

  def test_each_kind_is_found_by_a_stat(self):
    for name, (make, words) in ODD.items():
      with self.subTest(name):
        self.replace(make)
        found = checkpoint_files.unreadable_open_files(self.folder)
        self.assertEqual([(s, p) for s, p, _ in found if p == self.target], [(2, self.target)])
        self.assertStartsWith(next(w for _, p, w in found if p == self.target), words)
        for path in (self.target, self.target + '.loop'):
          if os.path.lexists(path):
            os.remove(path)
        with open(self.target, 'w') as f:
          f.write('{}')

  def test_a_link_to_a_regular_file_is_read_as_that_file(self):
    os.rename(self.target, self.target + '.real')
    os.symlink(self.target + '.real', self.target)
    self.assertEqual(checkpoint_files.unreadable_open_files(self.folder), [])

  def test_resume_moves_it_aside_and_restores_the_one_before(self):
    for name, (make, _) in ODD.items():
      with self.subTest(name):
        self.setUp()
        self.replace(make)
        with deadline(60), checkpointing.Checkpointer(self.folder, async_save=False) as ckpt:
          state, meta = ckpt.restore({'w': jnp.zeros((2,), jnp.float32)})
          self.assertEqual(ckpt.all_steps(), [1])
        self.assertEqual((state['w'].tolist(), meta), ([1.0, 1.0], {'epoch': 1}))
        moved = os.listdir(os.path.join(self.folder, checkpointing.DAMAGED_DIR))
        self.assertEqual([m.split('-')[0] for m in moved], ['2'])

  def test_a_reader_refuses_in_one_line_without_blocking(self):
    self.replace(_fifo)
    with deadline(60), self.assertRaises(checkpointing.CheckpointError) as caught:
      checkpointing.Checkpointer(self.folder, read_only=True)
    message = str(caught.exception)
    self.assertEqual(message.splitlines(), [message])
    self.assertIn(f'{self.target} is a FIFO, not a regular file', message)
    self.assertEqual(sorted(os.listdir(self.folder)), ['1', '2'])


if __name__ == '__main__':
  absltest.main()
