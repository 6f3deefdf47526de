"""The final layout: the parts' shards moved into place, checked, and dataset.json.

dataset.json is written last: it is the completeness marker, so it never
describes a shard that is missing or cut short.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

from absl import logging
from array_record.python import array_record_module
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.data import raw_format
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import pixel_stats
from alexnet_jax.prepare import raw_storage
from alexnet_jax.prepare import shards

MAX_LISTED_SKIPS = 1000
_Results = Sequence[tuple[parts.Part, dict[str, Any]]]


def _train_counts(work: parts.Work, results: _Results) -> np.ndarray:
  """Decoded training images per class; raises ValueError when a class has none."""
  train_counts = np.zeros(len(work.class_names), np.int64)
  for part, result in results:
    if part.split == 'train':
      for label, count in result['label_counts']:
        train_counts[label] += count
  if not train_counts.any():
    raise errors.InputError(f'no training image of {work.source} could be decoded')
  empty = [work.class_names[i] for i in np.flatnonzero(train_counts == 0)]
  if empty:
    raise errors.InputError(f'classes without any decodable training image: '
                            f'{", ".join(empty[:5])}{" ..." if len(empty) > 5 else ""}')
  return train_counts


def _skips(results: _Results) -> tuple[dict[str, int], list[Any]]:
  """(skipped files per split, the skipped files with their reasons)."""
  skipped, skipped_files = {}, []
  for split in prepared_format.SPLITS:
    split_skips = [s for p, r in results if p.split == split for s in r['skipped']]
    skipped[split] = len(split_skips)
    skipped_files.extend(split_skips)
  return skipped, skipped_files


def _move_shards(results: _Results, work_dir: str, output: str
                 ) -> tuple[dict[str, list[Any]], dict[str, int]]:
  """Renames the parts' shards into place: (shards, sizes)."""
  placed, sizes = {}, {}
  for split in prepared_format.SPLITS:
    filled = [(p, r) for p, r in results if p.split == split and r['converted']]
    placed[split] = []
    for i, (part, result) in enumerate(filled):
      name = f'{split}.array_record-{i:05d}-of-{len(filled):05d}'
      src, dst = (os.path.join(work_dir, part.name + '.array_record'),
                  os.path.join(output, name))
      if os.path.exists(src):  # Absent if an interrupted finish moved it already.
        os.replace(src, dst)
      placed[split].append([name, result['converted']])
    sizes[split] = sum(n for _, n in placed[split])
  return placed, sizes


def _check_shards(output: str, placed: dict[str, list[Any]], results: _Results) -> None:
  """Each final shard has the size and record count its part wrote (read back at write
  time), so dataset.json never describes a shard that a failed move or copy cut short."""
  written = {}
  for split in prepared_format.SPLITS:
    filled = [r for p, r in results if p.split == split and r['converted']]
    written.update({name: r.get('bytes') for (name, _), r in zip(placed[split], filled)})
  for split in prepared_format.SPLITS:
    for name, count in placed[split]:
      path = os.path.join(output, name)
      size = os.path.getsize(path) if os.path.isfile(path) else None
      if size is None or (written[name] is not None and size != written[name]):
        raise errors.UserError(f'{path} is {"missing" if size is None else f"{size} bytes"}, '
                               f'not the {written[name]} bytes written; delete {output} and '
                               'prepare again')
      reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
      try:
        found = reader.num_records()
      finally:
        reader.close()
      if found != count:
        raise errors.UserError(f'{path} holds {found} records, not the {count} written; '
                               f'delete {output} and prepare again')


def _place_data(results: _Results, work_dir: str, output: str, image_size: int,
                storage: str) -> tuple[dict[str, Any], dict[str, int]]:
  """The parts' data in its final files, checked: (dataset.json's entries, split sizes)."""
  if storage == 'raw':
    entries = raw_storage.join_splits(results, work_dir, output, image_size)
    return {'raw': entries}, {split: e['count'] for split, e in entries.items()}
  placed, sizes = _move_shards(results, work_dir, output)
  _check_shards(output, placed, results)
  return {'shards': placed}, sizes


def finish_dataset(work: parts.Work, output: str, work_dir: str, image_size: int,
                   jpeg_quality: int, workers: int, seconds: float,
                   storage: str = 'jpeg') -> dict[str, Any]:
  """Merges the parts into the final layout; dataset.json is written last."""
  results = []
  for part in work.parts:
    with open(os.path.join(work_dir, part.name + '.json')) as f:
      results.append((part, json.load(f)))
  train_counts = _train_counts(work, results)
  statistics = pixel_stats.merge_parts(results, work_dir, image_size)
  stats_path = os.path.join(output, prepared_format.STATS_FILE)
  try:
    prepared_format.write_stats(stats_path, statistics)
  except OSError as e:
    raise shards.write_error(stats_path, e) from e
  placed, sizes = _place_data(results, work_dir, output, image_size, storage)
  skipped, skipped_files = _skips(results)
  if skipped_files:
    logging.warning('skipped %d undecodable files, e.g. %s: %s', len(skipped_files),
                    *skipped_files[0])
  report = {
      'source': work.source, 'kind': work.kind, 'converted': sizes, 'skipped': skipped,
      'skipped_files': skipped_files[:MAX_LISTED_SKIPS], **work.notes, **(work.official or {}),
      'rotated': sum(r.get('rotated', 0) for _, r in results),
      'workers': workers, 'seconds': round(seconds, 2),
  }
  description = _description(work, image_size, jpeg_quality, sizes, placed, train_counts,
                             statistics, report)
  description_path = os.path.join(output, prepared_format.DATASET_FILE)
  try:
    shards.write_json(description_path, description)
  except OSError as e:
    raise shards.write_error(description_path, e) from e
  shutil.rmtree(work_dir, ignore_errors=True)
  return dict(report, output=output, noop=False)


def _description(work: parts.Work, image_size: int, jpeg_quality: int, sizes: dict[str, int],
                 placed: dict[str, Any], train_counts: np.ndarray,
                 statistics: dict[str, np.ndarray], report: dict[str, Any]) -> dict[str, Any]:
  """The contents of dataset.json: the classes, splits, data files, statistics and report."""
  raw = 'raw' in placed
  description = {
      'format': prepared_format.RAW_FORMAT if raw else prepared_format.FORMAT,
      'storage': 'raw' if raw else 'jpeg',
      'record': raw_format.LAYOUT if raw else prepared_format.RECORD_LAYOUT,
      'source': work.source,
      'kind': work.kind,
      'image_size': image_size,
      **({} if raw else {'jpeg_quality': jpeg_quality}),
      'num_classes': len(work.class_names),
      'class_names': work.class_names,
      'class_descriptions': work.class_descriptions,
      'splits': sizes,
      **placed,
      'stats_file': prepared_format.STATS_FILE,
      'train_class_counts': train_counts.tolist(),
      'eigvals': statistics['eigvals'].tolist(),
      'eigvecs': statistics['eigvecs'].tolist(),
      'channel_mean': statistics['channel_mean'].tolist(),
      'report': report,
      'complete': True,
  }
  if work.official is not None:
    description['official_complete'] = work.official['official_complete']
    description['source_files'] = work.source_files
  return description


def verify_dataset(output: str, description: dict[str, Any]) -> int:
  """Reads every image of the complete dataset in `output` back; returns how many.

  Raw storage: every chunk against its CRC-32 in dataset.json. JPEG storage: every
  record of every shard (the shards' own chunk checksums are checked by the reader).
  """
  fix = prepared_format.prepare_again(output, description)
  if prepared_format.storage(description) == 'raw':
    return sum(len(raw_format.open_raw_split(output, split, verify=True).labels)
               for split in description['raw'])
  total = 0
  for split in description['shards'].values():
    for name, count in split:
      path = os.path.join(output, name)
      try:
        reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
        try:
          for start in range(0, count, 256):
            total += len(reader.read(list(range(start, min(start + 256, count)))))
        finally:
          reader.close()
      except (RuntimeError, OSError, ValueError) as e:
        reason = errors.first_line(e, 200)
        raise errors.InputError(f'{path} is damaged ({reason}); prepare the dataset again: '
                                f'{fix}') from e
  return total
