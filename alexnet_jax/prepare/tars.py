"""The official ILSVRC-2012 tars: their checks and their reader.

A tar is trusted only once its listing reaches the end-of-archive marker and it
is not compressed; each `<wnid>.tar` inside the train tar must be a whole tar,
and is read in place (nothing extracted) when its part is converted.
"""

from __future__ import annotations

import os
import tarfile
from typing import BinaryIO, Iterator, Protocol, Sequence

from alexnet_jax.core import errors

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
# Magic numbers of compressed files that may carry a .tar name (a plain tar has none).
_COMPRESSED = ((b'\x1f\x8b', 'gzip', 'gunzip'), (b'BZh', 'bzip2', 'bunzip2'),
               (b'\xfd7zXZ\x00', 'xz', 'unxz'), (b'\x28\xb5\x2f\xfd', 'zstd', 'unzstd'))
# A tar ends with two zero blocks (POSIX ustar); all that follows them is zero padding.
_TAR_END = 2 * tarfile.BLOCKSIZE
_COPY_AGAIN = 'copy the complete file again'


class _Seekable(Protocol):
  """An open tar: a file, or a `_Window` onto a member of one."""

  def seek(self, position: int, whence: int = os.SEEK_SET) -> int: ...

  def read(self, n: int = -1) -> bytes: ...


def source_files(folder: str) -> dict[str, int | None]:
  """Sizes of the official tars in `folder` (None: absent): what dataset.json records of them.

  Size, not modification time: a copy of the same file (cp, a restore) has a new
  time but the same bytes; a cut copy or another subset has another size.
  """
  sizes = {}
  for name in (TRAIN_TAR, VAL_TAR):
    path = os.path.join(folder, name)
    sizes[name] = os.path.getsize(path) if os.path.isfile(path) else None
  return sizes


def _read_at(f: _Seekable, offset: int, size: int) -> bytes:
  f.seek(offset)
  return f.read(size)


def _check_not_compressed(what: str, head: bytes) -> None:
  for magic, kind, tool in _COMPRESSED:
    if head.startswith(magic):
      raise errors.DamagedSourceError(
          f'{what} is a {kind}-compressed file, not a plain tar (the official ILSVRC-2012 '
          f'tars are uncompressed): decompress it ({tool}) into a plain tar, or copy the '
          'original file')


def _check_tar_end(f: _Seekable, what: str, offset: int, size: int,
                   members: Sequence[tarfile.TarInfo]) -> None:
  """Raises DamagedSourceError unless the tar `f` (`size` bytes) ends at `offset`.

  tarfile stops listing without a word at a header that is cut short or damaged
  (and past the end of the file), so a cut archive reads as a shorter one: only
  the end-of-archive marker at `offset`, where the listing stopped, shows that
  every member was seen.
  """
  tail = _read_at(f, offset, _TAR_END)
  if len(tail) == _TAR_END and not tail.strip(b'\0'):
    return
  last = members[-1] if members else None
  if last is not None and last.offset_data + last.size > size:
    have = max(size - last.offset_data, 0)
    raise errors.DamagedSourceError(
        f'{what} is cut short: it ends inside the data of {last.name} ({have:,} of its '
        f'{last.size:,} bytes are there); {_COPY_AGAIN}')
  if tail.strip(b'\0') and len(tail) >= tarfile.BLOCKSIZE:  # a whole block, but no header
    raise errors.DamagedSourceError(
        f'{what} holds a damaged header at byte {offset:,} (after {len(members)} '
        f'member{"" if len(members) == 1 else "s"}): the file is corrupt; {_COPY_AGAIN}')
  where = 'inside a member header' if tail.strip(b'\0') else 'before its end-of-archive marker'
  whole = f'{len(members)} whole member{"" if len(members) == 1 else "s"}'
  raise errors.DamagedSourceError(
      f'{what} is cut short: it ends {where} (at byte {size:,}, after {whole}); {_COPY_AGAIN}')


def tar_members(path: str) -> list[tarfile.TarInfo]:
  """The members of the plain tar at `path`, once its whole listing, to the end, is read."""
  with open(path, 'rb') as f:
    size = os.fstat(f.fileno()).st_size
    _check_not_compressed(path, f.read(tarfile.BLOCKSIZE))
    f.seek(0)
    try:
      archive = tarfile.open(fileobj=f, mode='r:')
    except tarfile.TarError as e:
      raise errors.DamagedSourceError(f'{path} is not a tar archive ({e}); '
                                      f'{_COPY_AGAIN}') from e
    try:
      archive.getmembers()
    except tarfile.TarError as e:  # tarfile's 'unexpected end of data': a cut inside a member
      _check_tar_end(f, path, archive.offset, size, archive.members)
      raise errors.DamagedSourceError(f'{path} is damaged ({e}); {_COPY_AGAIN}') from e
    _check_tar_end(f, path, archive.offset, size, archive.members)
  return archive.members


def check_synset_tar(f: BinaryIO, train_tar: str, member: tarfile.TarInfo) -> None:
  """A `<wnid>.tar` member must be a whole tar: a header first, its end marker last.

  Reads two blocks per member: the images are read (and the rest of the member
  checked, `read_synset_tar`) when the part is converted.
  """
  what = f'{member.name} in {train_tar}'
  head = _read_at(f, member.offset_data, tarfile.BLOCKSIZE)
  _check_not_compressed(what, head)
  try:
    tarfile.TarInfo.frombuf(head, tarfile.ENCODING, 'surrogateescape')
  except tarfile.EOFHeaderError as e:  # a zero block first: a tar of nothing
    raise errors.DamagedSourceError(f'{what} is an empty tar: its synset has no images; '
                                    f'{_COPY_AGAIN}') from e
  except tarfile.HeaderError as e:
    raise errors.DamagedSourceError(
        f'{what} is not a tar archive ({e or "no header"}): each member of the official train '
        f'tar is a tar of one synset\'s JPEGs; {_COPY_AGAIN}') from e
  tail = _read_at(f, member.offset_data + member.size - _TAR_END, _TAR_END)
  if member.size < tarfile.BLOCKSIZE + _TAR_END or tail.strip(b'\0'):
    raise errors.DamagedSourceError(
        f'{what} is cut short (its last {_TAR_END} bytes are not the end-of-archive marker '
        f'of a tar); {_COPY_AGAIN}')


class _Window:
  """Read-only, seekable view of `size` bytes at `offset` of an open file: one member of an
  outer tar, opened in place as a tar itself."""

  def __init__(self, f: BinaryIO, offset: int, size: int):
    self._f = f
    self._offset = offset
    self._size = size
    self._position = 0

  def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
    base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
    self._position = min(max(base + position, 0), self._size)
    return self._position

  def tell(self) -> int:
    return self._position

  def read(self, n: int | None = -1) -> bytes:
    left = self._size - self._position
    n = left if n is None or n < 0 else min(n, left)
    self._f.seek(self._offset + self._position)
    data = self._f.read(n)
    self._position += len(data)
    return data


def read_synset_tar(path: str, offset: int, size: int, member: str,
                    label: int) -> Iterator[tuple[str, int, bytes]]:
  """Yields (key for messages, label, JPEG bytes) of the `<wnid>.tar` member `member` of the
  train tar at `path` (`size` bytes at `offset`), checking that the member is whole."""
  what = f'{member} in {path}'
  with open(path, 'rb') as f:
    window = _Window(f, offset, size)
    try:
      # Read in place, in order: nothing extracted, one image held at a time.
      with tarfile.open(fileobj=window, mode='r:') as inner:
        for info in inner:
          if info.isfile():
            key = f'{os.path.basename(path)}/{info.name}'
            yield key, label, inner.extractfile(info).read()
        # A damaged header inside ends tarfile's listing silently, images lost with it.
        _check_tar_end(window, what, inner.offset, size, inner.getmembers())
    except tarfile.TarError as e:
      raise errors.DamagedSourceError(f'{what} is damaged ({e}); {_COPY_AGAIN}') from e
