"""The prepared-dataset format: what `prepare` writes and `sources` reads.

A prepared folder holds its images in one of two storages, the training
statistics (STATS_FILE) and the description DATASET_FILE, written last: only a
description of a known format with `complete` set marks a usable dataset.
FORMAT ('jpeg' storage): ArrayRecord shards of records (`encode_record`).
RAW_FORMAT ('raw' storage): per split one memory-mappable uint8 array of the
decoded pixels and its labels (`raw_format` reads them). A tensorflow-datasets
imagenet2012 read in place keeps its statistics in `tfds_stats_file` instead.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import numpy as np

from alexnet_jax.core import fileio

DATASET_FILE = 'dataset.json'
STATS_FILE = 'stats.npz'
FORMAT = 'alexnet_jax.prepared/1'
# The raw storage's layout version is part of its format name; a reader of one version
# refuses another (its files may be laid out otherwise) and says to prepare again.
RAW_VERSION = 1
RAW_FORMAT_PREFIX = 'alexnet_jax.prepared-raw/'
RAW_FORMAT = f'{RAW_FORMAT_PREFIX}{RAW_VERSION}'
STORAGES = {FORMAT: 'jpeg', RAW_FORMAT: 'raw'}  # format -> storage word
SPLITS = ('train', 'val')
RECORD_LAYOUT = 'int32 little-endian label, then the JPEG bytes'


def encode_record(label: int, image: bytes) -> bytes:
  """One stored example: the label as little-endian int32, then the encoded image."""
  return struct.pack('<i', label) + image


def decode_record(record: bytes) -> tuple[bytes, int]:
  """Inverse of `encode_record`: (image bytes, label)."""
  return record[4:], struct.unpack_from('<i', record)[0]


NOT_PREPARED = f'no finished {DATASET_FILE}'


def _regular(path: str) -> bool:
  """Whether `path` is a regular file (a symlink to one counts); a FIFO would block a read."""
  return os.path.isfile(path)


def _description(output: str) -> tuple[dict[str, Any] | None, str]:
  """(the description of a complete dataset in `output`, '') or (None, what is wrong)."""
  path = os.path.join(output, DATASET_FILE)
  if not os.path.lexists(path):
    return None, NOT_PREPARED
  if not _regular(path):
    return None, f'{DATASET_FILE} is not a regular file'
  try:
    with open(path, 'rb') as f:
      description = json.loads(f.read().decode('utf-8'))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f'{DATASET_FILE} cannot be read: {getattr(e, "strerror", None) or e}'
  if not isinstance(description, dict):
    return None, f'{DATASET_FILE} holds a JSON {type(description).__name__}, not an object'
  found = description.get('format')
  if isinstance(found, str) and found.startswith(RAW_FORMAT_PREFIX) and found != RAW_FORMAT:
    return None, (f'{DATASET_FILE} describes raw storage version '
                  f'{found[len(RAW_FORMAT_PREFIX):]!r}; this program reads version {RAW_VERSION}')
  if found not in STORAGES:
    return None, (f'{DATASET_FILE} is of format {found!r}, not {FORMAT!r} or {RAW_FORMAT!r} '
                  '(written by another program or version)')
  if not description.get('complete'):
    return None, f'{DATASET_FILE} is not marked complete (its preparation did not finish)'
  return description, ''


def read_dataset_json(output: str) -> dict[str, Any] | None:
  """The description of a complete prepared dataset in `output`, else None."""
  return _description(output)[0]


def what_is_missing(output: str) -> str:
  """What keeps `output` from being a finished preparation, in words; '' when it is one.

  NOT_PREPARED where there is no dataset.json at all (nothing was prepared there).
  """
  description, reason = _description(output)
  if description is None:
    return reason
  kind = 'shard' if storage(description) == 'jpeg' else 'data file'
  try:
    names = [STATS_FILE] + data_files(description)
  except (KeyError, AttributeError, TypeError, ValueError):
    return f'{DATASET_FILE} lists no {kind}s in the layout {description["format"]} gives them'
  for name in names:
    path = os.path.join(output, name)
    if not _regular(path):
      what = 'the statistics file' if name == STATS_FILE else f'the {kind}'
      state = 'is not a regular file' if os.path.lexists(path) else 'is missing'
      return f'{what} {name} that {DATASET_FILE} lists {state}'
  return ''


def storage(description: Mapping[str, Any]) -> str:
  """'jpeg' (ArrayRecord shards of JPEGs) or 'raw' (memory-mappable pixels) of a read description."""
  return STORAGES[description['format']]


def data_files(description: Mapping[str, Any]) -> list[str]:
  """The names of the files that hold a dataset's images and labels, as dataset.json lists them."""
  if storage(description) == 'raw':
    return [entry[key] for entry in description['raw'].values() for key in ('images', 'labels')]
  return [name for split in description['shards'].values() for name, _ in split]


def prepare_again(folder: str, description: Mapping[str, Any]) -> str:
  """The commands that make the prepared dataset in `folder` again, as it was made."""
  options = f' --image_size={description.get("image_size", 256)}'
  if description.get('format') == RAW_FORMAT:
    options += ' --format=raw'
  elif description.get('jpeg_quality', 95) != 95:
    options += f' --jpeg_quality={description["jpeg_quality"]}'
  return (f'delete {folder} and run python -m alexnet_jax.prepare '
          f'--source={description.get("source", "SRC")} --output={folder}{options} (the same '
          'source gives the same dataset, so the run resumes unchanged)')


def is_complete(output: str) -> bool:
  """Whether `output` holds a finished preparation (dataset.json and its files)."""
  return not what_is_missing(output)


def tfds_stats_file(data_dir: str, image_size: int) -> str:
  """Where the mean image / PCA of a tfds imagenet2012 at `image_size` are kept."""
  return os.path.join(data_dir, f'alexnet_jax_stats_{image_size}.npz')


def write_stats(path: str, statistics: Mapping[str, np.ndarray]) -> None:
  """Writes a statistics file (STATS_FILE or a tfds one): one .npz array per key."""
  fileio.atomic_write(path, lambda f: np.savez(f, **statistics), 'wb')


def read_stats(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean_image, eigvals, eigvecs) of a statistics file, as stored."""
  with np.load(path) as stats:
    return stats['mean_image'], stats['eigvals'], stats['eigvecs']
