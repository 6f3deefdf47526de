"""Keeps worker processes from outliving their parent: a watch thread in each worker.

grain's worker processes (data.worker_count) and prepare's converters are
multiprocessing children. A parent that exits normally stops them; one killed
(kill -9, the OOM killer) cannot, and each orphan would keep decoding at its
buffer's pace and hold hundreds of MB. `die_with_parent`, run first in every
worker, starts a daemon thread that polls the parent's pid and kills its own
process once the parent is gone (the worker is re-parented, so os.getppid()
changes). A thread rather than prctl(PR_SET_PDEATHSIG): that signal follows the
*thread* that started the child, and grain starts its workers from a thread pool
whose threads may end while the parent lives; polling works on macOS too.

`quiet_resource_tracker` keeps multiprocessing's resource tracker from printing a
warning below the run's last line when a killed worker leaves shared memory behind
(the tracker removes it all the same).
"""

from __future__ import annotations

import os
import signal
import threading
import time

# Seconds between looks at the parent: an orphan lives at most this long.
POLL_SECONDS = 0.5


def _watch(parent: int, interval: float) -> None:
  while True:
    time.sleep(interval)
    if os.getppid() != parent:
      # SIGKILL: no cleanup to run (the parent owned every output), and no handler of
      # grain's or the caller's can hold the process back.
      os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(*_: object, parent: int | None = None,
                    interval: float = POLL_SECONDS) -> None:
  """Ends this process within `interval` seconds of its parent's death, whatever killed it.

  parent: the pid of the process that started this one, as that process saw itself
  (os.getpid() there); give it, since a worker may run this only after seconds of
  imports, when a parent killed meanwhile is already replaced by init. Without it,
  the parent of the moment. Takes and ignores positional arguments, so that
  `functools.partial(die_with_parent, parent=os.getpid())` serves as grain's
  worker_init_fn (called with the worker's index and count).
  """
  parent = os.getppid() if parent is None else parent
  if os.getppid() != parent:
    os.kill(os.getpid(), signal.SIGKILL)
  threading.Thread(target=_watch, args=(parent, interval), name='die_with_parent',
                   daemon=True).start()


# The warning multiprocessing's resource tracker prints at exit for each kind of resource
# a killed worker left ('resource_tracker: There appear to be N leaked shared_memory
# objects to clean up at shutdown'), as a PYTHONWARNINGS filter.
_TRACKER_FILTER = 'ignore:resource_tracker:UserWarning'


def quiet_resource_tracker() -> None:
  """Lets the resource tracker, started with the first worker, clean up without a warning.

  The tracker is a separate process that inherits the environment at its start, so
  call this before the first worker process starts.
  """
  current = os.environ.get('PYTHONWARNINGS', '')
  if _TRACKER_FILTER not in current.split(','):
    os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [current, _TRACKER_FILTER]))
