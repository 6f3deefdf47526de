"""feed.DeviceFeed: batches transferred ahead in a thread, positions of the batches consumed;
the config field that sets its depth, data.device_prefetch."""

import threading
import traceback

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.data import device_feed
from configs import digits
from configs import imagenet


class CountingSource:
  """Batches {'x': [i, i]} for i = 0, 1, ...; counts what was read and by which thread."""

  def __init__(self, fail_at: int | None = None, length: int | None = None):
    self.read = 0
    self.threads = set()
    self.fail_at, self.length = fail_at, length

  def __iter__(self):
    return self

  def __next__(self):
    self.threads.add(threading.current_thread().name)
    if self.read == self.length:
      raise StopIteration
    if self.read == self.fail_at:
      raise_damaged_shard(self.read)
    self.read += 1
    return {'x': np.full((2,), self.read - 1, np.int32)}


def raise_damaged_shard(index: int) -> None:
  raise errors.InputError(f'shard of batch {index} is damaged')


def put(local):
  return {k: jax.device_put(v) for k, v in local.items()}


def live_feed_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == 'device-feed']


class DeviceFeedTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2)
  def test_batches_and_positions_of_the_consumed_batches(self, depth):
    source = CountingSource()
    with device_feed.DeviceFeed(source, put, start=5, depth=depth) as feed:
      self.assertEqual(feed.position, 5)  # nothing consumed yet
      for i in range(4):
        position, batch = next(feed)
        # The source restarts at its own 0; the feed numbers them from the start position.
        self.assertEqual(position, 5 + i + 1)
        self.assertEqual(feed.position, 5 + i + 1)
        np.testing.assert_array_equal(np.asarray(batch['x']), [i, i])
        self.assertIsInstance(batch['x'], jax.Array)
      if depth:
        # Read ahead (up to depth waiting, one in the thread's hands), yet the position
        # is that of the four consumed: what a checkpoint after this step must store.
        while source.read < 4 + depth:  # the thread fills the queue
          threading.Event().wait(0.01)
        self.assertBetween(source.read, 4 + depth, 4 + depth + 1)
        self.assertEqual(source.threads, {'device-feed'})
      else:
        self.assertEqual(source.read, 4)
        self.assertEqual(source.threads, {threading.current_thread().name})
      self.assertEqual(feed.position, 9)
    self.assertEmpty(live_feed_threads())

  def test_positions_equal_with_and_without_prefetch(self):
    """The same (position, batch) sequence whether the thread transfers ahead or not."""
    def consume(depth):
      with device_feed.DeviceFeed(CountingSource(), put, start=3, depth=depth) as feed:
        seen = [(p, np.asarray(b['x']).tolist()) for p, b in (next(feed) for _ in range(6))]
        return seen, feed.position
    without, with_prefetch = consume(0), consume(2)
    self.assertEqual(with_prefetch, without)
    self.assertEqual(without[1], 9)

  @parameterized.parameters(0, 2)
  def test_reader_error_surfaces_in_the_caller_with_its_traceback(self, depth):
    feed = device_feed.DeviceFeed(CountingSource(fail_at=2), put, depth=depth)
    with feed:
      next(feed)
      next(feed)
      try:
        next(feed)
        self.fail('the reader error was not raised')
      except errors.InputError as e:  # not assertRaises, which clears the traceback
        self.assertEqual(str(e), 'shard of batch 2 is damaged')
        frames = [f.name for f in traceback.extract_tb(e.__traceback__)]
      self.assertEqual(feed.position, 2)  # the failed batch was never consumed
      self.assertIn('raise_damaged_shard', frames)  # where it happened, in the thread
      with self.assertRaises(StopIteration):
        next(feed)
    self.assertEmpty(live_feed_threads())

  def test_end_of_the_source_ends_the_feed(self):
    with device_feed.DeviceFeed(CountingSource(length=3), put, depth=2) as feed:
      self.assertEqual([p for p, _ in feed], [1, 2, 3])
      self.assertEqual(feed.position, 3)

  def test_close_stops_a_thread_waiting_on_a_full_queue(self):
    source = CountingSource()
    feed = device_feed.DeviceFeed(source, put, depth=1)
    next(feed)
    while source.read < 3:  # one consumed, one queued, one in the thread's hands
      threading.Event().wait(0.01)
    self.assertLen(live_feed_threads(), 1)
    feed.close()
    self.assertEmpty(live_feed_threads())
    self.assertLessEqual(source.read, 3)  # it stopped reading
    with self.assertRaises(StopIteration):
      next(feed)

  def test_an_unread_feed_reads_nothing(self):
    source = CountingSource()
    with device_feed.DeviceFeed(source, put, depth=2):
      pass
    self.assertEqual(source.read, 0)

  def test_negative_depth_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'depth must be >= 0'):
      device_feed.DeviceFeed(CountingSource(), put, depth=-1)


class DevicePrefetchConfigTest(absltest.TestCase):

  def test_negative_depth_names_the_field(self):
    config = resolution.resolve_auto(digits.get_config(), platform='cpu', cpu_count=2)
    config.data.device_prefetch = 0  # off is allowed
    resolution.validate(config)
    config.data.device_prefetch = -1
    with self.assertRaisesRegex(errors.InputError, r'^config\.data\.device_prefetch must be an '
                                r'integer >= 0, got -1$'):
      resolution.validate(config)

  def test_a_config_written_before_the_field_gets_the_default(self):
    values = imagenet.get_config().to_dict()
    del values['data']['device_prefetch']  # a run's config.py from before the field
    config = resolution.resolve_auto(ml_collections.ConfigDict(values), platform='cpu',
                                     cpu_count=2)
    self.assertEqual(config.data.device_prefetch, 2)
    self.assertEqual(imagenet.get_config().data.device_prefetch, 2)


if __name__ == '__main__':
  absltest.main()
