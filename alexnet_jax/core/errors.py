"""What counts as a user's mistake, and keeping the report of one to a single line.

A user error (a bad path, config value or image; a damaged checkpoint; a full
disk) is printed by `cli.report_user_errors` as one `error:` line with exit
status 2. Anything else is a bug in the program and keeps its traceback: a
ValueError or KeyError raised deep in the code is not taken for the user's
mistake. So the places that check what the user gave raise a `UserError`
(`InputError` for a bad value or file content, `MissingInputError` for a path
that is not there); both also derive from the built-in error a library caller
would expect. A Ctrl-C ends a command with one line and status 130
(`Interrupted`, `EXIT_INTERRUPTED`).

Orbax reads a checkpoint's arrays concurrently. When one read of a damaged
checkpoint fails, it stops awaiting the others, and each of those that fails
later is reported on its own with a traceback (asyncio's 'exception was never
retrieved', sys.unraisablehook, a 'coroutine was never awaited' warning at
exit). `ignore_aborted_reads` drops exactly those reports while a restore may
produce them; `silence_after_user_error` drops every late report once the one
error line has been printed, so that line stays the last one.
"""

from __future__ import annotations

import logging as pylogging
import sys
import traceback
import warnings
from typing import Any, Optional


class UserError(Exception):
  """An error the user can act on (a damaged checkpoint, a full disk): one line, no traceback."""


class InputError(UserError, ValueError):
  """A value the user gave (a config field, a flag, an image, a file's content) is unusable."""


class MissingInputError(UserError, FileNotFoundError):
  """A path the user gave does not exist or holds nothing this program can use."""


class DamagedSourceError(InputError):
  """A source archive cut short or not what its name says: nothing made from it is kept."""


class Interrupted(Exception):
  """The user pressed Ctrl-C; the message says what was kept (one line, exit status 130)."""


# Only errors raised as the user's mistake get one line; anything else is a bug and keeps
# its traceback (set ALEXNET_JAX_TRACEBACK=1 to see the traceback of a user error too).
USER_ERRORS = (UserError,)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C
# A multi-process run stopped because another of its processes died or stopped
# (distributed/watch.py).
EXIT_PEER_LOST = 3

# Names of the layers a checkpoint read goes through (orbax -> tensorstore -> zarr in OCDBT).
_STORAGE_WORDS = ('orbax', 'tensorstore', 'ocdbt', 'zarr')


def caused_by_ctrl_c(error: BaseException) -> bool:
  """Whether `error` is a KeyboardInterrupt or was raised because of one.

  Some libraries wrap whatever stops their work in an error of their own: orbax
  turns a KeyboardInterrupt that lands while it reads an array shard into a plain
  Exception chained to it. Such an error says nothing of the data being read.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def first_line(error: BaseException, limit: int = 300) -> str:
  """'ErrorType: first line of its message', shortened to `limit` characters."""
  text = str(error).strip().splitlines()
  text = text[0] if text else ''
  return f'{type(error).__name__}: {text[:limit]}'


def is_aborted_read(error: Optional[BaseException], where: str = '') -> bool:
  """Whether `error` comes from an array read of a checkpoint restore that was abandoned.

  `where` is the report's own text (asyncio's repr of the future, the code of a
  coroutine). A read error may carry no traceback (tensorstore sets it on the
  future from C++), so the words of the storage layers are matched too.
  """
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  frames = traceback.extract_tb(error.__traceback__) if error is not None else []
  text = ' '.join([where, str(error)] + [frame.filename for frame in frames]).lower()
  return any(word in text for word in _STORAGE_WORDS)


class AbortedReadFilter(pylogging.Filter):
  """Drops asyncio's report of a checkpoint read whose failure nobody awaited."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    message = str(record.msg)
    # asyncio words it '<Task|Future|_GatheringFuture|...> exception was never retrieved'.
    if not message.split('\n', 1)[0].endswith('exception was never retrieved'):
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not is_aborted_read(error, message)


def ignore_aborted_reads() -> None:
  """Keeps the reads of a failed restore that were still in flight from printing tracebacks.

  Only errors raised in orbax's reads are dropped; the restore reports the
  failure itself. Idempotent.
  """
  asyncio_logger = pylogging.getLogger('asyncio')
  if not any(isinstance(f, AbortedReadFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(AbortedReadFilter())
  # Reads never started are garbage-collected as coroutines at exit, each warning that it
  # 'was never awaited'. This program runs no coroutines of its own; orbax's are the only ones.
  warnings.filterwarnings('ignore', message="coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_aborted_reads', False):
    return

  def hook(unraisable: Any) -> None:
    code = getattr(unraisable.object, 'cr_code', None)
    where = code.co_filename if code is not None else ''
    if is_aborted_read(unraisable.exc_value, where):
      return
    previous(unraisable)

  hook.ignores_aborted_reads = True
  sys.unraisablehook = hook


def silence_after_user_error() -> None:
  """After the one error line: no late reports (abandoned reads, warnings) printed below it."""
  sys.unraisablehook = lambda unraisable: None
  warnings.simplefilter('ignore')
  pylogging.getLogger('asyncio').disabled = True
