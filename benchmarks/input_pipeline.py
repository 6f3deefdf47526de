r"""Host CPU time per training image of each storage's train pipeline, in CPU time.

  python -m benchmarks.input_pipeline               # from the repo root; ~2 min on 2 cores
  python -m benchmarks.input_pipeline --num_images=4000 --threads=1,2,4 --json=input.json
  python -m benchmarks.input_pipeline --prepared=DIR --batch_size=512   # an existing dataset

By default it writes --num_images generated photo-like 256x256 images (gradients, soft
shapes, noise: benchmarks/input_formats_data.py) and prepares them with the real
`alexnet_jax.prepare` in both storages, JPEG (quality 95) and raw pixels; --prepared
times one existing prepared dataset instead, in its own storage. Each row runs the
train iterator training uses (`input_pipeline.create_train_iterator`):

  * raw: the batch-level gather, `--threads` threads copying crops into a ring;
  * jpeg: grain's per-record pipeline, with `--threads` threads in this process
    (data.worker_count 0), and with `--workers` worker processes (one thread each).

Columns, all per image of --batches timed batches after --warmup batches:
  images_per_cpu_second   images / the loader's CPU seconds: the gather threads' own
                          thread clocks (raw); this process's CPU less the consuming
                          thread's (jpeg threads); the worker processes' CPU from
                          /proc plus this process's less the consuming thread's (jpeg
                          workers: the threads that receive their batches count too);
  main_cpu_us_per_image   the consuming thread's CPU inside `next` (the hand-off to the
                          device prefetch: planning, scheduling, receiving);
  main_read_cpu_us_per_image  the same plus one copy of the batch's pixels into a reused
                          buffer, as a host-to-device staging copy reads them;
  images_per_second       wall-clock rate on this machine (shared cores: indicative).
Goals (docs/design.md, "Input pipeline on a GPU host"): raw >= 15,000 images per
CPU-second and <= 30 us per image in the main thread, i.e. <= 3 cores for 30,000
images/s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
import numpy as np

from alexnet_jax.data import input_pipeline
from alexnet_jax.data import prepared_format
from benchmarks import input_formats_data
from configs import imagenet

_NUM_IMAGES = flags.DEFINE_integer('num_images', 2000, 'Generated images (8 classes).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Stored image side.')
_CROP_SIZE = flags.DEFINE_integer('crop_size', 224, 'Train crop side.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per batch.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Timed batches per row.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first (threads, workers start).')
_THREADS = flags.DEFINE_list('threads', ['1', str(os.cpu_count() or 1)],
                             'Thread counts: gather threads (raw), grain threads (jpeg).')
_WORKERS = flags.DEFINE_list('workers', [str(os.cpu_count() or 1)],
                             'grain worker process counts for jpeg; empty: none.')
_PREPARED = flags.DEFINE_string('prepared', '', 'Time this prepared dataset (its storage) '
                                'instead of generated images.')
_KEEP = flags.DEFINE_string('keep', '', 'Keep (and reuse) the generated data in this folder.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')

_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def _data_config(folder: str, threads: int, workers: int) -> ml_collections.ConfigDict:
  config = imagenet.get_config().data
  config.dir, config.source = folder, 'prepared'
  config.image_size, config.crop_size = _IMAGE_SIZE.value, _CROP_SIZE.value
  config.num_threads, config.worker_count = threads, workers
  return config


def _children_cpu() -> float:
  """CPU seconds (user + system) of this process's live child processes, from /proc."""
  total = 0
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
      continue
  return total / _CLOCK_TICKS


def _loader_cpu(iterator: Any) -> float:
  """The loader's CPU seconds so far, less the consuming thread's (see the module doc)."""
  if hasattr(iterator, 'loader_cpu_seconds'):
    return iterator.loader_cpu_seconds
  return time.process_time() - time.thread_time() + _children_cpu()


def measure(storage: str, folder: str, threads: int, workers: int) -> dict[str, Any]:
  """One row: the train iterator of `folder` timed over --batches batches."""
  batch = _BATCH_SIZE.value
  iterator = input_pipeline.create_train_iterator(
      _data_config(folder, threads, workers), global_batch_size=batch, seed=0,
      process_index=0, process_count=1)
  staging = np.empty((batch, _CROP_SIZE.value, _CROP_SIZE.value, 3), np.uint8)
  try:
    for _ in range(_WARMUP.value):
      np.copyto(staging, next(iterator)['image'])
    loader_before, handoff, handoff_read = _loader_cpu(iterator), 0.0, 0.0
    began = time.perf_counter()
    for _ in range(_BATCHES.value):
      start = time.thread_time()
      images = next(iterator)['image']
      received = time.thread_time()
      np.copyto(staging, images)
      handoff += received - start
      handoff_read += time.thread_time() - start
    wall = time.perf_counter() - began
    loader = _loader_cpu(iterator) - loader_before
  finally:
    close = getattr(iterator, 'close', None)
    if close:
      close()
  images = _BATCHES.value * batch
  return {'format': storage, 'threads': threads, 'workers': workers, 'images': images,
          'batch_size': batch, 'images_per_cpu_second': round(images / max(loader, 1e-9)),
          'main_cpu_us_per_image': round(handoff / images * 1e6, 2),
          'main_read_cpu_us_per_image': round(handoff_read / images * 1e6, 2),
          'images_per_second': round(images / wall)}


def _plan(storage: str) -> list[tuple[int, int]]:
  """(threads, workers) of the rows of one storage."""
  rows = [(int(t), 0) for t in _THREADS.value]
  if storage == 'jpeg':
    rows += [(1, int(w)) for w in _WORKERS.value if int(w) > 0]
  return rows


def _storage_of(folder: str) -> str:
  description = prepared_format.read_dataset_json(folder)
  if description is None:
    raise app.UsageError(f'{folder} holds no complete prepared dataset '
                         f'({prepared_format.what_is_missing(folder)})')
  return prepared_format.storage(description)


def _print(rows: list[dict[str, Any]]) -> None:
  print(f'{"format":6} {"threads":>7} {"workers":>7} {"img/CPU-s":>10} {"main us/img":>11} '
        f'{"+read us/img":>12} {"img/s wall":>10}')
  for r in rows:
    print(f'{r["format"]:6} {r["threads"]:7d} {r["workers"]:7d} '
          f'{r["images_per_cpu_second"]:10,d} {r["main_cpu_us_per_image"]:11.1f} '
          f'{r["main_read_cpu_us_per_image"]:12.1f} {r["images_per_second"]:10,d}')


def main(argv: list[str]) -> None:
  del argv
  root = _KEEP.value or tempfile.mkdtemp(prefix='input_pipeline_')
  try:
    if _PREPARED.value:
      folders = {_storage_of(_PREPARED.value): _PREPARED.value}
    else:
      folders = input_formats_data.prepare_both(root, _NUM_IMAGES.value, _IMAGE_SIZE.value)
    rows = [measure(storage, folder, threads, workers)
            for storage, folder in folders.items() for threads, workers in _plan(storage)]
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  _print(rows)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'cpu_count': os.cpu_count(), 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
