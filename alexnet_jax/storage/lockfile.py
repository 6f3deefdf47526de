"""A lock file that keeps a second process out of a folder, on local disks and on NFS.

  lock = lockfile.Lock(os.path.join(workdir, 'run.lock'))
  stale = lock.acquire()   # raises LockHeld naming the live holder; returns a dead one taken over
  ...
  lock.release()

The lock is a file created with O_CREAT | O_EXCL that records who holds it (host,
process id, start time). Its holder refreshes the file's modification time every
`heartbeat_seconds` from a background thread. What this relies on, and why not
fcntl/flock (docs/reliability.md, "One run per workdir", says the same for users):

- An exclusive create is atomic: of two processes creating the file at once, exactly
  one succeeds. Local filesystems guarantee it, and so does NFS from version 3 on
  (Linux sends an exclusive CREATE to the server). fcntl/flock locks on NFS go through
  a separate lock manager that clusters often run without, or that loses locks when
  a client or server restarts; a file that exists is seen by every host.
- A rename within a folder is atomic (used to take a stale lock away).
- The heartbeat's age is the lock file's modification time compared with that of a
  file this process has just created beside it: both times come from the same file
  server, so the hosts' clocks need not agree. Opening a file makes an NFS client
  fetch its current attributes, so the age is not read from a stale cache.

A lock is stale, and is taken over, when its holder is on this machine (same host
name, boot and process namespace) and its process is gone (or the process id now
belongs to a later process), or when its holder is elsewhere and the heartbeat is
older than `stale_seconds`. A run whose machine went down is therefore taken over
after STALE_SECONDS; one killed on this machine at once.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
from typing import Any, Optional

from absl import logging

HEARTBEAT_SECONDS = 15.0
# A lock from another host whose heartbeat is older than this is taken for a dead run's.
# Eight missed heartbeats: a busy file server or a long pause of the holder is not death.
STALE_SECONDS = 120.0
_FORMAT = 'alexnet_jax.lock/1'


def _read(path: str) -> str:
  """The text of a small file, '' where it cannot be read; bytes that are not UTF-8 are
  replaced (a damaged lock file is compared and parsed, never trusted)."""
  try:
    with open(path, 'rb') as f:
      return f.read().decode('utf-8', errors='replace').strip()
  except OSError:
    return ''


def _boot_id() -> str:
  return _read('/proc/sys/kernel/random/boot_id')


def _pid_namespace() -> str:
  try:
    return os.readlink('/proc/self/ns/pid')
  except OSError:
    return ''


def _process_start(pid: int) -> Optional[int]:
  """When process `pid` started (clock ticks since boot), or None where /proc does not say."""
  text = _read(f'/proc/{pid}/stat')
  try:
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return int(text[text.rindex(')') + 2:].split()[19])
  except (ValueError, IndexError):
    return None


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock, as its file records it."""
  host: str
  pid: int
  started: str  # local time the lock was taken, ISO 8601
  token: str  # unique to one acquisition
  boot_id: str = ''
  pid_namespace: str = ''
  process_start: Optional[int] = None

  @classmethod
  def of_this_process(cls) -> 'Holder':
    return cls(host=socket.gethostname(), pid=os.getpid(),
               started=time.strftime('%Y-%m-%dT%H:%M:%S%z'), token=uuid.uuid4().hex,
               boot_id=_boot_id(), pid_namespace=_pid_namespace(),
               process_start=_process_start(os.getpid()))

  @classmethod
  def parse(cls, text: str) -> Optional['Holder']:
    try:
      d = json.loads(text)
      if d.get('format') != _FORMAT:
        return None
      pid, process_start = int(d['pid']), d.get('process_start')
      if not 0 < pid < 2**31:  # os.kill takes a C int
        return None
      return cls(host=str(d['host']), pid=pid, started=str(d['started']),
                 token=str(d['token']), boot_id=str(d.get('boot_id', '')),
                 pid_namespace=str(d.get('pid_namespace', '')),
                 process_start=process_start if isinstance(process_start, int) else None)
    except (ValueError, KeyError, TypeError, AttributeError):
      return None

  def to_text(self) -> str:
    return json.dumps({'format': _FORMAT, **dataclasses.asdict(self)}, indent=1) + '\n'

  def on_this_machine(self) -> bool:
    """Same host name, boot and process-id namespace: its pid can be checked here."""
    return (self.host == socket.gethostname() and bool(self.boot_id)
            and self.boot_id == _boot_id() and self.pid_namespace == _pid_namespace())

  def alive_here(self) -> bool:
    """For a holder on this machine: whether its process still runs."""
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass  # exists, owned by another user
    start = _process_start(self.pid)
    return self.process_start is None or start is None or start == self.process_start

  def describe(self) -> str:
    return f'host {self.host}, pid {self.pid}, started {self.started}'


class LockUnusable(OSError):
  """The lock's path holds something that is not a file (a folder, a FIFO, a socket)."""


def _damaged(raw: bytes) -> bool:
  """Whether a lock file's bytes are neither a lock nor one being written: no Lock wrote them.

  A Lock writes ASCII JSON (json.dumps escapes other characters) in one write, so a
  reader may see '' or a cut JSON object, never other bytes or complete JSON that is
  not a lock.
  """
  try:
    text = raw.decode('ascii').strip()
  except UnicodeDecodeError:
    return True
  if not text or Holder.parse(text) is not None:
    return False
  try:
    json.loads(text)
  except ValueError:
    return not text.startswith('{')  # a cut object may be a write in progress
  return True


class LockHeld(Exception):
  """Another live process holds the lock."""

  def __init__(self, path: str, holder: Optional[Holder], heartbeat_age: Optional[float]):
    self.path, self.holder, self.heartbeat_age = path, holder, heartbeat_age
    who = holder.describe() if holder else 'a process that is still writing the lock file'
    super().__init__(f'{path} is held by {who}')


@dataclasses.dataclass(frozen=True)
class _Seen:
  """A lock file as found: its text, holder (None if unreadable) and heartbeat age."""
  text: str
  holder: Optional[Holder]
  age: float
  damaged: bool = False  # bytes no Lock writes: taken over at once


class Lock:
  """An exclusive lock file with a heartbeat; see the module docstring."""

  def __init__(self, path: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS,
               stale_seconds: float = STALE_SECONDS):
    self.path = os.path.abspath(path)
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.holder: Optional[Holder] = None  # set while this object holds the lock
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # ------------------------------------------------------------------ looking

  def _server_now(self) -> float:
    """The file server's current time: the modification time of a file created now beside it."""
    fd, probe = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix='.lock-clock-')
    try:
      return os.fstat(fd).st_mtime
    finally:
      os.close(fd)
      os.remove(probe)

  def inspect(self) -> Optional[_Seen]:
    """The lock file as it is now, or None when there is none.

    Raises LockUnusable when the path holds something other than a regular file
    (opening a FIFO would wait for a writer forever).
    """
    try:
      status = os.lstat(self.path)
    except FileNotFoundError:
      return None
    if not stat.S_ISREG(status.st_mode):
      raise LockUnusable(errno.EEXIST, 'not a regular file', self.path)
    try:
      with open(self.path, 'rb') as f:
        raw = f.read()
        mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
      return None
    text = raw.decode('utf-8', errors='replace')
    return _Seen(text, Holder.parse(text), max(0.0, self._server_now() - mtime), _damaged(raw))

  def is_stale(self, seen: _Seen) -> bool:
    if seen.damaged:
      return True
    if seen.holder is not None and seen.holder.on_this_machine():
      return not seen.holder.alive_here()
    # Another machine (or a lock file still being written): only the heartbeat tells.
    return seen.age > self.stale_seconds

  # ------------------------------------------------------------------ taking

  def acquire(self) -> Optional[Holder]:
    """Takes the lock; returns the holder of a stale lock it took over (None if there was none).

    Raises LockHeld when a live process holds it.
    """
    if self.holder is not None:
      raise RuntimeError(f'{self.path} is already held by this Lock')
    me = Holder.of_this_process()
    taken_over = None
    for _ in range(10):  # each round either takes the lock or sees it change hands
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        seen = self.inspect()
        if seen is None:
          continue  # released meanwhile
        if not self.is_stale(seen):
          raise LockHeld(self.path, seen.holder, seen.age) from None
        if self._remove_if_unchanged(seen.text):
          taken_over = seen.holder or Holder('unknown', -1, 'unknown', '')
        continue
      try:
        os.write(fd, me.to_text().encode())
        os.fsync(fd)
      finally:
        os.close(fd)
      self.holder = me
      self._start_heartbeat()
      return taken_over
    seen = self.inspect()
    raise LockHeld(self.path, seen.holder if seen else None, seen.age if seen else None)

  def _remove_if_unchanged(self, text: str) -> bool:
    """Removes the lock file if it still holds `text` (a stale lock); False if it changed.

    The rename moves exactly one file away atomically; if what was moved is not the
    stale lock (another process took over in between), it is put back.
    """
    aside = f'{self.path}.stale-{uuid.uuid4().hex}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    if _read(aside) == text.strip():
      os.remove(aside)
      return True
    try:
      os.link(aside, self.path)  # not ours to remove: put it back unless replaced again
    except OSError:
      pass
    os.remove(aside)
    return False

  # ------------------------------------------------------------------ holding

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name='lock-heartbeat', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      if not self.refresh():
        logging.error('The lock %s was taken by another process (%s); this run no longer '
                      'holds its workdir.', self.path, _read(self.path) or 'removed')
        return

  def refresh(self) -> bool:
    """One heartbeat: touches the lock file if it is still ours; returns whether it is."""
    if not self.still_held():
      return False
    try:
      os.utime(self.path)  # no times given: the file server's clock sets it
    except OSError as e:
      logging.warning('Cannot refresh the lock %s: %s', self.path, e)
    return True

  def still_held(self) -> bool:
    """Whether the lock file is still the one this object wrote."""
    holder = Holder.parse(_read(self.path))
    return self.holder is not None and holder is not None and holder.token == self.holder.token

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours (idempotent)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self.holder is not None and self.still_held():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    self.holder = None

  def __enter__(self) -> 'Lock':
    self.acquire()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.release()
