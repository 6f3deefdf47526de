"""The raw storage of a prepared dataset: decoded pixels in memory-mappable files.

Per split, dataset.json's `raw` entry names two files and their checks:
  <split>.u8           the stored images, uint8 (N, S, S, 3) in C order, no header:
                       image i is the N*S*S*3 bytes from i*S*S*3; its size is exact.
  <split>.labels.npy   int32 (N,), the label of each image.
  count, image_size    N and S.
  chunk_images         images per checksum chunk (CHUNK_IMAGES).
  crc32                CRC-32 of each chunk of the image file in order (the last shorter).
  labels_crc32         CRC-32 of the labels' int32 little-endian bytes.
`open_raw_split` maps the image file read-only after the cheap checks (format
version, image size, exact file size, labels); `verify=True` also reads every
chunk and compares its CRC-32, as prepare does after writing. `RawRecords` is the
split as picklable records for grain's worker processes: each process maps the
file itself instead of receiving a copy of it.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Mapping

import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format

CHUNK_IMAGES = 4096  # images per checksum chunk: 805 MB at 256 px, one read-back unit
IMAGE_SUFFIX = '.u8'
LABELS_SUFFIX = '.labels.npy'
LAYOUT = 'per split: <split>.u8, uint8 (N, S, S, 3) C order, no header; <split>.labels.npy int32'


@dataclasses.dataclass(frozen=True)
class RawSplit:
  """One split of a raw dataset: its images mapped read-only, its labels in memory."""
  images: np.ndarray  # np.memmap read-only, uint8 (N, S, S, 3)
  labels: np.ndarray  # int32 (N,), in memory
  path: str  # the image file, for error messages


def image_file(split: str) -> str:
  return split + IMAGE_SUFFIX


def labels_file(split: str) -> str:
  return split + LABELS_SUFFIX


def image_bytes(count: int, image_size: int) -> int:
  """Size of the image file of `count` images of side `image_size`."""
  return int(count) * int(image_size) ** 2 * 3


def labels_checksum(labels: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(labels, '<i4').tobytes())


def is_raw(dataset_dir: str) -> bool:
  """Whether `dataset_dir` holds a complete prepared dataset in the raw storage."""
  description = prepared_format.read_dataset_json(dataset_dir)
  return description is not None and prepared_format.storage(description) == 'raw'


def _description(dataset_dir: str) -> dict[str, Any]:
  """dataset.json of the complete raw dataset in `dataset_dir`; one line naming why not."""
  description = prepared_format.read_dataset_json(dataset_dir)
  if description is None or prepared_format.storage(description) != 'raw':
    reason = (prepared_format.what_is_missing(dataset_dir) if description is None
              else f'it is stored as {prepared_format.storage(description)}, not raw')
    raise errors.MissingInputError(
        f'{dataset_dir} holds no complete raw prepared dataset ({reason}); run: python -m '
        f'alexnet_jax.prepare --source=SRC --output={dataset_dir} --format=raw')
  return description


def _entry(description: Mapping[str, Any], dataset_dir: str, split: str) -> dict[str, Any]:
  """The split's entry of dataset.json, checked against the description's image size."""
  fix = prepared_format.prepare_again(dataset_dir, description)
  try:
    entry = dict(description['raw'][split])
    for key in ('count', 'image_size', 'chunk_images', 'labels_crc32'):
      entry[key] = int(entry[key])
    entry['crc32'] = [int(c) for c in entry['crc32']]
    count, size = entry['count'], entry['image_size']
  except (KeyError, TypeError, ValueError) as e:
    raise errors.InputError(f'{os.path.join(dataset_dir, prepared_format.DATASET_FILE)} has no '
                            f'usable raw entry for the {split} split ({e!r}); {fix}') from e
  if size != description['image_size']:
    raise errors.InputError(f'{os.path.join(dataset_dir, entry["images"])} holds {size}x{size} '
                            f'images, not the image_size {description["image_size"]} of the '
                            f'dataset; {fix}')
  if count < 0 or len(entry['crc32']) != -(-count // max(1, entry['chunk_images'])):
    raise errors.InputError(f'{os.path.join(dataset_dir, prepared_format.DATASET_FILE)} lists '
                            f'{len(entry["crc32"])} checksums for {count} {split} images; {fix}')
  return entry


def _read_labels(path: str, entry: Mapping[str, Any], fix: str) -> np.ndarray:
  try:
    labels = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise errors.InputError(f'{path} cannot be read ({errors.first_line(e)}); {fix}') from e
  if (labels.dtype != np.int32 or labels.shape != (int(entry['count']),)
      or labels_checksum(labels) != int(entry['labels_crc32'])):
    raise errors.InputError(f'{path} is not the {entry["count"]} int32 labels written (damaged '
                            f'or replaced); {fix}')
  return labels


def _map_images(path: str, entry: Mapping[str, Any], fix: str) -> np.ndarray:
  count, size = int(entry['count']), int(entry['image_size'])
  expected = image_bytes(count, size)
  try:
    found = os.path.getsize(path)
  except OSError as e:
    raise errors.MissingInputError(f'{path} cannot be read ({e.strerror or e}); {fix}') from e
  if found != expected:
    raise errors.InputError(
        f'{path} is {found:,} bytes, not the {expected:,} of {count} {size}x{size} images '
        f'({"cut short" if found < expected else "longer than written"}); {fix}')
  if not count:  # mmap cannot map an empty file
    return np.zeros((0, size, size, 3), np.uint8)
  return np.memmap(path, np.uint8, 'r', shape=(count, size, size, 3))


def verify_images(images: np.ndarray, path: str, checksums: list[int], chunk_images: int,
                  fix: str) -> None:
  """Reads every chunk of `images` and compares its CRC-32 with the one written."""
  for i, start in enumerate(range(0, len(images), chunk_images)):
    if zlib.crc32(np.ascontiguousarray(images[start:start + chunk_images]).data) != checksums[i]:
      end = min(start + chunk_images, len(images))
      raise errors.InputError(f'{path}: images {start}..{end - 1} differ from what was written '
                              f'(checksum mismatch: the storage corrupted them); {fix}')


def open_raw_split(dataset_dir: str, split: str, *, verify: bool = False) -> RawSplit:
  """The images (mapped read-only) and labels of `split` of the raw dataset in `dataset_dir`.

  The format version, image size, exact file size and the labels' checksum are
  always checked; `verify` also reads every image chunk and checks its CRC-32.
  Raises one-line errors.UserError naming the file and the prepare command.
  """
  if split not in prepared_format.SPLITS:
    raise ValueError(f"split must be one of {prepared_format.SPLITS}, got {split!r}")
  description = _description(dataset_dir)
  fix = prepared_format.prepare_again(dataset_dir, description)
  entry = _entry(description, dataset_dir, split)
  path = os.path.join(dataset_dir, entry['images'])
  labels = _read_labels(os.path.join(dataset_dir, entry['labels']), entry, fix)
  images = _map_images(path, entry, fix)
  if verify:
    verify_images(images, path, entry['crc32'], int(entry['chunk_images']), fix)
  return RawSplit(images=images, labels=labels, path=path)


@dataclasses.dataclass(eq=False)
class RawRecords:
  """A raw split as grain records: record i is (image i, label i).

  Pickles as its folder and split only; each process maps the file when it first
  reads (a pickled np.memmap would carry a copy of all its pixels).
  """
  dataset_dir: str
  split: str
  count: int
  _opened: RawSplit | None = dataclasses.field(default=None, repr=False)

  def __len__(self) -> int:
    return self.count

  def opened(self) -> RawSplit:
    if self._opened is None:
      self._opened = open_raw_split(self.dataset_dir, self.split)
    return self._opened

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    opened = self.opened()
    return opened.images[index], int(opened.labels[index])

  def __getstate__(self) -> dict[str, Any]:
    return dict(self.__dict__, _opened=None)


def parse_record(record: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
  """(pixels, label) of a RawRecords record: it is that pair already."""
  return record
