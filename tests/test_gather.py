"""The batch-level train path (alexnet_jax.data.gather) on memory-mapped uint8 arrays.

Every batch element is traced back to the one stored image whose crop at the
reported offsets it is; resumes, thread counts and process counts are compared
bitwise; the ring of reused buffers is checked under consumers that hold batches
and transfers that read them late.
"""

import os
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from alexnet_jax.data import batch_sampler
from alexnet_jax.data import device_feed
from alexnet_jax.data import gather
from alexnet_jax.data import preprocess
from alexnet_jax.sharding import placement
from alexnet_jax.storage import grain_state
from tests.helpers import files

N, SIZE, CROP, BATCH = 37, 12, 8, 6
EIGVALS, EIGVECS = np.array([0.2, 0.02, 0.004]), np.eye(3)[:, ::-1].copy()
FIELDS = ('image', 'crop', 'flip', 'lighting', 'label')


def setUpModule():
  global IMAGES, LABELS, _ROOT
  _ROOT = files.make_tempdir(prefix='test_gather_')
  path = os.path.join(_ROOT, 'train.npy')
  np.save(path, np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8))
  IMAGES = np.load(path, mmap_mode='r')  # read-only, as raw datasets are read
  LABELS = (np.arange(N) * 7 % 5).astype(np.int32)


def tearDownModule():
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(_ROOT, ignore_errors=True)


def _sampler(**overrides) -> batch_sampler.TrainSampler:
  settings = dict(num_records=N, global_batch_size=BATCH, image_size=SIZE, crop_size=CROP,
                  flip=True, lighting_std=0.1, eigvals=EIGVALS, eigvecs=EIGVECS, seed=11)
  settings.update(overrides)
  return batch_sampler.TrainSampler(**settings)


def _iterator(*, start=0, threads=2, ring=3, index=0, count=1, **overrides):
  return gather.GatherIterator(IMAGES, LABELS, _sampler(**overrides), process_index=index,
                               process_count=count, num_threads=threads, ring_size=ring,
                               start=start)


def _copy(batch):
  return {k: np.array(v) for k, v in batch.items()}


def _take(iterator, n):
  """n batches, each copied before the next `next` (which hands its buffers back)."""
  return [_copy(next(iterator)) for _ in range(n)]


def _identify(image: np.ndarray, top: int, left: int) -> int:
  """The one stored image whose crop at (top, left) is `image` (random pixels: unique)."""
  windows = np.asarray(IMAGES)[:, top:top + CROP, left:left + CROP]
  matches = np.flatnonzero((windows == image).all(axis=(1, 2, 3)))
  assert len(matches) == 1, f'{len(matches)} stored images match'
  return int(matches[0])


def _expected(k: int, index: int = 0, count: int = 1, **overrides) -> dict:
  """Batch k recomputed from scratch: a new plan and numpy slices of the stored array."""
  plan = _sampler(**overrides).local_batch(k, index, count)
  images = np.stack([np.asarray(IMAGES)[i, t:t + CROP, l:l + CROP]
                     for i, (t, l) in zip(plan.index, plan.crop)])
  return {'image': images, 'crop': plan.crop, 'flip': plan.flip, 'lighting': plan.lighting,
          'label': LABELS[plan.index]}


def _assert_batches_equal(test, got, want, msg=''):
  test.assertEqual(sorted(got), sorted(FIELDS))
  for key in FIELDS:
    np.testing.assert_array_equal(got[key], want[key], err_msg=f'{key} {msg}')
    test.assertEqual(np.asarray(got[key]).dtype, np.asarray(want[key]).dtype, key)


class ContentTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 5)
  def test_each_element_is_its_stored_crop_with_its_label(self, threads):
    with _iterator(threads=threads) as it:
      batches = _take(it, 9)  # 54 samples: past the first epoch's end
    seen = []
    for b in batches:
      self.assertEqual(b['image'].shape, (BATCH, CROP, CROP, 3))
      self.assertEqual(b['image'].dtype, np.uint8)
      for k in range(BATCH):
        index = _identify(b['image'][k], *b['crop'][k])  # unmirrored: the device flips
        self.assertEqual(b['label'][k], LABELS[index])
        seen.append(index)
    np.testing.assert_array_equal(np.sort(seen[:N]), np.arange(N))  # epoch 1: each once

  def test_thread_counts_give_identical_batches(self):
    with _iterator(threads=1) as one, _iterator(threads=4, ring=2) as four:
      for a, b in zip(_take(one, 8), _take(four, 8)):
        _assert_batches_equal(self, a, b)

  def test_matches_recomputation(self):
    with _iterator() as it:
      for k, b in enumerate(_take(it, 5)):
        _assert_batches_equal(self, b, _expected(k), f'batch {k}')


class ResumeTest(parameterized.TestCase):

  @parameterized.parameters(1, 4, 7)
  def test_start_k_is_the_tail_of_a_fresh_run(self, k):
    with _iterator() as fresh, _iterator(start=k, threads=3) as resumed:
      whole, tail = _take(fresh, k + 4), _take(resumed, 4)
    for i, (a, b) in enumerate(zip(whole[k:], tail)):
      _assert_batches_equal(self, b, a, f'batch {k + i}')

  def test_state_counts_global_batches_and_restores(self):
    with _iterator(count=2, index=1) as it:
      _take(it, 3)
      state = it.get_state()
      self.assertEqual(state, {'next_index': 3})
      self.assertEqual(grain_state.position_from_grain_state(state), 3)
      after = _take(it, 2)
      it.set_state(state)
      _assert_batches_equal(self, _copy(next(it)), after[0])
      with self.assertRaisesRegex(ValueError, 'not a state'):
        it.set_state({'next_index': -1})

  def test_two_processes_make_up_the_one_process_batch(self):
    with _iterator() as one, _iterator(index=0, count=2) as p0, \
        _iterator(index=1, count=2, threads=1) as p1:
      for k, (whole, a, b) in enumerate(zip(_take(one, 5), _take(p0, 5), _take(p1, 5))):
        joined = {key: np.concatenate([a[key], b[key]]) for key in FIELDS}
        _assert_batches_equal(self, joined, whole, f'batch {k}')


class _LateTransfer:
  """A transfer that reads the host batch only later, as an asynchronous copy to an
  accelerator may: `block_until_ready` (what jax.block_until_ready calls) waits for it."""

  def __init__(self, batch, delay: float):
    self.copied = None
    self._thread = threading.Thread(target=self._run, args=(batch, delay))
    self._thread.start()

  def _run(self, batch, delay):
    time.sleep(delay)
    self.copied = _copy(batch)

  def block_until_ready(self):
    self._thread.join()
    return self


class RingTest(absltest.TestCase):

  def test_held_batch_survives_while_threads_fill_ahead(self):
    # The consumer holds each batch while the threads fill every free slot ahead.
    with _iterator(ring=2, threads=2) as it:
      for k in range(8):
        held = next(it)
        time.sleep(0.02)  # ample time for the threads to fill (or overwrite) slots
        _assert_batches_equal(self, held, _expected(k), f'batch {k}')

  def test_device_feed_waits_for_late_transfers(self):
    # Each transfer reads its buffer 30 ms after `put` returns; the feed reads ahead.
    with _iterator(ring=2, threads=2) as it:
      feed = device_feed.DeviceFeed(it, lambda b: _LateTransfer(b, 0.03), depth=2)
      with feed:
        transfers = [next(feed)[1] for _ in range(6)]
    for k, transfer in enumerate(transfers):
      _assert_batches_equal(self, transfer.block_until_ready().copied, _expected(k),
                            f'batch {k}')

  def test_slow_consumer_of_device_batches_sees_every_batch_intact(self):
    with _iterator(ring=2, threads=2) as it:
      with device_feed.DeviceFeed(it, jax.device_put, depth=2) as feed:
        held = []
        for _ in range(6):
          held.append(next(feed))
          time.sleep(0.01)
    self.assertEqual([position for position, _ in held], list(range(1, 7)))
    for k, (_, batch) in enumerate(held):
      _assert_batches_equal(self, jax.device_get(batch), _expected(k), f'batch {k}')

  def test_batches_sharded_over_devices_as_training_places_them_stay_intact(self):
    # XLA:CPU may share an aligned host buffer instead of copying it: the feed must copy.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:BATCH]).reshape(BATCH, 1),
                             ('data', 'model'))
    with _iterator(ring=2, threads=2) as it:
      put = lambda local: placement.make_global_batch(local, mesh)
      with device_feed.DeviceFeed(it, put, depth=1) as feed:
        held = [next(feed)[1] for _ in range(5)]
    for k, batch in enumerate(held):
      _assert_batches_equal(self, jax.device_get(batch), _expected(k), f'batch {k}')

  def test_ring_buffers_are_page_aligned(self):
    with _iterator(ring=3) as it:
      self.assertEqual([next(it)['image'].ctypes.data % 4096 for _ in range(3)], [0, 0, 0])

  def test_ring_buffers_are_reused_not_allocated(self):
    with _iterator(ring=3) as it:
      buffers = {id(next(it)['image']) for _ in range(9)}
    self.assertLen(buffers, 3)

  def test_closing_the_feed_ends_the_gather_threads(self):
    # The trainer closes only the feed: the gather's copy threads must end with it.
    before = set(threading.enumerate())
    feed = device_feed.DeviceFeed(_iterator(ring=3, threads=3), jax.device_put, depth=2)
    for _ in range(3):
      next(feed)
    started = [t for t in threading.enumerate() if t not in before]
    self.assertNotEmpty([t for t in started if t.name.startswith('gather')])
    self.assertNotEmpty([t for t in started if t.name == 'device-feed'])
    feed.close()
    feed.close()
    self.assertEmpty([t.name for t in threading.enumerate() if t not in before])
    with self.assertRaises(StopIteration):
      next(feed)

  def test_closed_iterator_stops(self):
    it = _iterator()
    next(it)
    it.close()
    it.close()
    with self.assertRaises(StopIteration):
      next(it)
    with self.assertRaisesRegex(ValueError, 'ring_size'):
      _iterator(ring=1)


class DeviceFlipTest(absltest.TestCase):

  def test_normalized_batch_equals_host_flip_of_stored_crop_minus_mean(self):
    mean_image = np.random.default_rng(5).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    with _iterator() as it:
      batches = _take(it, 4)
    for b in batches:
      self.assertTrue(b['flip'].any() and not b['flip'].all())
      out = np.asarray(jax.jit(preprocess.normalize)(b['image'], b['crop'], b['flip'],
                                                     b['lighting'], mean_image))
      for k in range(BATCH):
        top, left = b['crop'][k]
        stored = np.asarray(IMAGES)[_identify(b['image'][k], top, left)]
        # Independent reference: the host flip of the stored crop, and of its mean window.
        view = (stored[top:top + CROP, left:left + CROP].astype(np.float64)
                - mean_image[top:top + CROP, left:left + CROP])
        if b['flip'][k]:
          view = np.flip(view, axis=1)
        np.testing.assert_allclose(out[k], view + b['lighting'][k], rtol=1e-6, atol=1e-4)


if __name__ == '__main__':
  absltest.main()
