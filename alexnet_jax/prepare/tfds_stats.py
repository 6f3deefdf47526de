"""Statistics of a tensorflow-datasets imagenet2012 read in place (--source=tfds).

Nothing is converted: the 'tfds' input source resizes on the fly, and this
writes the mean image and RGB PCA of exactly those resized images next to it.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from alexnet_jax.data import sources
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import pixel_stats
from alexnet_jax.prepare import pool
from alexnet_jax.prepare import progress_line


@functools.cache
def _tfds_train_records(data_dir: str) -> Any:
  """tfds' imagenet2012 train split in `data_dir`, opened as the 'tfds' input source opens it."""
  return sources.open_tfds_imagenet(data_dir, 'train').records


def _tfds_stats_part(data_dir: str, start: int, stop: int,
                     image_size: int) -> dict[str, Any]:
  records = _tfds_train_records(data_dir)
  stats = pixel_stats.Stats(image_size)
  for index in range(start, stop):
    # The very resize the 'tfds' input pipeline applies on the fly.
    stats.add(decoding.decode_and_resize(records[index]['image'], image_size))
  return {'pixel_sum': stats.pixel_sum, 'outer_sum': stats.outer_sum,
          'count': stats.count, 'images': stats.count}


def prepare_tfds_stats(data_dir: str, *, image_size: int = 256, workers: int = 1,
                       progress: bool = True) -> dict[str, Any]:
  """Writes the training statistics of tfds' imagenet2012 train split into data_dir.

  The 'tfds' input source reads the dataset in place and resizes on the fly; this
  computes the per-pixel mean and RGB PCA of exactly those resized images, streaming,
  so that source need not fall back to the ImageNet constants. A no-op if the file
  exists.
  """
  data_dir = os.path.abspath(data_dir)
  path = prepared_format.tfds_stats_file(data_dir, image_size)
  if os.path.isfile(path):
    return {'output': path, 'noop': True}
  start = time.monotonic()
  num_records = len(_tfds_train_records(data_dir))
  step = 2 * parts.FILES_PER_PART
  tasks = [(min(step, num_records - i), _tfds_stats_part, data_dir, i,
            min(i + step, num_records), image_size)
           for i in range(0, num_records, step)]
  bar = progress_line.ProgressLine(num_records, len(tasks), enabled=progress)
  stats = pixel_stats.Stats(image_size)
  for result in pool.execute(tasks, workers, bar):
    stats.merge(result['pixel_sum'], result['outer_sum'], result['count'])
  prepared_format.write_stats(path, stats.finish())
  return {'output': path, 'noop': False, 'converted': {'train': stats.count},
          'seconds': round(time.monotonic() - start, 2)}
