"""The batch-level train path: crops copied from a memory-mapped uint8 array by threads.

For datasets stored as raw pixels, one (N, S, S, 3) uint8 array per split. Per batch
the only Python is the plan (`batch_sampler`, vectorised) and one task per thread;
the work is numpy slice copies, which release the GIL, so `num_threads` threads
scale across cores. Crops land in a ring of host buffers allocated once; nothing is
mirrored or converted on the host (`preprocess.normalize` does it on the device).

Ring contract: a batch from `next` stays valid until the following `next`, which
hands its buffers back to the ring. A consumer that transfers a batch must wait for
the transfer to finish before asking for the next one: `reuses_buffers` tells
`device_feed.DeviceFeed` to do so. Batches after the one held are filled ahead,
up to `ring_size - 1` of them (all `ring_size` while `next` runs).

Batch layout, iterator state and checkpoint semantics are those of the grain train
iterator (`input_pipeline`): `get_state()` is {'next_index': k}, k the global batches
handed out, which `storage.grain_state` reads as the data position.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import numpy as np

from alexnet_jax.data import batch_sampler

Batch = dict[str, np.ndarray]


def copy_crops(images: np.ndarray, plan: batch_sampler.BatchPlan, size: int,
               out: np.ndarray) -> None:
  """Writes the size x size crop of images[plan.index[i]] at plan.crop[i] into out[i]."""
  for i, (row, (top, left)) in enumerate(zip(plan.index.tolist(), plan.crop.tolist())):
    out[i] = images[row, top:top + size, left:left + size]


def page_aligned(shape: tuple[int, ...]) -> np.ndarray:
  """An uninitialised uint8 array that starts on a 4096-byte boundary.

  Aligned buffers copy at full speed and can be handed to devices without a staging
  copy (XLA:CPU then shares them: `device_feed` copies batches of reused buffers there).
  """
  size = int(np.prod(shape))
  raw = np.empty(size + 4096, np.uint8)
  offset = -raw.ctypes.data % 4096
  return raw[offset:offset + size].reshape(shape)


class _Slot:
  """One ring entry: the image buffer and the batch being filled into it."""

  def __init__(self, shape: tuple[int, ...]):
    self.image = page_aligned(shape)
    self.batch: Batch | None = None
    self.pending: list[concurrent.futures.Future] = []


class GatherIterator:
  """Endless iterator of one process's train batches, cut from `images` by threads.

  images: uint8 (N, S, S, 3), typically a read-only np.memmap; labels: int (N,).
  Batch k (the first is `start`) holds rows [p * b, (p + 1) * b) of global batch k,
  b = global batch / process_count.
  """

  reuses_buffers = True  # DeviceFeed: wait for each transfer before the next `next`

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               sampler: batch_sampler.TrainSampler, *, process_index: int,
               process_count: int, num_threads: int, ring_size: int, start: int = 0):
    if ring_size < 2:
      raise ValueError(f'ring_size must be >= 2 (one batch held, one filling), got {ring_size}')
    # A plain ndarray view of a memmap: slicing it skips np.memmap's per-view bookkeeping.
    self._images, self._sampler = np.asarray(images), sampler
    self._labels = np.asarray(labels, np.int32)
    self._process = (int(process_index), int(process_count))
    self._local = sampler.global_batch_size // process_count
    self._threads = max(int(num_threads), 1)
    shape = (self._local, sampler.crop_size, sampler.crop_size, images.shape[-1])
    self._ring = [_Slot(shape) for _ in range(ring_size)]
    self._pool = concurrent.futures.ThreadPoolExecutor(self._threads,
                                                       thread_name_prefix='gather')
    self._cpu_lock, self._cpu_seconds = threading.Lock(), 0.0
    self._next = self._scheduled = int(start)
    self._closed = False

  # --------------------------------------------------------------------- the ring

  def _slot(self, k: int) -> _Slot:
    return self._ring[k % len(self._ring)]

  def _copy(self, plan: batch_sampler.BatchPlan, out: np.ndarray) -> None:
    """One thread's share of a batch; counts the thread's CPU time."""
    began = time.thread_time()
    copy_crops(self._images, plan, self._sampler.crop_size, out)
    spent = time.thread_time() - began
    with self._cpu_lock:
      self._cpu_seconds += spent

  def _schedule(self, k: int) -> None:
    """Plans batch k and hands its rows to the threads, in even contiguous shares."""
    slot = self._slot(k)
    plan = self._sampler.local_batch(k, *self._process)
    bounds = np.linspace(0, self._local, self._threads + 1).astype(int)
    slot.pending = [self._pool.submit(self._copy, plan.rows(a, b), slot.image[a:b])
                    for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    slot.batch = {'image': slot.image, 'crop': plan.crop, 'flip': plan.flip,
                  'lighting': plan.lighting, 'label': self._labels[plan.index]}

  def _fill_ahead(self) -> None:
    """Schedules every batch whose slot no held or unread batch occupies."""
    # Called by `next`: the batch handed out last (self._next - 1) has just given its
    # slot back, so batches self._next .. self._next + ring size - 1 may all be filling.
    while self._scheduled < self._next + len(self._ring):
      self._schedule(self._scheduled)
      self._scheduled += 1

  def _drain(self) -> None:
    """Waits for (or cancels) every scheduled copy: no thread writes the ring after."""
    for slot in self._ring:
      for future in slot.pending:
        future.cancel()
      concurrent.futures.wait(slot.pending)
      slot.pending, slot.batch = [], None

  # --------------------------------------------------------------------- iterator

  def __iter__(self) -> 'GatherIterator':
    return self

  def __next__(self) -> Batch:
    if self._closed:
      raise StopIteration
    self._fill_ahead()
    slot = self._slot(self._next)
    for future in slot.pending:
      future.result()  # a copy's error is raised here, in the consumer's thread
    slot.pending = []
    self._next += 1
    return dict(slot.batch)

  def get_state(self) -> dict[str, int]:
    """{'next_index': global batches handed out}, as grain's thread iterators store it."""
    return {'next_index': self._next}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes at global batch state['next_index']; batches filled ahead are dropped."""
    position = state.get('next_index') if isinstance(state, dict) else None
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
      raise ValueError(f'not a state of this iterator: {state!r}')
    self._drain()
    self._next = self._scheduled = position

  @property
  def loader_cpu_seconds(self) -> float:
    """CPU seconds the copy threads have spent on crops so far (their thread clocks)."""
    with self._cpu_lock:
      return self._cpu_seconds

  def close(self) -> None:
    """Stops the threads after their current copy. Idempotent."""
    if not self._closed:
      self._closed = True
      self._drain()
      self._pool.shutdown(wait=True)

  def __enter__(self) -> 'GatherIterator':
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def __del__(self) -> None:
    try:
      self.close()
    except Exception:  # pylint: disable=broad-exception-caught
      pass  # interpreter shutdown: the pool may be gone already
