r"""Train-pipeline throughput against a plain per-image PIL loader, side by side.

  python -m benchmarks.loader_baseline          # from the repo root; 1-2 min on 2 cores
  python -m benchmarks.loader_baseline --num_images=2000 --batches=100 --batch_size=128
  python -m benchmarks.loader_baseline --prepared=DIR --modes=grain_1,grain_n,grain_p \
      --batch_size=512 --json=input.json          # an existing prepared dataset only

Two kinds of input, both read from files on disk:
  * full-size: generated ImageNet-like JPEGs (500x375, quality 90; random windows of
    scikit-learn's two bundled photos with colour changes and grain), which the
    pipeline decodes (reduced-scale when possible), resizes to 256 and crops;
  * prepared: the same images after `alexnet_jax.prepare` (256x256 ArrayRecord shards).

For each, images/second of
  * the baseline: per image PIL open -> RGB -> resize shorter side to 256 (bilinear,
    anti-aliased) -> central 256 crop -> random 224 crop -> random flip -> uint8 array,
    batches stacked, as torchvision's ImageFolder + DataLoader does; one worker, then
    a process pool with one worker per core;
  * this project's grain pipeline (input_pipeline.make_train_dataset: the same work
    plus shuffling and the PCA lighting parameters): one thread, one thread per core,
    and one worker process per core;
and the ratios pipeline / baseline at equal parallelism. The prepared baseline reads
the prepared 256x256 JPEGs as files (its resize is then a no-op).

--prepared=DIR skips the generated images and times DIR's train split (the kind
"prepared" only); --modes picks the measurements (pil_1, grain_1, pil_n, grain_n,
grain_p, and the GIL modes below); --json writes the rates.

Decoding at scale (docs/design.md, "Input pipeline on a GPU host"): threads share one
GIL, and only the JPEG decoder releases it. Three more measurements split a record's
time into the part that holds the GIL and the part that does not:
  * stub_1: the grain pipeline on one thread with the JPEG decoder replaced by a
    ready-made image: what is left (record read, parse, rng, crop, flip, lighting,
    batching) is the per-record work outside the decoder, an upper bound on the
    GIL-held time (a little of it is numpy copying, which may run without the GIL);
  * gil_1: the pipeline on one thread while a pure-Python counter thread spins: the
    counter's lost share of the GIL, times the elapsed time, per record, is the
    GIL-held time directly (needs a second core for the counter; sys.setswitchinterval
    is lowered so the two threads trade the GIL quickly);
  * grain_1p: one worker process (with grain_p, the process scaling).
and --project_cores=N prints the Amdahl projection for N cores: threads at
1 / (t_gil + (t_1 - t_gil) / N), t_1 the one-thread time per record; processes at
N x the one-process rate x the measured efficiency of `cores` processes.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import grain
import numpy as np
from PIL import Image

from alexnet_jax.data import decoding
from alexnet_jax.data import input_pipeline
from alexnet_jax import prepare
from configs import imagenet

_NUM_IMAGES = flags.DEFINE_integer('num_images', 192, 'Generated images (8 classes).')
_BATCHES = flags.DEFINE_integer('batches', 12, 'Timed batches per measurement.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Images per batch.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Stored image side.')
_CROP_SIZE = flags.DEFINE_integer('crop_size', 224, 'Train crop side.')
_CORES = flags.DEFINE_integer('cores', 0, 'Parallelism of the "all cores" rows; '
                              '0: os.cpu_count().')
_PROCESSES = flags.DEFINE_bool('processes', True, 'Also measure grain worker processes.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Interleaved rounds; the best counts.')
_KEEP = flags.DEFINE_string('keep', '', 'Keep the generated files in this folder.')
_PREPARED = flags.DEFINE_string('prepared', '', 'Time this prepared dataset instead of '
                                'generated images (kind "prepared" only).')
MODES = ('pil_1', 'grain_1', 'pil_n', 'grain_n', 'grain_p', 'stub_1', 'gil_1', 'grain_1p')
_MODES = flags.DEFINE_list('modes', list(MODES), f'Measurements, of {MODES} (grain_p only '
                           'with --processes).')
_JSON = flags.DEFINE_string('json', '', 'Also write the rates to this JSON file.')
_PROJECT_CORES = flags.DEFINE_integer('project_cores', 16, 'Cores of the host the Amdahl '
                                      'projection is for (needs grain_1 and stub_1 or gil_1).')

CLASSES = 8


# ----------------------------------------------------------------------------------
# Data.


def _generate(folder: str, count: int, rng: np.random.Generator) -> list[tuple[str, int]]:
  """Writes count ImageNet-like JPEGs as an ImageFolder train/ tree; returns (path, label)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  photos = [np.asarray(p) for p in datasets.load_sample_images().images]  # 427x640.
  items = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top = rng.integers(0, photo.shape[0] - 375 + 1)
    left = rng.integers(0, photo.shape[1] - 500 + 1)
    image = photo[top:top + 375, left:left + 500].astype(np.float32)
    image = image * rng.uniform(0.7, 1.3, 3) + rng.normal(0, 6, image.shape)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    label = i % CLASSES
    path = os.path.join(folder, 'train', f'c{label}', f'{i}.JPEG')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    items.append((path, label))
  return items


def _extract_prepared(folder: str, out: str) -> list[tuple[str, int]]:
  """Writes the prepared JPEGs as files, for the baseline to read the same bytes."""
  os.makedirs(out, exist_ok=True)
  source = input_pipeline.open_split(_data_config(folder), 'train')
  items = []
  for i in range(len(source.records)):
    data, label = source.parse(source.records[i])
    path = os.path.join(out, f'{i}.jpg')
    with open(path, 'wb') as f:
      f.write(data)
    items.append((path, label))
  return items


class Cycled:
  """A record source of ImageNet's length that repeats a few records.

  grain's index shuffle costs far more per element on tiny datasets (~0.3 ms at 200
  records) than at ImageNet's 1.28M (~0.02 ms); presenting the sample at full length
  times the pipeline as it runs in real training.
  """

  def __init__(self, records: Any, length: int = 1_281_167):
    self._records = records
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Any:
    return self._records[index % len(self._records)]


def read_file(item: tuple[str, int]) -> tuple[bytes, int]:
  """Record parser of the full-size source: the file's bytes and the label."""
  path, label = item
  with open(path, 'rb') as f:
    return f.read(), label


def _data_config(folder: str):
  config = imagenet.get_config().data
  config.dir = folder
  config.image_size = _IMAGE_SIZE.value
  config.crop_size = _CROP_SIZE.value
  return config


# ----------------------------------------------------------------------------------
# The baseline: what a torchvision-style loader does per image.


def pil_load(item: tuple[str, int], rng: np.random.Generator, size: int,
             crop: int) -> tuple[np.ndarray, int]:
  path, label = item
  with Image.open(path) as image:
    image = image.convert('RGB')
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.Resampling.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    y, x = rng.integers(0, size - crop + 1, 2)
    image = image.crop((x, y, x + crop, y + crop))
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image), label


def pil_batch(args: tuple[Sequence[tuple[str, int]], int, int, int]) -> dict[str, np.ndarray]:
  items, seed, size, crop = args
  rng = np.random.default_rng(seed)
  loaded = [pil_load(item, rng, size, crop) for item in items]
  return {'image': np.stack([im for im, _ in loaded]),
          'label': np.array([lab for _, lab in loaded], np.int32)}


def _baseline_batches(items, batch_size, count):
  rng = np.random.default_rng(0)
  for step in range(count):
    chosen = rng.choice(len(items), batch_size, replace=False)
    yield ([items[i] for i in chosen], step, _IMAGE_SIZE.value, _CROP_SIZE.value)


def measure_baseline(items, workers: int) -> float:
  batch, count = _BATCH_SIZE.value, _BATCHES.value
  if workers <= 1:
    pil_batch(next(_baseline_batches(items, batch, 1)))  # Warm the page cache.
    start = time.perf_counter()
    for args in _baseline_batches(items, batch, count):
      pil_batch(args)
    return batch * count / (time.perf_counter() - start)
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    pool.map(pil_batch, list(_baseline_batches(items, batch, workers)))  # Start up.
    start = time.perf_counter()
    for _ in pool.imap(pil_batch, _baseline_batches(items, batch, count)):
      pass
    return batch * count / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------
# The grain pipeline.


def measure_pipeline(source: input_pipeline.RecordSource, info_like: dict[str, Any],
                     threads: int, processes: int) -> float:
  dataset = input_pipeline.make_train_dataset(
      source, image_size=_IMAGE_SIZE.value, crop_size=_CROP_SIZE.value, flip=True,
      lighting_std=0.1, eigvals=info_like['eigvals'], eigvecs=info_like['eigvecs'],
      global_batch_size=_BATCH_SIZE.value, seed=0, process_index=0, process_count=1)
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads)))
  if processes:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=2))
  iterator = iter(iter_dataset)
  # Warm up (and start the workers) past what the buffers hold, twice over: the threads'
  # prefetch buffer, or each worker's. Timed from a full buffer, the first batches would
  # come for free (with 16 threads, 16 of them).
  buffered = max(2, threads) + 2 * processes
  for _ in range(2 * buffered):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  rate = _BATCH_SIZE.value * _BATCHES.value / (time.perf_counter() - start)
  if processes:
    iterator.close()
  return rate


class _StubbedDecoder:
  """While active: `decoding.decode` returns one ready-made image instead of decoding."""

  def __init__(self, source: input_pipeline.RecordSource):
    data, _ = source.parse(source.records[0])
    self._image = decoding.decode(data)
    self._real = decoding.decode

  def __enter__(self):
    decoding.decode = lambda data, min_size=0: self._image
    return self

  def __exit__(self, *exc):
    decoding.decode = self._real


def measure_stubbed(source: input_pipeline.RecordSource, info_like: dict[str, Any]) -> float:
  """Images/s of the one-thread pipeline without the JPEG decoder (see the docstring)."""
  if source.resize:
    raise app.UsageError('stub_1 times prepared shards only (full-size images also resize)')
  with _StubbedDecoder(source):
    return measure_pipeline(source, info_like, 1, 0)


class _Spinner:
  """A pure-Python counter thread: its counting rate is the share of the GIL it gets."""

  def __init__(self):
    self.count = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._spin, daemon=True)

  def _spin(self) -> None:
    stop = self._stop.is_set
    while not stop():
      self.count += 1

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def spin_rate(seconds: float) -> float:
  """Counts per second of the counter thread alone (the main thread sleeps)."""
  with _Spinner() as spinner:
    time.sleep(0.2)
    start, first = time.perf_counter(), spinner.count
    time.sleep(seconds)
    return (spinner.count - first) / (time.perf_counter() - start)


def measure_gil(source: input_pipeline.RecordSource, info_like: dict[str, Any]
                ) -> dict[str, float]:
  """GIL-held seconds per record of the one-thread pipeline, from a counter's lost share.

  The counter's rate alone is measured just before and just after, and their mean is
  its rate with the whole GIL; with the pipeline running, it counts (1 - f) of that,
  f the pipeline's share of the GIL over the timed batches.
  """
  old_interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-4)
  try:
    before = spin_rate(1.0)
    dataset = input_pipeline.make_train_dataset(
        source, image_size=_IMAGE_SIZE.value, crop_size=_CROP_SIZE.value, flip=True,
        lighting_std=0.1, eigvals=info_like['eigvals'], eigvecs=info_like['eigvecs'],
        global_batch_size=_BATCH_SIZE.value, seed=0, process_index=0, process_count=1)
    iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                              prefetch_buffer_size=2)))
    for _ in range(4):
      next(iterator)
    with _Spinner() as spinner:
      start, first = time.perf_counter(), spinner.count
      for _ in range(_BATCHES.value):
        next(iterator)
      elapsed, counted = time.perf_counter() - start, spinner.count - first
    after = spin_rate(1.0)
  finally:
    sys.setswitchinterval(old_interval)
  alone = (before + after) / 2
  share = max(0.0, 1.0 - counted / elapsed / alone)
  records = _BATCH_SIZE.value * _BATCHES.value
  return {'images_per_sec': records / elapsed, 'gil_share': share,
          'gil_seconds_per_record': share * elapsed / records,
          'spin_alone_before': before, 'spin_alone_after': after}


def amdahl_threads(t_one: float, t_gil: float, cores: int) -> float:
  """Images/s of `cores` threads when t_gil of each record's t_one seconds is serial."""
  return 1.0 / (t_gil + (t_one - t_gil) / cores)


def projection(rates: dict[str, float], gil: dict[str, float] | None, cores: int,
               measured_cores: int) -> dict[str, Any]:
  """The Amdahl projection of threads and processes for `cores` cores (see the docstring)."""
  out: dict[str, Any] = {'cores': cores}
  t_one = 1.0 / rates['grain_1']
  estimates = {}
  if 'stub_1' in rates:
    estimates['stub'] = min(t_one, 1.0 / rates['stub_1'])
  if gil is not None:
    estimates['contention'] = min(t_one, gil['gil_seconds_per_record'])
  for name, t_gil in estimates.items():
    out[f'threads_{name}'] = {
        't_one_us': 1e6 * t_one, 't_gil_us': 1e6 * t_gil, 'serial_fraction': t_gil / t_one,
        'threads_at_measured': amdahl_threads(t_one, t_gil, measured_cores),
        'threads_projected': amdahl_threads(t_one, t_gil, cores),
        'threads_limit': 1.0 / t_gil}
  if 'grain_1p' in rates and 'grain_p' in rates:
    efficiency = rates['grain_p'] / (measured_cores * rates['grain_1p'])
    out['processes'] = {'efficiency': efficiency,
                        'processes_projected': cores * rates['grain_1p'] * efficiency}
  return out


# ----------------------------------------------------------------------------------


def _best(measurements: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
  """Best rate of each measurement over `repeats` interleaved rounds.

  Interleaving spreads slow phases of a shared machine over all candidates; the best
  round is the least disturbed one.
  """
  rates = {name: 0.0 for name in measurements}
  for round_index in range(repeats):
    for name, measure in measurements.items():
      rate = measure()
      rates[name] = max(rates[name], rate)
      print(f'  round {round_index + 1}: {name:<40s} {rate:8.0f} img/s', flush=True)
  return rates


def _sources(root: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(record sources, baseline file lists, lighting stats) of each kind of input."""
  need_files = any(m.startswith('pil') for m in _MODES.value)
  if _PREPARED.value:
    prepared, kinds = _PREPARED.value, ('prepared',)
    full_items = []
  else:
    start = time.perf_counter()
    full_items = _generate(os.path.join(root, 'images'), _NUM_IMAGES.value,
                           np.random.default_rng(0))
    sizes = [os.path.getsize(p) for p, _ in full_items]
    print(f'generated {len(full_items)} 500x375 JPEGs (quality 90, mean '
          f'{np.mean(sizes) / 1024:.0f} KiB) in {time.perf_counter() - start:.1f} s')
    prepared, kinds = os.path.join(root, 'prepared'), ('full-size', 'prepared')
    shutil.rmtree(prepared, ignore_errors=True)
    report = prepare.prepare(os.path.join(root, 'images'), prepared,
                             image_size=_IMAGE_SIZE.value, progress=False)
    print(f'prepare (1 process): {report["converted"]["train"] / report["seconds"]:.0f}'
          f' img/s')
  info = input_pipeline.load_info(_data_config(prepared))
  stats = {'eigvals': info.eigvals, 'eigvecs': info.eigvecs}
  prepared_source = input_pipeline.open_split(_data_config(prepared), 'train')
  print(f'prepared train split: {len(prepared_source.records)} records in {prepared}')
  sources = {'prepared': input_pipeline.RecordSource(Cycled(prepared_source.records),
                                                     prepared_source.parse, resize=False)}
  baseline_items = {'prepared': _extract_prepared(prepared, os.path.join(root, 'prepared_files'))
                    if need_files else []}
  if 'full-size' in kinds:
    sources['full-size'] = input_pipeline.RecordSource(Cycled(full_items), read_file,
                                                       resize=True)
    baseline_items['full-size'] = full_items
  return {k: sources[k] for k in kinds}, baseline_items, stats


def print_projection(projected: dict[str, Any], rates: dict[str, float], cores: int) -> None:
  n = projected['cores']
  print(f'\nper record, prepared shards: {1e6 / rates["grain_1"]:.0f} us on one thread')
  for name in ('stub', 'contention'):
    p = projected.get(f'threads_{name}')
    if p is None:
      continue
    measured = (f', measured {rates["grain_n"]:.0f}' if 'grain_n' in rates else '')
    print(f'  GIL-held ({name}): {p["t_gil_us"]:.0f} us = {p["serial_fraction"]:.0%} serial; '
          f'Amdahl: {cores} threads {p["threads_at_measured"]:.0f} img/s{measured}; '
          f'{n} threads {p["threads_projected"]:.0f} img/s (limit {p["threads_limit"]:.0f})')
  if 'processes' in projected:
    p = projected['processes']
    print(f'  processes: {cores} at {p["efficiency"]:.0%} of {cores} x one process; '
          f'{n} processes at that efficiency: {p["processes_projected"]:.0f} img/s')


def main(argv: Sequence[str]) -> None:
  del argv
  cores = _CORES.value or os.cpu_count() or 1
  for mode in _MODES.value:
    if mode not in MODES:
      raise app.UsageError(f'unknown mode {mode!r}; choose from {MODES}')
  root = _KEEP.value or tempfile.mkdtemp(prefix='input_bench_')
  os.makedirs(root, exist_ok=True)
  try:
    sources, baseline_items, stats = _sources(root)
    print(f'batch {_BATCH_SIZE.value}, {_BATCHES.value} timed batches, crop '
          f'{_CROP_SIZE.value}, {cores} cores')
    factories = {
        'pil_1': lambda kind: functools.partial(measure_baseline, baseline_items[kind], 1),
        'grain_1': lambda kind: functools.partial(measure_pipeline, sources[kind], stats, 1, 0),
        'pil_n': lambda kind: functools.partial(measure_baseline, baseline_items[kind], cores),
        'grain_n': lambda kind: functools.partial(measure_pipeline, sources[kind], stats, cores,
                                                  0),
        'grain_p': lambda kind: functools.partial(measure_pipeline, sources[kind], stats, 1,
                                                  cores),
        'stub_1': lambda kind: functools.partial(measure_stubbed, sources[kind], stats),
        'grain_1p': lambda kind: functools.partial(measure_pipeline, sources[kind], stats, 1,
                                                   1),
    }
    processes = _PROCESSES.value
    modes = [m for m in MODES if m in _MODES.value and (cores > 1 or not m.endswith('_n'))
             and (m != 'grain_p' or (cores > 1 and processes))
             and (m != 'grain_1p' or processes)]
    # The decoder stub and the GIL counter: prepared shards only (no resize in the way).
    measurements = {f'{kind}: {m}': factories[m](kind) for kind in sources for m in modes
                    if m != 'gil_1' and (kind == 'prepared' or m != 'stub_1')}
    rates = _best(measurements, _REPEATS.value)
    results = {kind: {key.split(': ')[1]: rate for key, rate in rates.items()
                      if key.startswith(kind + ':')} for kind in sources}
    gil = None
    if 'gil_1' in modes:
      runs = []
      for round_index in range(_REPEATS.value):
        runs.append(measure_gil(sources['prepared'], stats))
        print(f'  round {round_index + 1}: prepared: gil_1 (1 thread + counter)  '
              f'{runs[-1]["images_per_sec"]:8.0f} img/s, GIL share '
              f'{runs[-1]["gil_share"]:.2f}, {1e6 * runs[-1]["gil_seconds_per_record"]:.0f} '
              'us GIL-held per record', flush=True)
      gil = sorted(runs, key=lambda r: r['gil_seconds_per_record'])[len(runs) // 2]  # median

    print(f'\nimages/second, best of {_REPEATS.value} (ratio to the PIL baseline at '
          'equal parallelism)')
    header = f'{"":30s}' + ''.join(f'{kind:>24s}' for kind in results)
    print(header)
    rows = [('PIL, 1 worker', 'pil_1', 'pil_1'), ('grain, 1 thread', 'grain_1', 'pil_1'),
            (f'PIL, {cores} workers', 'pil_n', 'pil_n'),
            (f'grain, {cores} threads', 'grain_n', 'pil_n'),
            ('grain, 1 process', 'grain_1p', 'pil_1'),
            (f'grain, {cores} processes', 'grain_p', 'pil_n'),
            ('grain, 1 thread, no decoder', 'stub_1', 'pil_1')]
    for label, key, ref in rows:
      if key not in modes:
        continue
      cells = ''.join((f'{r[key]:>14.0f}' + (f' ({r[key] / r[ref]:4.2f}x)' if ref in r else
                                               f'{"":>8s}')) if key in r else f'{"-":>22s}'
                      for r in results.values())
      print(f'{label:30s}{cells}')
    if 'full-size' in results and 'grain_1' in modes:
      full, prep = results['full-size'], results['prepared']
      print(f'prepared vs full-size, grain 1 thread: {prep["grain_1"] / full["grain_1"]:.2f}x')
    projected = None
    prep = results.get('prepared', {})
    if 'grain_1' in prep and ('stub_1' in prep or gil is not None):
      projected = projection(prep, gil, _PROJECT_CORES.value, cores)
      print_projection(projected, prep, cores)
    if _JSON.value:
      with open(_JSON.value, 'w') as f:
        json.dump({'cores': cores, 'batch_size': _BATCH_SIZE.value, 'batches': _BATCHES.value,
                   'repeats': _REPEATS.value, 'crop_size': _CROP_SIZE.value,
                   'prepared': _PREPARED.value or None, 'images_per_sec': results,
                   'gil': gil, 'projection': projected}, f, indent=1)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
