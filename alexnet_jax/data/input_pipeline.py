"""The input pipelines of one process: stored images -> its rows of each batch.

Train on a raw-pixel dataset: `gather`, the batch-level path (plans drawn per global
batch by `batch_sampler`, crops copied by threads into a ring of reused buffers).
Train on JPEG (and tfds) records, grain: global shuffle (a fresh permutation every
epoch, from the seed) -> repeat -> `transforms.TrainTransform` with grain's per-record
rng -> this process's rows
(`ProcessBlocks`) -> batch. Augmenting before the per-process slice makes each
record's rng depend on its global position, so the global batch sequence is a pure
function of (seed, data, step) for any process count. Eval: the split once, padded
to whole global batches, through `transforms.EvalTransform`.

With data.worker_count > 0 the batches are made in worker processes and reach this one
through each worker's ring of reused shared memory (`batch_handoff`).

Both train paths give the same layout and the same guarantees, not the same draws: the
grain path draws per record, the gather per batch (docs/design.md, "Augmentation").

Train batch (b = global_batch_size // process_count, c = crop_size):
  image uint8 (b, c, c, 3), the crop unmirrored; crop int32 (b, 2) (top, left) in the
  stored image; flip bool (b,), whether `preprocess.normalize` mirrors it on the device;
  lighting float32 (b, 3) in 0-255 units; label int32 (b,).
Eval batch (V = 1 center crop, or the paper's 10 views): image uint8 (b, V, c, c, 3), unmirrored;
  crop int32 (b, V, 2); flip bool (b, V); lighting float32 zeros (b, V, 3);
  label int32 (b,); mask bool (b,) (False on padding that completes the last batch).
"""

from __future__ import annotations

import functools
import math
import os

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from alexnet_jax.data import batch_handoff
from alexnet_jax.data import batch_sampler
from alexnet_jax.data import gather
from alexnet_jax.data import raw_format
from alexnet_jax.data import sources
from alexnet_jax.data import transforms
from alexnet_jax.data import worker_guard
# Names callers have long reached through this module; they live where imported from.
# pylint: disable=unused-import
from alexnet_jax.data.dataset_info import DatasetInfo, mean_for_config, steps_per_epoch
from alexnet_jax.data.sources import RecordSource, load_info, open_split
from alexnet_jax.data.transforms import EvalTransform
# pylint: enable=unused-import


def _processes(process_index: int | None,
               process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} is not in [0, {count})')
  return index, count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not a positive '
                     f'multiple of the process count {process_count}')
  return global_batch_size // process_count


class ProcessBlocks(grain.MapDataset):
  """Process `index`'s rows of each global batch: the contiguous block
  [index * b, (index + 1) * b) of every run of `global_batch` elements, b = global / count.

  Contiguous, not strided, because `jax.make_array_from_process_local_data`
  places process p's rows at that block of the global batch: a multi-process
  step then sees exactly the batch (order included, so dropout masks too) of a
  single process.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._local, self._index = global_batch, global_batch // count, index
    self._length = len(parent) // global_batch * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, i: int) -> int:
    batch, row = divmod(i, self._local)
    return batch * self._global + self._index * self._local + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return f'ProcessBlocks(global_batch={self._global}, index={self._index})'


def make_train_dataset(source: sources.RecordSource, *, image_size: int, crop_size: int,
                       flip: bool, lighting_std: float, eigvals: np.ndarray,
                       eigvecs: np.ndarray, global_batch_size: int, seed: int,
                       process_index: int, process_count: int,
                       random_crop: bool = True) -> grain.MapDataset:
  """The infinite train MapDataset of one process: batches of uint8 crops.

  random_crop=False trains on the central crop (flips and lighting still apply).
  """
  local_batch = _local_batch(global_batch_size, process_count)
  # Explicit seeds, so adding a step to the chain never changes the data order.
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  transform = transforms.TrainTransform(
      parse=source.parse, resize=source.resize, image_size=image_size,
      crop_size=crop_size, flip=flip, lighting_std=float(lighting_std),
      eigvals=np.asarray(eigvals, np.float32), eigvecs=np.asarray(eigvecs, np.float32),
      random_crop=bool(random_crop))
  return (grain.MapDataset.source(source.records)
          .shuffle(seed=int(shuffle_seed))  # Reseeded per epoch by repeat().
          .repeat()
          .random_map(transform, seed=int(augment_seed))
          .pipe(ProcessBlocks, global_batch_size, process_index, process_count)
          .batch(local_batch, drop_remainder=True))


def make_eval_dataset(source: sources.RecordSource, *, image_size: int, crop_size: int,
                      crops: int, global_batch_size: int, process_index: int,
                      process_count: int) -> grain.MapDataset:
  """The finite eval MapDataset of one process over the whole split, padded."""
  local_batch = _local_batch(global_batch_size, process_count)
  views = transforms.eval_views(image_size, crop_size, crops)
  num_records = len(source.records)
  padded = math.ceil(num_records / global_batch_size) * global_batch_size
  transform = transforms.EvalTransform(
      records=source.records, parse=source.parse, resize=source.resize,
      num_records=num_records, image_size=image_size, crop_size=crop_size, views=views)
  return (grain.MapDataset.range(padded)
          .pipe(ProcessBlocks, global_batch_size, process_index, process_count)
          .map(transform)
          .batch(local_batch))


def handoff_slots(buffer: int) -> int:
  """Ring slots of one worker: its own buffer, the batches in grain's queue and
  threads between it and the main process (about two buffers), and those the main
  process holds (device prefetch, a transfer, the step), spread over the workers."""
  return 2 * buffer + 4


def prefetch_in_workers(iter_dataset: grain.IterDataset, *, workers: int, buffer: int,
                        reuse_memory: bool = True) -> grain.IterDataset:
  """`iter_dataset` made in `workers` processes, its batches handed over through each
  worker's ring of reused shared memory (batch_handoff), or with reuse_memory=False,
  in grain's fresh segment per batch."""
  if not flags.FLAGS.is_parsed():
    # grain reads its absl flags when starting workers; outside `app.run` (tests,
    # notebooks) accept their defaults instead of failing.
    flags.FLAGS.mark_as_parsed()
  worker_guard.quiet_resource_tracker()  # a killed worker: the error line stays the last
  if reuse_memory:
    iter_dataset = iter_dataset.map(batch_handoff.SlotWriter(handoff_slots(buffer)))
  iter_dataset = iter_dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
      worker_init_fn=functools.partial(worker_guard.die_with_parent, parent=os.getpid()))
  return iter_dataset.map(batch_handoff.SlotReader()) if reuse_memory else iter_dataset


def _iterator(dataset: grain.MapDataset,
              data_config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  threads = int(data_config.num_threads)
  # Elements are whole batches: each thread builds one, `prefetch` wait ready.
  read = grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(int(data_config.prefetch), threads))
  iter_dataset = dataset.to_iter_dataset(read)
  if data_config.worker_count > 0:
    iter_dataset = prefetch_in_workers(iter_dataset, workers=int(data_config.worker_count),
                                       buffer=max(int(data_config.prefetch), 1))
  return iter(iter_dataset)


def uses_gather(data_config: ml_collections.ConfigDict) -> bool:
  """Whether training on the configured dataset takes the batch-level gather: raw pixels."""
  return (data_config.source == 'prepared' and bool(data_config.dir)
          and raw_format.is_raw(data_config.dir))


def make_gather_iterator(split: raw_format.RawSplit, info: DatasetInfo,
                         data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                         seed: int, process_index: int, process_count: int,
                         start: int) -> gather.GatherIterator:
  """The batch-level train iterator over a raw split (threads: data.num_threads)."""
  _local_batch(global_batch_size, process_count)
  sampler = batch_sampler.TrainSampler(
      num_records=len(split.labels), global_batch_size=global_batch_size,
      image_size=info.image_size, crop_size=data_config.crop_size, flip=data_config.flip,
      lighting_std=data_config.lighting_std, eigvals=info.eigvals, eigvecs=info.eigvecs,
      seed=seed, random_crop=data_config.get('random_crop', True))
  # One slot held by the consumer, `prefetch` filled ahead.
  return gather.GatherIterator(
      split.images, split.labels, sampler, process_index=process_index,
      process_count=process_count, num_threads=int(data_config.num_threads),
      ring_size=max(int(data_config.prefetch), 1) + 1, start=start)


def create_train_iterator(data_config: ml_collections.ConfigDict, *,
                          global_batch_size: int, seed: int,
                          process_index: int | None = None,
                          process_count: int | None = None,
                          start: int = 0) -> grain.DatasetIterator | gather.GatherIterator:
  """Endless, checkpointable (get_state/set_state) iterator of train batches.

  Every epoch is a fresh global permutation; batch k of process p is the same in
  every run and for any num_threads / worker_count. Local batch k holds process p's
  rows of global batch k for every process count (ProcessBlocks), so `start` (the
  global batches already read, as a checkpoint stores it) resumes the same global
  sequence with any number of processes: the first batch is batch `start`. A raw
  dataset gives a `gather.GatherIterator`, whose batches stay valid until the next
  `next` (its ring; `device_feed.DeviceFeed` honours it).
  """
  if not isinstance(start, int) or isinstance(start, bool) or start < 0:
    raise ValueError(f'start must be an integer >= 0, got {start!r}')
  source = sources.create_source(data_config)
  info = source.info()
  index, count = _processes(process_index, process_count)
  if uses_gather(data_config):
    return make_gather_iterator(
        raw_format.open_raw_split(data_config.dir, 'train'), info, data_config,
        global_batch_size=global_batch_size, seed=seed, process_index=index,
        process_count=count, start=start)
  dataset = make_train_dataset(
      source.split('train'), image_size=info.image_size,
      crop_size=data_config.crop_size, flip=data_config.flip,
      lighting_std=data_config.lighting_std, eigvals=info.eigvals,
      eigvecs=info.eigvecs, global_batch_size=global_batch_size, seed=seed,
      process_index=index, process_count=count,
      random_crop=data_config.get('random_crop', True))  # absent from runs stored before it
  # A slice of the MapDataset, not set_state: the same for threads and worker processes,
  # whose iterator states depend on the worker count.
  return _iterator(dataset[start:] if start else dataset, data_config)


def create_eval_iterator(data_config: ml_collections.ConfigDict, split: str = 'val', *,
                         global_batch_size: int, crops: int = 1,
                         process_index: int | None = None,
                         process_count: int | None = None) -> grain.DatasetIterator:
  """Iterator over the whole split once; every example has mask True exactly once
  across processes, padding has mask False. All processes get the same number of
  batches: ceil(split size / global_batch_size)."""
  index, count = _processes(process_index, process_count)
  dataset = make_eval_dataset(
      sources.open_split(data_config, split), image_size=data_config.image_size,
      crop_size=data_config.crop_size, crops=crops,
      global_batch_size=global_batch_size, process_index=index, process_count=count)
  return _iterator(dataset, data_config)
