"""The raw storage's side of a preparation: its size up front, and the parts joined per split.

Each part's pixels are written to `_partial/<part>.u8` (shards.run_part). The
finish appends them in part order to `<split>.u8.tmp`, computing the CRC-32 of
every CHUNK_IMAGES images on the way; after each part is appended and synced, a
journal records how far the join got and the part's file is removed, so the join
needs the dataset's size plus one part of free space and a rerun continues where
an interrupted one stopped. The joined file is read back chunk by chunk against
those checksums before it takes its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import zlib
from typing import Any, Sequence

import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.data import prepared_format
from alexnet_jax.data import raw_format
from alexnet_jax.prepare import output_dir
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import shards

# Mean size of an ILSVRC-2012 training JPEG inside its synset tar (about 138 GB for
# 1,281,167 images), to estimate how many images a synset tar holds before reading it.
MEAN_TAR_JPEG_BYTES = 108_000
_Results = Sequence[tuple[parts.Part, dict[str, Any]]]


def part_images(part: parts.Part) -> int:
  """Images in a part: exact for listed files, estimated for a synset tar."""
  if part.kind == 'synset_tar':
    return max(1, round(part.size / MEAN_TAR_JPEG_BYTES))
  return len(part.items)


def _existing_folder(path: str) -> str:
  while not os.path.isdir(path):
    path = os.path.dirname(path)
  return path


def check_room(output: str, work: parts.Work, image_size: int, progress: bool) -> None:
  """States the raw dataset's size, and refuses when the disk of `output` has no room for
  what is left to write (the parts not done yet, plus one part for the join)."""
  done = os.path.join(output, output_dir.PARTIAL_DIR)
  todo = [p for p in work.parts if not output_dir.part_done(done, p)]
  images = sum(part_images(p) for p in work.parts)
  total = raw_format.image_bytes(images, image_size)
  needed = raw_format.image_bytes(sum(part_images(p) for p in todo)
                                  + max(map(part_images, work.parts), default=0), image_size)
  folder = _existing_folder(os.path.abspath(output))
  free = shutil.disk_usage(folder).free
  gb = lambda n: f'{n / 1e9:,.2f} GB' if n >= 1e8 else f'{n / 1e6:,.2f} MB'
  if progress:
    print(f'raw storage: {images:,} images of {image_size}x{image_size}x3 bytes, '
          f'{gb(total)} in {output}; {gb(free)} free there', file=sys.stderr, flush=True)
  if free < needed:
    raise errors.InputError(
        f'{output} needs {gb(needed)} for the raw pixels of {images:,} images at '
        f'{image_size}x{image_size} but its disk ({folder}) has {gb(free)} free; free space, '
        'choose --output on a larger disk, or keep the default --format=jpeg (several times '
        'smaller)')


def _journal_path(work_dir: str, split: str) -> str:
  return os.path.join(work_dir, f'join-{split}.json')


def _read_journal(work_dir: str, split: str) -> dict[str, Any]:
  """How far an earlier join of `split` got: parts appended, bytes, finished chunk CRCs."""
  with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
    with open(_journal_path(work_dir, split)) as f:
      return json.load(f)
  return {'parts': 0, 'bytes': 0, 'crc32': [], 'open_crc': 0}


def _append(out: Any, path: str, result: dict[str, Any], journal: dict[str, Any],
            chunk_bytes: int) -> None:
  """Appends one part's pixels, checking the part's own CRC-32, updating the chunk CRCs."""
  part_crc = 0
  with open(path, 'rb') as f:
    while block := f.read(min(chunk_bytes, 1 << 24)):
      part_crc = zlib.crc32(block, part_crc)
      out.write(block)
      while block:  # split the block where chunks end
        room = chunk_bytes - journal['bytes'] % chunk_bytes
        piece, block = block[:room], block[room:]
        journal['open_crc'] = zlib.crc32(piece, journal['open_crc'])
        journal['bytes'] += len(piece)
        if journal['bytes'] % chunk_bytes == 0:
          journal['crc32'].append(journal['open_crc'])
          journal['open_crc'] = 0
  if part_crc != result['crc32']:
    raise errors.UserError(f'{path} changed since it was written (its checksum differs): '
                           'the storage corrupted it; delete the output folder and prepare again')


def _join_split(split: str, results: _Results, work_dir: str, output: str,
                image_size: int) -> dict[str, Any]:
  """Joins the split's parts into <split>.u8 (read back before it is renamed into place)."""
  final = os.path.join(output, raw_format.image_file(split))
  filled = [(p, r) for p, r in results if p.split == split and r['converted']]
  count = sum(r['converted'] for _, r in filled)
  chunk_bytes = raw_format.image_bytes(raw_format.CHUNK_IMAGES, image_size)
  journal = _read_journal(work_dir, split)
  if not (os.path.exists(final) and journal.get('done')):
    tmp = final + '.tmp'
    if os.path.exists(final):  # renamed, but stopped before the journal said so
      os.replace(final, tmp)
    with open(tmp, 'ab') as out:
      out.truncate(journal['bytes'])  # drop what an interrupted append left after the journal
      for part, result in filled[journal['parts']:]:
        _append(out, os.path.join(work_dir, part.name + '.u8'), result, journal, chunk_bytes)
        out.flush()
        os.fsync(out.fileno())
        journal['parts'] += 1
        shards.write_json(_journal_path(work_dir, split), journal)
        os.remove(os.path.join(work_dir, part.name + '.u8'))
    if journal['bytes'] % chunk_bytes:
      journal['crc32'].append(journal['open_crc'])
    _read_back(tmp, count, image_size, journal['crc32'])
    os.replace(tmp, final)
    shards.write_json(_journal_path(work_dir, split), dict(journal, done=True))
  labels = np.array([label for _, r in filled for label in r['labels']], np.int32)
  labels_path = os.path.join(output, raw_format.labels_file(split))
  fileio.atomic_write(labels_path, lambda f: np.save(f, labels), 'wb')
  return {'images': raw_format.image_file(split), 'labels': raw_format.labels_file(split),
          'count': count, 'image_size': image_size, 'chunk_images': raw_format.CHUNK_IMAGES,
          'crc32': journal['crc32'], 'labels_crc32': raw_format.labels_checksum(labels)}


def _read_back(path: str, count: int, image_size: int, checksums: list[int]) -> None:
  """The joined file has the size of `count` images and the chunk CRCs computed on the way."""
  size = os.path.getsize(path)
  if size != raw_format.image_bytes(count, image_size):
    raise errors.UserError(f'{path} is {size:,} bytes after joining, not the '
                           f'{raw_format.image_bytes(count, image_size):,} of {count} images: '
                           'the storage lost data; delete the output folder and prepare again')
  if count:
    images = np.memmap(path, np.uint8, 'r', shape=(count, image_size, image_size, 3))
    raw_format.verify_images(images, path, checksums, raw_format.CHUNK_IMAGES,
                             'delete the output folder and prepare again')


def join_splits(results: _Results, work_dir: str, output: str,
                image_size: int) -> dict[str, dict[str, Any]]:
  """Every split's raw entry of dataset.json, once its files are joined and read back."""
  placed = {}
  for split in prepared_format.SPLITS:
    path = os.path.join(output, raw_format.image_file(split))
    try:
      placed[split] = _join_split(split, results, work_dir, output, image_size)
    except OSError as e:
      raise shards.write_error(path, e) from e
  return placed
