"""The prepared-dataset format: what `prepare` writes and `sources` reads.

A prepared folder holds ArrayRecord shards of records (`encode_record`), the
training statistics (STATS_FILE) and the description DATASET_FILE, written last:
only a description with this FORMAT and `complete` set marks a usable dataset. A
tensorflow-datasets imagenet2012 read in place keeps its statistics in
`tfds_stats_file` instead.
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
SPLITS = ('train', 'val')
RECORD_LAYOUT = 'int32 little-endian label, then the JPEG bytes'


def encode_record(label: int, image: bytes) -> bytes:
  """One stored example: the label as little-endian int32, then the encoded image."""
  return struct.pack('<i', label) + image


def decode_record(record: bytes) -> tuple[bytes, int]:
  """Inverse of `encode_record`: (image bytes, label)."""
  return record[4:], struct.unpack_from('<i', record)[0]


def read_dataset_json(output: str) -> dict[str, Any] | None:
  """The description of a complete prepared dataset in `output`, else None."""
  path = os.path.join(output, DATASET_FILE)
  try:
    if not os.path.isfile(path):  # missing, a link loop, a FIFO (never opened) or a folder
      return None
    with open(path, 'rb') as f:
      description = json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
    return None
  if not isinstance(description, dict):
    return None
  if description.get('format') != FORMAT or not description.get('complete'):
    return None
  return description


def is_complete(output: str) -> bool:
  """Whether `output` holds a finished preparation (dataset.json and its files)."""
  description = read_dataset_json(output)
  if description is None:
    return False
  names = [STATS_FILE] + [name for split in description['shards'].values()
                          for name, _ in split]
  return all(os.path.isfile(os.path.join(output, name)) for name in names)


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
