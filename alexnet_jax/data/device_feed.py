"""Device prefetch: the next global batches go to the devices while the current step runs.

`DeviceFeed` wraps the host iterator of local batches and the function that makes
global device arrays of one (`sharding.make_global_batch`). With depth > 0 a
thread reads and transfers ahead; up to `depth` batches wait on the devices, plus
the one the thread is transferring. `jax.make_array_from_process_local_data` only
copies to this process's own devices (no collective), so the thread needs no
agreement with other processes and works for any mesh.

Each batch carries its position: how many global batches the run has read once
this one is consumed. The train stream is the same global sequence for every
process count (input_pipeline.ProcessBlocks), so the position is one number for
all processes. `position` is that of the last batch handed out, never of the ones
the thread read ahead: it is what a checkpoint saved after this step must store,
so that a resume neither skips nor repeats the prefetched batches.

A reader whose batches live in reused host buffers (`reuses_buffers`, the raw-pixel
gather's ring) gets each buffer back at its next `next`. The feed therefore waits
until the transfer of a batch is done (`jax.block_until_ready`) before it reads the
next one: an asynchronous copy to an accelerator may still be reading the buffer
when `put` returns. On CPU devices, which may share the host buffer instead of
copying it, the feed copies the batch before `put`.

An error in the thread (a damaged shard, a failed transfer) is raised in the
caller's thread by the `next` that would have returned that batch, with the
thread's traceback; a grain worker process that died (killed) is raised as one
user error. `close` stops the thread, then closes the reader (its own threads
or worker processes end with it); the trainer enters the feed into its
ExitStack, so it stops on every way out (the end, Ctrl-C, a NaN, preemption).
"""

from __future__ import annotations

import queue
import signal
import threading
from typing import Any, Callable, Generic, Iterator, TypeVar

from absl import logging
import jax
import numpy as np

from alexnet_jax.core import errors

Local = TypeVar('Local')
Fed = TypeVar('Fed')

_POLL_S = 0.1  # how often a thread waiting on a full queue looks for close()
_JOIN_S = 60.0  # close() waits this long for a thread stuck inside the reader


# How grain 0.2 words the death of one of its worker processes (process_prefetch.py).
_WORKER_DIED = 'Worker process was terminated unexpectedly with exit code '


def _as_user_error(error: BaseException) -> BaseException:
  """A worker process killed under the reader (kill -9, the OOM killer) as one line.

  Nothing is wrong with the program or the data; the caller's ExitStack awaits the
  save in flight, so the checkpoints are complete and a rerun resumes. Any other
  error is returned unchanged.
  """
  text = str(error)
  if not (isinstance(error, RuntimeError) and text.startswith(_WORKER_DIED)):
    return error
  code = text[len(_WORKER_DIED):].split('.', 1)[0]
  how = ''
  if code.lstrip('-').isdigit() and int(code) < 0:
    how = f', killed by {signal.Signals(-int(code)).name}'
    if -int(code) == signal.SIGKILL:
      how += ' (kill -9, or the out-of-memory killer)'
  return errors.UserError(
      f'a data worker process (data.worker_count) ended unexpectedly (exit code {code}{how}); '
      'the run stopped with its checkpoints complete: rerun the same command to resume from '
      'the newest one')


class _PutAndWait(Generic[Local, Fed]):
  """`put` for batches in reused host buffers: returns once the device arrays no longer
  read them.

  On an accelerator that is when the copy is done (`jax.block_until_ready`). XLA:CPU
  instead may make a device array share an aligned numpy buffer (zero-copy) for as long
  as the array lives, so on CPU devices the batch is copied on the host first.
  """

  def __init__(self, put: Callable[[Local], Fed]):
    self._put = put
    self._copy: bool | None = None  # known after the first transfer: whether devices are CPUs

  def __call__(self, local: Local) -> Fed:
    if self._copy:
      local = jax.tree.map(np.array, local)  # np.array copies
    fed = jax.block_until_ready(self._put(local))
    if self._copy is None:
      self._copy = any(device.platform == 'cpu' for leaf in jax.tree.leaves(fed)
                       if isinstance(leaf, jax.Array) for device in leaf.devices())
      if self._copy:
        return self(local)
    return fed


class _End:
  """The reader ran out: the thread's last item."""


class _Failure:
  """The reader or the transfer raised: the thread's last item."""

  def __init__(self, error: BaseException):
    self.error = error


class DeviceFeed(Generic[Local, Fed]):
  """Iterator of (position, device batch), transferred up to `depth` batches ahead.

  Usage:
    with DeviceFeed(iterator, put, start=restored_position, depth=2) as feed:
      for step in ...:
        position, batch = next(feed)
        ...
        save(..., data_position=feed.position)

  depth 0 reads and transfers in the caller's thread at each `next` (no thread).
  The thread starts at the first `next`, so a feed that is never read reads nothing.
  """

  def __init__(self, batches: Iterator[Local], put: Callable[[Local], Fed], *,
               start: int = 0, depth: int = 2, name: str = 'device-feed'):
    if depth < 0:
      raise ValueError(f'depth must be >= 0, got {depth}')
    self._batches, self._depth, self._name = batches, int(depth), name
    self._put = _PutAndWait(put) if getattr(batches, 'reuses_buffers', False) else put
    self._position = int(start)  # of the last batch handed out
    self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(self._depth, 1))
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._done = False  # the thread's last item (end or failure) was handed out

  @property
  def position(self) -> int:
    """Batches read once the last batch handed out is consumed (the start if none)."""
    return self._position

  @property
  def depth(self) -> int:
    return self._depth

  def __iter__(self) -> 'DeviceFeed[Local, Fed]':
    return self

  def __next__(self) -> tuple[int, Fed]:
    if self._done or self._stop.is_set():
      raise StopIteration
    if self._depth == 0:
      try:
        batch = self._put(next(self._batches))
      except BaseException as e:
        self._done = True  # as with a thread: nothing after an error or the end
        raise _as_user_error(e) from e
      self._position += 1
      return self._position, batch
    if self._thread is None:
      self._thread = threading.Thread(target=self._fill, args=(self._position,),
                                      name=self._name, daemon=True)
      self._thread.start()
    item = self._queue.get()
    if isinstance(item, _End):
      self._done = True
      raise StopIteration
    if isinstance(item, _Failure):
      self._done = True
      raise item.error  # the thread's traceback, continued here
    self._position, batch = item
    return item

  def _fill(self, position: int) -> None:
    """The thread: read, transfer, queue; the last item says why it ended."""
    try:
      while not self._stop.is_set():
        try:
          local = next(self._batches)
        except StopIteration:
          self._offer(_End())
          return
        position += 1
        self._offer((position, self._put(local)))
    except BaseException as e:  # pylint: disable=broad-exception-caught
      self._offer(_Failure(_as_user_error(e)))  # raised in the caller's thread by its next `next`

  def _offer(self, item: Any) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return
      except queue.Full:
        continue

  def close(self) -> None:
    """Stops the thread, drops the batches it read ahead, then closes the reader.

    Idempotent. The reader's `close` (grain's iterators, the gather) ends its own
    threads or worker processes, so none outlives the feed.
    """
    self._stop.set()
    thread, self._thread = self._thread, None
    if thread is not None:
      self._stop_thread(thread)
    close_reader = getattr(self._batches, 'close', None)
    if close_reader is not None:
      close_reader()

  def _stop_thread(self, thread: threading.Thread) -> None:
    while True:  # unblock a thread waiting on the full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    thread.join(_JOIN_S)
    if thread.is_alive():  # stuck inside the reader; a daemon thread ends with the process
      logging.warning('The %s thread did not stop within %.0f s; leaving it.', self._name,
                      _JOIN_S)

  def __enter__(self) -> 'DeviceFeed[Local, Fed]':
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
