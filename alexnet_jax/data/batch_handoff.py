"""Batches from grain worker processes to the main process through reused shared memory.

grain's `mp_prefetch` copies every batch a worker makes into a fresh shared-memory
segment, which the main process maps, reads and unlinks: each batch's pages are
allocated and zeroed by the kernel in the worker, faulted in again by the main
process and freed afterwards, which costs more than decoding a fifth of the JPEGs.
Here each worker keeps a ring of slots in one segment made once: `SlotWriter` (the
last step inside the worker) copies the batch into a free slot and sends only a
`SlotBatch`, where it lies; `SlotReader` (the first step in the main process) maps
each ring once and hands out numpy views of the slot.

A slot is free again only when every array viewing it is gone: the views share one
base array whose finalizer clears the slot's flag. Whatever still holds the batch
(the device prefetch, a transfer reading it, a jax array that aliases host memory on
the CPU backend) keeps the slot from being overwritten. A worker that finds no free
slot (a consumer that keeps many batches) sends the batch itself, which grain
carries as before, so nothing waits on the ring. The order and content of batches
are those of grain's own path. A batch grain drops unread (set_state discards what
the workers made ahead) keeps its slot until its worker ends: the ring is one slot
shorter meanwhile.

The flags are one byte a slot at the start of the ring: the worker sets a slot's
byte before sending it, the main process clears it after the last reader let go;
each byte has one writer at a time. The main process unlinks the ring's name as soon
as it maps it, so the memory goes with the last of the two processes to exit; a
worker killed before its first batch arrives leaves the name to multiprocessing's
resource tracker, which removes it.
"""

from __future__ import annotations

import dataclasses
import math
from multiprocessing import shared_memory
import weakref
from typing import Any

import numpy as np

_ALIGN = 64  # each array's start: cache lines, and what a zero-copy device_put needs
_PAGE = 4096  # each slot's start, so no two slots share a page
_FREE, _HELD = 0, 1


def _round_up(size: int, multiple: int) -> int:
  return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One array of a batch inside its slot."""
  key: str
  shape: tuple[int, ...]
  dtype: str
  offset: int  # bytes from the slot's start


@dataclasses.dataclass(frozen=True)
class SlotBatch:
  """What a worker sends in place of a batch: which ring, which slot, which arrays."""
  ring: str  # the shared-memory name
  slots: int
  slot_bytes: int
  slot: int
  leaves: tuple[Leaf, ...]


def layout(batch: dict[str, np.ndarray]) -> tuple[tuple[Leaf, ...], int]:
  """Where each array of `batch` goes in a slot, and the slot's size in bytes."""
  leaves, offset = [], 0
  for key, value in batch.items():
    leaves.append(Leaf(key, tuple(value.shape), value.dtype.str, offset))
    offset = _round_up(offset + value.nbytes, _ALIGN)
  return tuple(leaves), _round_up(max(offset, 1), _PAGE)


def header_bytes(slots: int) -> int:
  return _round_up(slots, _PAGE)


def _fits(batch: Any, leaves: tuple[Leaf, ...]) -> bool:
  return (isinstance(batch, dict) and len(batch) == len(leaves)
          and all(isinstance(batch.get(l.key), np.ndarray)
                  and batch[l.key].shape == l.shape and batch[l.key].dtype.str == l.dtype
                  for l in leaves))


class SlotWriter:
  """The worker's last step: a batch (a dict of arrays) to a `SlotBatch` in its ring.

  The ring is made at the first batch, from its shapes, in whichever process runs
  the writer; pickling (into a worker) leaves it behind. A batch of other shapes, or
  one arriving while every slot is held, is returned unchanged.
  """

  def __init__(self, slots: int):
    if slots < 1:
      raise ValueError(f'slots must be >= 1, got {slots}')
    self._slots = int(slots)
    self._ring: shared_memory.SharedMemory | None = None
    self._leaves: tuple[Leaf, ...] = ()
    self._slot_bytes = 0

  def __getstate__(self) -> dict[str, Any]:
    return {'_slots': self._slots, '_ring': None, '_leaves': (), '_slot_bytes': 0}

  def _make_ring(self, batch: dict[str, np.ndarray]) -> None:
    self._leaves, self._slot_bytes = layout(batch)
    size = header_bytes(self._slots) + self._slots * self._slot_bytes
    self._ring = shared_memory.SharedMemory(create=True, size=size)

  def _free_slot(self) -> int | None:
    """The lowest free slot: the ring's untouched tail costs no memory."""
    flags = np.frombuffer(self._ring.buf, np.uint8, self._slots)
    free = np.flatnonzero(flags == _FREE)
    if not free.size:
      return None
    flags[free[0]] = _HELD
    return int(free[0])

  def __call__(self, batch: Any) -> Any:
    if self._ring is None:
      if not isinstance(batch, dict) or not all(isinstance(v, np.ndarray)
                                                for v in batch.values()):
        return batch
      self._make_ring(batch)
    if not _fits(batch, self._leaves):
      return batch
    slot = self._free_slot()
    if slot is None:
      return batch
    start = header_bytes(self._slots) + slot * self._slot_bytes
    for leaf in self._leaves:
      value = batch[leaf.key]
      view = np.frombuffer(self._ring.buf, value.dtype, value.size,
                           start + leaf.offset).reshape(leaf.shape)
      np.copyto(view, value, casting='no')
    return SlotBatch(self._ring.name, self._slots, self._slot_bytes, slot, self._leaves)


class _MappedRing(shared_memory.SharedMemory):
  """A ring as the main process maps it: batches handed out may outlive this object
  (their views keep the mapping), so closing waits for the last of them quietly."""

  def __del__(self) -> None:
    try:
      self.close()
    except BufferError:  # views still out: the mapping goes with the last of them
      pass


def _release(flags: np.ndarray, slot: int) -> None:
  flags[slot] = _FREE


class SlotReader:
  """The main process's first step: a `SlotBatch` to the batch, as views of its slot.

  Anything else (a batch a worker sent itself) passes unchanged.
  """

  def __init__(self):
    self._rings: dict[str, tuple[_MappedRing, np.ndarray]] = {}

  def __getstate__(self) -> dict[str, Any]:
    return {'_rings': {}}

  def _open(self, batch: SlotBatch) -> tuple[_MappedRing, np.ndarray]:
    if batch.ring not in self._rings:
      ring = _MappedRing(batch.ring)
      # Mapped here and in the worker: the name is needed no more, and unlinking it
      # now leaves nothing behind however either process ends.
      ring.unlink()
      self._rings[batch.ring] = (ring, np.frombuffer(ring.buf, np.uint8, batch.slots))
    return self._rings[batch.ring]

  def __call__(self, batch: Any) -> Any:
    if not isinstance(batch, SlotBatch):
      return batch
    ring, flags = self._open(batch)
    start = header_bytes(batch.slots) + batch.slot * batch.slot_bytes
    owner = np.frombuffer(ring.buf, np.uint8, batch.slot_bytes, start)
    weakref.finalize(owner, _release, flags, batch.slot)
    return {leaf.key: owner[leaf.offset:leaf.offset + _nbytes(leaf)]
                      .view(leaf.dtype).reshape(leaf.shape)
            for leaf in batch.leaves}


def _nbytes(leaf: Leaf) -> int:
  return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
