"""Writing a file the program owns or the user named: checked first, then written whole or not at all.

A path is written only where it is absent or a regular file. A symlink is written
through: its target gets the new content and the link stays (the user named the
link, so the file it points at is the output). A folder, a device node, a FIFO or
a socket at the path (or at a link's target) is refused, so that no write replaces
`/dev/null` or a folder with a regular file. An output folder follows the same rule: a
folder or absent, a symlink written through to its target, anything else refused.
`check_output_path` (a file), `check_output_folder` (a folder, nothing created) and
`ensure_writable_dir` (a folder, created) refuse a bad output path before any work is
done; `atomic_write` refuses it again at the time of writing.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import IO, Any, Callable

from alexnet_jax.core import errors


def _kind(mode: int) -> str:
  """What a file-system object of st_mode `mode` is, in words."""
  for test, word in ((stat.S_ISREG, 'a regular file'), (stat.S_ISDIR, 'a folder'), (stat.S_ISCHR, 'a character device'),
                     (stat.S_ISBLK, 'a block device'), (stat.S_ISFIFO, 'a FIFO'),
                     (stat.S_ISSOCK, 'a socket')):
    if test(mode):
      return word
  return 'not a regular file'


def _target(path: str, what: str) -> str:
  """The path a write to `path` lands on: `path` itself, or a symlink's final target."""
  if not os.path.islink(path):
    return path
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise errors.InputError(f'{what} {path} is a symlink loop') from e
  return os.path.realpath(path)


def writable_file_target(path: str, what: str = 'output') -> str:
  """The regular file (or absent path) a write to `path` replaces; InputError when there is none.

  `what` names the path in the message (a flag: '--output').
  """
  path = os.fspath(path)
  if not path:
    raise errors.InputError(f'{what} is empty; give a file path')
  target = _target(path, what)
  try:
    mode = os.stat(target).st_mode
  except FileNotFoundError:
    return target
  except OSError as e:
    raise errors.InputError(f'{what} {path}: {e.strerror or e}') from e
  if not stat.S_ISREG(mode):
    via = '' if target == path else f' (the target of the symlink {path})'
    raise errors.InputError(f'{what} {target}{via} is {_kind(mode)}, not a regular file; '
                            'give the path of a file to write')
  return target


def _probe_folder(folder: str, what: str, path: str) -> None:
  """Raises InputError unless a file can be created in the existing folder `folder`."""
  try:
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.write_test_')
  except OSError as e:
    raise errors.InputError(f'{what} {path} cannot be written: {e.strerror or e} '
                            f'(in {folder})') from e
  os.close(fd)
  os.remove(probe)


def check_output_path(path: str, what: str = 'output') -> str:
  """Refuses, before any work, an output file path that cannot be written; returns its target.

  Refused: a folder, device node, FIFO or socket (also as a symlink's target), a
  symlink loop, a missing or non-folder parent, a folder this process cannot write.
  """
  target = writable_file_target(path, what)
  folder = os.path.dirname(os.path.abspath(target))
  if not os.path.isdir(folder):
    reason = 'is not a folder' if os.path.lexists(folder) else 'does not exist'
    raise errors.InputError(f'{what} {path}: its folder {folder} {reason}')
  _probe_folder(folder, what, path)
  return target


def check_output_folder(path: str, what: str = 'output') -> str:
  """Refuses, before any work, an output folder that cannot be made or written; returns it.

  The folder (or, for a symlink, its final target) must be a folder or absent, with
  its nearest existing parent a folder this process can write in. Nothing is created.
  """
  path = os.fspath(path)
  if not path:
    raise errors.InputError(f'{what} is empty; give a folder path')
  target = os.path.abspath(_target(path, what))
  via = '' if target == os.path.abspath(path) else f' (the target of the symlink {path})'
  probe = target
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  try:
    mode = os.stat(probe).st_mode
  except OSError as e:  # a dangling link above it, a folder it may not enter
    raise errors.InputError(f'{what} {path} cannot be written: {e.strerror or e}') from e
  if not stat.S_ISDIR(mode):
    where = f'{target}{via} is' if probe == target else f'{probe}, a parent of {target}, is'
    raise errors.InputError(f'{what} {where} {_kind(mode)}, not a folder; give the path of a '
                            'folder to write')
  _probe_folder(probe, what, path)
  return target


def ensure_writable_dir(path: str, probe_name: str = '.write_test') -> None:
  """Creates the output folder `path` (and its parents) and proves it writable, before any work.

  Raises OSError as the file system words it (File exists: something not a folder
  is there; Not a directory: a file where a parent should be; Permission denied);
  each command wraps it in its own one-line message naming its flag.
  """
  os.makedirs(path, exist_ok=True)
  fd, probe = tempfile.mkstemp(dir=path, prefix=probe_name + '.')
  os.close(fd)
  os.remove(probe)


def atomic_write(path: str, write: Callable[[IO[Any]], Any], mode: str = 'w', *,
                 fsync: bool = False) -> None:
  """Calls `write(f)` on a temporary file beside `path`'s target, then renames it there.

  A symlink at `path` is written through (its target is replaced, the link kept);
  anything there but a regular file is refused with InputError, untouched.
  The file gets mode 0644 like the workdir's other files (mkstemp creates 0600).
  fsync: also flush it to the disk before the rename (for a file being replaced
  whose old content is about to be dropped).
  """
  path = writable_file_target(path)
  folder = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
