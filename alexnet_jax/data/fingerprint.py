"""The identity of a dataset: digests of what a run learns from it, and its labels.

  print_ = fingerprint.of_dataset(data_config, info)           # every split's labels
  fingerprint.differences(stored, fingerprint.of_dataset(...))  # ['val labels differ (40 of 50)']

Cheap by construction: it digests what the dataset's description already holds
(classes, split sizes, image size, mean image, PCA) and the label of every
record, read from the records' 4-byte headers of a prepared dataset; no image
is decoded. A tfds imagenet2012 carries no labels in its fingerprint (reading
them would parse every example): its classes, sizes and statistics stand for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from alexnet_jax.data import prepared_format
from alexnet_jax.data import raw_format
from alexnet_jax.data import sources
from alexnet_jax.data.dataset_info import DatasetInfo

LABELS = 'labels/'  # parts named labels/<split>
_CHUNK = 4096  # records read at once: bounds memory on ImageNet's shards


@dataclasses.dataclass(frozen=True, eq=False)
class Fingerprint:
  """Digest of each part of a dataset, and the labels they were taken of."""
  parts: dict[str, str]  # 'classes', 'split_sizes', 'image_size', 'mean_image', 'pca', 'labels/<split>'
  labels: dict[str, np.ndarray]  # split -> int32 labels in record order

  @property
  def digest(self) -> str:
    """One digest of every part: equal for equal datasets (16 hex digits)."""
    return _digest(json.dumps(self.parts, sort_keys=True).encode())

  def to_json(self) -> dict[str, Any]:
    return {'digest': self.digest, 'parts': dict(self.parts)}

  def for_split(self, split: str) -> 'Fingerprint':
    """The parts an evaluation of `split` depends on: the labels of that split only."""
    parts = {k: v for k, v in self.parts.items()
             if not k.startswith(LABELS) or k == LABELS + split}
    labels = {k: v for k, v in self.labels.items() if k == split}
    return Fingerprint(parts, labels)


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def _array_digest(values: np.ndarray) -> str:
  array = np.ascontiguousarray(values, np.float32)
  return _digest(str(array.shape).encode() + array.tobytes())


def prepared_labels(folder: str, description: Mapping[str, Any], split: str) -> np.ndarray:
  """The labels of a prepared split in record order, from the records' headers only
  (the raw storage: its labels file)."""
  if prepared_format.storage(description) == 'raw':
    return raw_format.open_raw_split(folder, split).labels
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  labels = []
  for name, count in description['shards'][split]:
    path = os.path.join(folder, name)
    try:
      reader = array_record_module.ArrayRecordReader(path)
      try:
        for start in range(0, int(count), _CHUNK):
          records = reader.read(range(start, min(start + _CHUNK, int(count))))
          labels.append(np.array([prepared_format.decode_record(r[:4])[1] for r in records],
                                 np.int32))
      finally:
        reader.close()
    except (RuntimeError, OSError, ValueError) as e:  # the reader's word for a damaged file
      raise sources.damaged_shard(path, e, sources.prepare_again(folder, description)) from e
  return np.concatenate(labels) if labels else np.zeros((0,), np.int32)


def of_dataset(data_config: ml_collections.ConfigDict, info: DatasetInfo,
               splits: Optional[Sequence[str]] = None) -> Fingerprint:
  """The fingerprint of the configured dataset whose facts are `info`.

  splits: whose labels to read (default every split the dataset has); labels
  are read for a prepared dataset only (module docstring).
  """
  parts = {
      'classes': _digest('\n'.join(info.class_names).encode()),
      'split_sizes': _digest(json.dumps(dict(info.split_sizes), sort_keys=True).encode()),
      'image_size': str(int(info.image_size)),
      'mean_image': _array_digest(info.mean_image),
      'pca': _array_digest(np.concatenate([np.ravel(info.eigvals), np.ravel(info.eigvecs)])),
  }
  labels: dict[str, np.ndarray] = {}
  if data_config.source == 'prepared':
    description = prepared_format.read_dataset_json(data_config.dir)
    if description is not None:
      present = description['raw' if prepared_format.storage(description) == 'raw'
                            else 'shards']
      wanted = sorted(present) if splits is None else splits
      for split in wanted:
        if split in present:
          labels[split] = prepared_labels(data_config.dir, description, split)
          parts[LABELS + split] = _digest(labels[split].astype('<i4').tobytes())
  return Fingerprint(parts, labels)


def _label_difference(split: str, stored: Optional[np.ndarray],
                      current: Optional[np.ndarray]) -> str:
  if stored is None or current is None:
    return f'{split} labels differ'
  if stored.shape != current.shape:
    return f'{split} labels differ ({len(stored)} -> {len(current)} images)'
  return f'{split} labels differ ({int(np.sum(stored != current))} of {len(stored)})'


_WORDS = {'classes': 'classes differ', 'split_sizes': 'split sizes differ',
          'image_size': 'image size differs', 'mean_image': 'mean image differs',
          'pca': 'PCA statistics differ'}


def differences(stored: Fingerprint, current: Fingerprint) -> list[str]:
  """What differs between two fingerprints, in words; parts only one of them has are skipped."""
  found = []
  for part, digest in stored.parts.items():
    if part not in current.parts or current.parts[part] == digest:
      continue
    if part.startswith(LABELS):
      split = part[len(LABELS):]
      found.append(_label_difference(split, stored.labels.get(split),
                                     current.labels.get(split)))
    else:
      found.append(_WORDS.get(part, f'{part} differs'))
  return found
