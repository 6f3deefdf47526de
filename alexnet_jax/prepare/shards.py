"""Converting one part into its shard: decode, resize, re-encode, write, read back.

Runs in the worker processes. A part's shard is written under a temporary name,
read back (record count and CRC-32 of each record) and renamed; its .json, written
last, marks the part done for a resumed run. For the raw storage the part is a file
of its pixels instead, read back against the CRC-32 of all of it (raw_storage joins
the parts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import zlib
from typing import Any, Iterator, Sequence

from array_record.python import array_record_module
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import pixel_stats

# group_size:1 gives each record its own chunk (cheap random access); JPEG bytes do
# not compress, so compression would only cost read time.
WRITER_OPTIONS = 'group_size:1,uncompressed'


def convert_image(payload: bytes | np.ndarray, image_size: int) -> tuple[np.ndarray, bool]:
  """(the stored image, whether an EXIF orientation tag turned it upright)."""
  if isinstance(payload, np.ndarray):
    return decoding.resize_center_crop(payload, image_size), False
  pixels, orientation = decoding.decode_with_orientation(payload, min_size=image_size)
  return decoding.resize_center_crop(pixels, image_size), orientation != decoding.UPRIGHT


def write_json(path: str, obj: Any) -> None:
  # fsync: a part's .json marks it done for a resumed run, so its data must be on disk.
  fileio.atomic_write(path, lambda f: json.dump(obj, f, indent=1), fsync=True)


def write_error(path: str, error: BaseException) -> errors.UserError:
  """One line for a failed write of `path` (a full disk, a lost mount, no permission)."""
  folder = os.path.dirname(path) or '.'
  text = getattr(error, 'strerror', None) or str(error).split(';')[0]
  if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(error):
    text = 'no space left on the device'
  with contextlib.suppress(OSError):
    text += f', {shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there'
  return errors.UserError(f'cannot write {path} ({text})')


def verify_shard(path: str, checksums: Sequence[int]) -> None:
  """Reads a written shard back: the records and their CRC-32s must be those written."""
  reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
  try:
    count = reader.num_records()
    if count != len(checksums):
      raise errors.UserError(f'{path} holds {count} records after writing {len(checksums)}: the '
                             'storage lost data; prepare again')
    for start in range(0, count, 64):
      records = reader.read(list(range(start, min(start + 64, count))))
      for i, record in enumerate(records, start):
        if zlib.crc32(record) != checksums[i]:
          raise errors.UserError(f'record {i} of {path} differs from what was written: the '
                                 'storage corrupted it; prepare again')
  finally:
    reader.close()


@dataclasses.dataclass
class _Written:
  """What one part's shard holds: its images per label, what was skipped, the checks."""
  stats: pixel_stats.Stats | None  # training parts only
  label_counts: dict[int, int] = dataclasses.field(default_factory=dict)
  skipped: list[list[str]] = dataclasses.field(default_factory=list)
  checksums: list[int] = dataclasses.field(default_factory=list)  # CRC-32 per record
  labels: list[int] = dataclasses.field(default_factory=list)  # raw storage: per image
  rotated: int = 0  # photos turned upright by their EXIF orientation


def _converted(part: parts.Part, image_size: int, strict: bool,
               written: _Written) -> Iterator[tuple[int, np.ndarray]]:
  """(label, stored pixels) of each decodable image of the part; the others are skipped
  into `written` (or raise with --strict)."""
  for key, label, payload in parts.part_images(part):
    try:
      pixels, turned = convert_image(payload, image_size)
    except Exception as e:  # pylint: disable=broad-except
      # PIL signals bad data with many types (OSError, SyntaxError, ValueError, ...).
      reason = f'{type(e).__name__}: {e}'
      if strict:
        raise errors.InputError(f'cannot decode {key} ({reason}); run without --strict to '
                                'skip such files and list them in the report') from e
      written.skipped.append([key, reason])
      continue
    written.rotated += turned
    written.label_counts[label] = written.label_counts.get(label, 0) + 1
    yield label, pixels


def _write_shard(part: parts.Part, path: str, image_size: int, jpeg_quality: int,
                 strict: bool) -> _Written:
  """Converts the part's images into the ArrayRecord file `path`."""
  written = _Written(pixel_stats.Stats(image_size) if part.split == 'train' else None)
  writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
  try:
    for label, pixels in _converted(part, image_size, strict, written):
      jpeg = decoding.encode_jpeg(pixels, jpeg_quality)
      record = prepared_format.encode_record(label, jpeg)
      writer.write(record)
      written.checksums.append(zlib.crc32(record))
      if written.stats is not None:
        # Statistics of the pixels the pipeline will decode, not of the pre-JPEG ones.
        written.stats.add(decoding.decode(jpeg))
  finally:
    writer.close()  # Writes the last chunk and the index: a full disk may fail only here.
  return written


def _write_raw(part: parts.Part, path: str, image_size: int, strict: bool) -> _Written:
  """Appends the part's pixels to the file `path`: checksums holds the CRC-32 of it all."""
  written = _Written(pixel_stats.Stats(image_size) if part.split == 'train' else None)
  crc = 0
  with open(path, 'wb') as f:
    for label, pixels in _converted(part, image_size, strict, written):
      f.write(pixels.data)
      crc = zlib.crc32(pixels.data, crc)
      written.labels.append(label)
      if written.stats is not None:
        written.stats.add(pixels)  # the raw storage keeps these very pixels
    f.flush()
    os.fsync(f.fileno())
  written.checksums.append(crc)
  return written


def verify_raw_part(path: str, crc: int, size: int) -> None:
  """Reads a written part of raw pixels back: its size and CRC-32 must be those written."""
  found, read = 0, 0
  with open(path, 'rb') as f:
    while block := f.read(1 << 24):
      found, read = zlib.crc32(block, found), read + len(block)
  if read != size or found != crc:
    raise errors.UserError(f'{path} holds other bytes than were written ({read} of {size}): '
                           'the storage lost or corrupted them; prepare again')


def _part_failure(error: BaseException, work_dir: str, writing: str) -> BaseException:
  """The error to raise for a failed part: a user error as it is, a failed read or write
  as one line, anything else (a bug, Ctrl-C) unchanged."""
  if isinstance(error, errors.UserError):
    return error
  if (isinstance(error, OSError) and error.filename
      and not os.fspath(error.filename).startswith(work_dir)):
    return errors.UserError(f'cannot read {error.filename} ({error.strerror})')
  if isinstance(error, (OSError, RuntimeError)):
    # A failed write: array_record reports it as a RuntimeError naming the file.
    return write_error(writing, error)
  return error


def _part_files(work_dir: str, part: parts.Part, storage: str) -> tuple[str, str]:
  """(the part's data file, its sums file) in the work folder."""
  suffix = '.u8' if storage == 'raw' else '.array_record'
  return (os.path.join(work_dir, part.name + suffix),
          os.path.join(work_dir, part.name + '.npz'))


def _write_part(part: parts.Part, writing: str, image_size: int, jpeg_quality: int,
                strict: bool, storage: str) -> tuple[_Written, dict[str, Any]]:
  """Writes and reads back the part's data file: (what it holds, its entries in the .json)."""
  if storage == 'raw':
    written = _write_raw(part, writing, image_size, strict)
    size = len(written.labels) * image_size * image_size * 3
    verify_raw_part(writing, written.checksums[0], size)
    return written, {'bytes': size, 'crc32': written.checksums[0], 'labels': written.labels}
  written = _write_shard(part, writing, image_size, jpeg_quality, strict)
  verify_shard(writing, written.checksums)
  return written, {'bytes': os.path.getsize(writing)}


def run_part(part: parts.Part, work_dir: str, image_size: int, jpeg_quality: int,
             strict: bool, storage: str = 'jpeg') -> dict[str, Any]:
  """Converts one part into work_dir/<name>.array_record (raw storage: <name>.u8), its
  .npz sums and its .json.

  The data file is written under a temporary name, read back and checked, then
  renamed; the .json is written last and its presence marks the part done for
  a resumed run. Any failure (an undecodable image with --strict, a full disk,
  Ctrl-C) removes the part's unfinished files.
  """
  data_file, sums_file = _part_files(work_dir, part, storage)
  writing = data_file + '.tmp'
  try:
    written, stored = _write_part(part, writing, image_size, jpeg_quality, strict, storage)
    os.replace(writing, data_file)
    writing = sums_file
    if written.stats is not None:
      with open(sums_file, 'wb') as f:
        np.savez(f, pixel_sum=written.stats.pixel_sum, outer_sum=written.stats.outer_sum,
                 count=written.stats.count)
    images = sum(written.label_counts.values())
    result = {'split': part.split, 'index': part.index, 'converted': images,
              'images': images, 'rotated': written.rotated, **stored,
              'label_counts': sorted(written.label_counts.items()),
              'skipped': written.skipped}
    writing = os.path.join(work_dir, part.name + '.json')
    write_json(writing, result)
  except BaseException as e:
    for path in (data_file + '.tmp', sums_file):
      with contextlib.suppress(OSError):
        os.remove(path)
    failure = _part_failure(e, work_dir, writing)
    if failure is e:
      raise
    raise failure from e
  return result
