r"""CPU time per image of the JPEG train path with worker processes, by hand-off, side by side.

  python -m benchmarks.jpeg_handoff            # from the repo root; a few minutes on 2 cores
  python -m benchmarks.jpeg_handoff --workers=4 --batch_size=256 --batches=40 --json=h.json

The training input with `data.worker_count > 0` (input_pipeline.prefetch_in_workers) on
generated photo-like 256x256 JPEGs (quality 95), 224 crops, in two ways:
  * fresh: grain's own hand-off, a new shared-memory segment per batch, which the
    worker fills and the main process maps, reads and unlinks;
  * ring: each worker's ring of reused slots (data/batch_handoff.py).
The main process reads each batch once (copies its images into one reused buffer, as
a host-to-device transfer reads them). After a warm-up, for --batches batches:
  * main_cpu_us_per_image: the main process's CPU time (all its threads: grain's
    receiving threads, the unmapping, the read) per image;
  * worker_cpu_us_per_image: the worker processes' CPU time per image (decode, crop,
    batch, the copy into shared memory).
Modes alternate for --repeats rounds; each row is the median of its rounds.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import grain
import numpy as np
import psutil

from alexnet_jax.data import decoding
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import prepared_format
from alexnet_jax.data import sources

_IMAGES = flags.DEFINE_integer('images', 64, 'Generated JPEGs (cycled).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_BATCHES = flags.DEFINE_integer('batches', 24, 'Timed batches per round.')
_WARMUP = flags.DEFINE_integer('warmup', 4, 'Batches read before the clocks start.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Worker processes.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds of each mode, alternating.')
_QUALITY = flags.DEFINE_integer('quality', 95, 'JPEG quality of the generated images.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')

SIZE, CROP = 256, 224
MODES = {'fresh': False, 'ring': True}  # name -> reuse_memory


def _records(count: int, quality: int) -> list[bytes]:
  """Photo windows (scikit-learn's two sample photos) with colour changes and grain."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  photos = [np.asarray(p, np.float32) for p in datasets.load_sample_images().images]
  rng = np.random.default_rng(0)
  records = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - SIZE + 1))
    left = int(rng.integers(0, photo.shape[1] - SIZE + 1))
    image = photo[top:top + SIZE, left:left + SIZE] * rng.uniform(0.7, 1.3, 3)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    records.append(prepared_format.encode_record(i % 8, decoding.encode_jpeg(image, quality)))
  return records


def _dataset(records: list[bytes]) -> grain.MapDataset:
  source = sources.RecordSource(records=records, parse=prepared_format.decode_record,
                                resize=False)
  return input_pipeline.make_train_dataset(
      source, image_size=SIZE, crop_size=CROP, flip=True, lighting_std=0.1,
      eigvals=np.ones(3, np.float32), eigvecs=np.eye(3, dtype=np.float32),
      global_batch_size=_BATCH_SIZE.value, seed=0, process_index=0, process_count=1)


def _main_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _workers_cpu() -> float:
  total = 0.0
  for child in psutil.Process().children(recursive=True):
    try:
      if 'resource_tracker' not in ' '.join(child.cmdline()):
        times = child.cpu_times()
        total += times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return total


def _round(dataset: grain.MapDataset, reuse: bool) -> dict[str, float]:
  """One mode once: CPU seconds of the main process and the workers over the batches."""
  iter_dataset = input_pipeline.prefetch_in_workers(
      dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)),
      workers=_WORKERS.value, buffer=2, reuse_memory=reuse)
  iterator = iter(iter_dataset)
  target = np.empty((_BATCH_SIZE.value, CROP, CROP, 3), np.uint8)
  for _ in range(_WARMUP.value):
    np.copyto(target, next(iterator)['image'])
  main, workers, wall = _main_cpu(), _workers_cpu(), time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
    np.copyto(target, batch['image'])  # the one read a transfer makes
    del batch
  main, workers = _main_cpu() - main, _workers_cpu() - workers
  wall = time.perf_counter() - wall
  iterator.close()
  images = _BATCHES.value * _BATCH_SIZE.value
  return {'main_cpu_us_per_image': main / images * 1e6,
          'worker_cpu_us_per_image': workers / images * 1e6,
          'images_per_second': images / wall}


def main(argv: list[str]) -> None:
  del argv
  dataset = _dataset(_records(_IMAGES.value, _QUALITY.value))
  rounds: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
  for _ in range(_REPEATS.value):
    for name, reuse in MODES.items():
      rounds[name].append(_round(dataset, reuse))
  rows = []
  for name, results in rounds.items():
    row: dict[str, Any] = {'handoff': name, 'workers': _WORKERS.value,
                           'batch_size': _BATCH_SIZE.value,
                           'images': _BATCHES.value * _BATCH_SIZE.value}
    for key in results[0]:
      row[key] = round(statistics.median(r[key] for r in results), 1)
    rows.append(row)
  print(f'{"handoff":8} {"main CPU us/image":>18} {"worker CPU us/image":>20} '
        f'{"images/s (wall)":>16}')
  for row in rows:
    print(f'{row["handoff"]:8} {row["main_cpu_us_per_image"]:18.1f} '
          f'{row["worker_cpu_us_per_image"]:20.1f} {row["images_per_second"]:16.0f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=1)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
