"""Batches from worker processes through each worker's ring of reused shared memory.

In-process: a SlotWriter's ring read by a SlotReader, the slot's flag while views or a
jax array hold it, the ring's name gone once mapped. With worker processes
(input_pipeline.prefetch_in_workers): the batches are the dataset's exactly, every
batch of a prompt consumer comes through the ring, and batches a consumer keeps are
never overwritten (the ring runs out and the rest come the old way).
"""

import gc
from multiprocessing import shared_memory

from absl.testing import absltest
import grain
import jax
import numpy as np

from alexnet_jax.data import batch_handoff
from alexnet_jax.data import input_pipeline


def _batch(i: int) -> dict[str, np.ndarray]:
  """Batch i, every value a function of i alone (checked against `_expected`)."""
  return {'image': np.full((3, 5, 5, 3), i % 251, np.uint8),
          'crop': np.full((3, 2), i, np.int32),
          'flip': np.array([i % 2 == 0, True, False]),
          'lighting': np.full((3, 3), i / 4, np.float32),
          'label': np.full((3,), i, np.int32)}


def _expected(i: int, batch: dict[str, np.ndarray]) -> None:
  np.testing.assert_array_equal(batch['image'], np.full((3, 5, 5, 3), i % 251, np.uint8))
  np.testing.assert_array_equal(batch['crop'], np.full((3, 2), i, np.int32))
  np.testing.assert_array_equal(batch['flip'], [i % 2 == 0, True, False])
  np.testing.assert_array_equal(batch['lighting'], np.full((3, 3), i / 4, np.float32))
  np.testing.assert_array_equal(batch['label'], np.full((3,), i, np.int32))
  dtypes = {'image': np.uint8, 'crop': np.int32, 'flip': np.bool_, 'lighting': np.float32,
            'label': np.int32}
  assert {k: v.dtype for k, v in batch.items()} == dtypes, batch


def _flag(writer: batch_handoff.SlotWriter, slot: int) -> int:
  return int(np.frombuffer(writer._ring.buf, np.uint8, slot + 1)[slot])


def _in_ring(batch: dict[str, np.ndarray]) -> bool:
  """Whether the batch arrived as views of a ring slot (not in a segment of its own)."""
  base = batch['image'].base
  return type(batch['image']) is np.ndarray and isinstance(base, np.ndarray) and (
      isinstance(base.base, memoryview))


class InProcessTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.writer, self.reader = batch_handoff.SlotWriter(2), batch_handoff.SlotReader()

  def test_views_equal_the_batch_and_free_the_slot_when_all_are_gone(self):
    sent = self.writer(_batch(7))
    self.assertIsInstance(sent, batch_handoff.SlotBatch)
    batch = self.reader(sent)
    _expected(7, batch)
    self.assertEqual(_flag(self.writer, sent.slot), 1)
    label = batch['label']
    del batch
    gc.collect()
    self.assertEqual(_flag(self.writer, sent.slot), 1)  # one view left holds it
    del label
    gc.collect()
    self.assertEqual(_flag(self.writer, sent.slot), 0)

  def test_a_full_ring_hands_the_batch_itself(self):
    held = [self.reader(self.writer(_batch(i))) for i in range(2)]
    third = self.writer(_batch(2))
    self.assertIsInstance(third, dict)
    _expected(2, self.reader(third))
    for i, batch in enumerate(held):
      _expected(i, batch)
    del held
    gc.collect()
    self.assertIsInstance(self.writer(_batch(3)), batch_handoff.SlotBatch)

  def test_a_jax_array_made_from_a_view_holds_the_slot(self):
    sent = self.writer(_batch(5))
    batch = self.reader(sent)
    on_device = jax.device_put(batch['image'])
    del batch
    gc.collect()
    self.assertEqual(_flag(self.writer, sent.slot), 1)
    np.testing.assert_array_equal(on_device, np.full((3, 5, 5, 3), 5, np.uint8))
    del on_device
    gc.collect()
    self.assertEqual(_flag(self.writer, sent.slot), 0)

  def test_a_batch_of_other_shapes_is_handed_itself(self):
    self.reader(self.writer(_batch(0)))
    other = {'image': np.zeros((4, 5, 5, 3), np.uint8)}
    self.assertIs(self.writer(other), other)

  def test_the_ring_has_no_name_once_mapped(self):
    sent = self.writer(_batch(1))
    self.reader(sent)
    with self.assertRaises(FileNotFoundError):
      shared_memory.SharedMemory(sent.ring)


def _iterate(count: int, *, workers: int, buffer: int = 1) -> grain.DatasetIterator:
  dataset = grain.MapDataset.range(count).map(_batch).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  return iter(input_pipeline.prefetch_in_workers(dataset, workers=workers, buffer=buffer))


class WorkerProcessTest(absltest.TestCase):

  def test_a_prompt_consumer_gets_every_batch_through_the_ring(self):
    slots = input_pipeline.handoff_slots(1)
    iterator = _iterate(4 * slots, workers=2)
    for i in range(4 * slots):  # each worker's ring goes round twice
      batch = next(iterator)
      _expected(i, batch)
      self.assertTrue(_in_ring(batch), f'batch {i} came in a segment of its own')
      del batch
    iterator.close()

  def test_batches_kept_are_never_overwritten(self):
    count = 3 * input_pipeline.handoff_slots(1)  # more than one worker's ring holds
    iterator = _iterate(count, workers=1)
    kept = [next(iterator) for _ in range(count)]
    iterator.close()
    for i, batch in enumerate(kept):
      _expected(i, batch)
    self.assertTrue(_in_ring(kept[0]))
    self.assertFalse(_in_ring(kept[-1]))  # the ring ran out: the rest came the old way


if __name__ == '__main__':
  absltest.main()
