"""The conversion workers: how many fit, the process pool, and Ctrl-C in the workers.

Only the parent acts on Ctrl-C: workers ignore it (held back while they start),
so the parent stops handing out parts and reports one `interrupted:` line.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from typing import Any, Iterator

from absl import logging

from alexnet_jax.core import errors
from alexnet_jax.data import worker_guard
from alexnet_jax.prepare import progress_line

# Memory one conversion worker process may hold. Measured (peak resident set, image_size
# 256): 57 MiB after its imports, 67 MiB converting photos of ImageNet's sizes (libjpeg
# decodes a large JPEG at a reduced scale), 220 MiB on a 4000x3000 PNG, decoded whole.
# `worker_limit` keeps the workers within the memory available at this bound.
WORKER_BYTES = 200 * 2**20


def _cores() -> int:
  """CPU cores this process may run on (a job's share, where a scheduler limits it)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _available_memory() -> int | None:
  """Bytes of memory available to new processes (Linux' MemAvailable), None where unknown."""
  with contextlib.suppress(OSError, ValueError, IndexError), open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  return None


def worker_limit(cores: int, available_memory: int | None) -> int:
  """The most conversion workers that help: one per core, and no more than fit in memory."""
  by_memory = cores if available_memory is None else available_memory // WORKER_BYTES
  return max(1, min(cores, by_memory))


def checked_workers(workers: int) -> int:
  """--workers as used: a positive count, capped by `worker_limit` (said in a log line)."""
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise errors.InputError(f'--workers must be a positive integer, got {workers!r}')
  cores, memory = _cores(), _available_memory()
  limit = worker_limit(cores, memory)
  if workers > limit:
    room = '' if memory is None else (f', {memory / 2**30:.1f} GiB of memory available (each '
                                      f'worker holds about {WORKER_BYTES // 2**20} MiB)')
    logging.warning('--workers=%d capped at %d: this machine gives this process %d CPU '
                    'cores%s', workers, limit, cores, room)
  return min(workers, limit)


def _start_worker(parent: int) -> None:
  """The initializer of a worker: it ignores Ctrl-C and ends when `parent` (a pid) dies."""
  _ignore_ctrl_c()
  worker_guard.die_with_parent(parent=parent)  # a parent killed -9 leaves no converter running


def _ignore_ctrl_c() -> None:
  """In a worker: Ctrl-C reaches the whole process group, but only the parent acts on it
  (it stops handing out parts; a worker finishes its part, or the parent ends it).

  The worker started with Ctrl-C blocked (`_ctrl_c_held`): one that was still importing
  this package when Ctrl-C came keeps it pending, and ignoring it here discards it.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
  """Holds back Ctrl-C in this thread while worker processes start.

  A spawned worker imports this package before its initializer runs; the blocked
  signal mask survives fork and exec, so a Ctrl-C during that import waits for
  `_ignore_ctrl_c` instead of printing a traceback. Here it is delivered when
  the block ends.
  """
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def new_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` spawned processes that ignore Ctrl-C and end with this process."""
  # spawn, not fork: the caller may hold JAX or threads, which do not survive fork.
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'), initializer=_start_worker,
      initargs=(os.getpid(),))


def execute(tasks: list[tuple[Any, ...]], workers: int,
            bar: progress_line.ProgressLine) -> Iterator[Any]:
  """Runs (weight, fn, *args) tasks, in worker processes if workers > 1; yields results.

  Results come in completion order; each task's weight advances the progress line.
  """
  if workers <= 1 or len(tasks) <= 1:
    for weight, fn, *args in tasks:
      result = fn(*args)
      bar.update(weight, result['images'])
      yield result
    return
  pool = new_pool(min(workers, len(tasks)))
  try:
    with _ctrl_c_held():  # the workers start during the submits
      futures = {pool.submit(fn, *args): weight for weight, fn, *args in tasks}
    for future in concurrent.futures.as_completed(futures):
      result = future.result()
      bar.update(futures[future], result['images'])
      yield result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
