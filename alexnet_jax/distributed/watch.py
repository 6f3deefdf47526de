"""The watch: a process of the run that dies or stops takes the others down with one line.

The roll call's connections (rollcall.py) stay open for the whole run. When a
process dies (kill -9, a crash, its host gone) the others see its connection
close (TCP keepalive covers a host that vanishes without a word) and stop
within seconds with one line naming it, long before JAX's heartbeat would
abort them. A process that leaves on purpose says so first ('bye' and its exit
status). JAX's coordinator runs in process 0, and a JAX client whose
coordinator is gone aborts at once: so process 0 ends last, after the others
have hung up (a bounded wait). What a user sees when process 0 itself dies is
in docs/cluster.md ("When process 0 itself dies").

  start(members, links, timeout_s)   # after the roll call
  exit_together(main)                # launch.py: a process that stops tells the others
  lost_peer()                        # is a failing write the loss of a peer?

Every stop here is one `error:` line and errors.EXIT_PEER_LOST.
"""

from __future__ import annotations

import atexit
import functools
import os
import selectors
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Optional

from absl import logging

from alexnet_jax.core import errors
from alexnet_jax.distributed.environment import Membership
from alexnet_jax.distributed.rollcall import Lines, POLL_S, send

# After a peer says it stopped with an error, the time this process gets to stop by itself
# (the same error reached at the same point) before it stops for the peer's sake.
_GRACE_S = 5.0
# How long an error that may come from a lost peer waits for the watch to confirm it.
_LOSS_CONFIRM_S = 5.0
# TCP keepalive on the roll call's connections: a host that vanishes without closing them
# (power, network) is noticed after about IDLE + INTERVAL x COUNT seconds.
_KEEPALIVE = (10, 5, 3)
# Process 0 holds JAX's coordinator: before it ends it waits at most this long for the others
# to hang up, so that their JAX clients do not abort before they stop with their own line.
_LAST_OUT_S = _GRACE_S + 5


class PeerLost(Exception):
  """Another process of the run died or stopped; the watch reports it (errors.EXIT_PEER_LOST)."""


def _keepalive(sock: socket.socket) -> None:
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  idle, interval, count = _KEEPALIVE
  for name, value in (('TCP_KEEPIDLE', idle), ('TCP_KEEPINTVL', interval),
                      ('TCP_KEEPCNT', count)):
    if hasattr(socket, name):
      sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Session:
  """This process's open connections to the others and the thread that watches them."""

  def __init__(self, members: Membership, links: dict[int, socket.socket], timeout_s: int):
    self.members, self.timeout_s = members, timeout_s
    self.links = links  # process id -> connection (process 0: every peer; a peer: {0: ...})
    self.lock = threading.Lock()
    self.leaving = False  # this process said bye or is stopping: hang-ups are expected
    self.departed: dict[int, int] = {}  # process id -> the status it said it leaves with
    self.hung_up: set[int] = set()  # processes whose connection has closed
    self.lost = threading.Event()
    self.lost_message = ''
    self._stop_at: Optional[float] = None  # when a peer's error stops this process too
    self._stop_line = ''
    for conn in links.values():
      _keepalive(conn)
      conn.setblocking(False)
    self.thread = threading.Thread(target=self._watch, name='alexnet_jax-peer-watch',
                                   daemon=True)
    self.thread.start()

  def _broadcast(self, message: Mapping[str, Any], but: Optional[int] = None) -> None:
    for pid, conn in list(self.links.items()):
      if pid == but or pid in self.departed:
        continue
      try:
        conn.setblocking(True)
        conn.settimeout(2.0)
        send(conn, message)
      except OSError:
        pass
      finally:
        try:
          conn.setblocking(False)
        except OSError:
          pass

  def _watch(self) -> None:
    """Runs until the process ends: it also records the hang-ups process 0 waits for."""
    selector = selectors.DefaultSelector()
    readers = {}
    for pid, conn in self.links.items():
      readers[conn] = (pid, Lines(conn))
      selector.register(conn, selectors.EVENT_READ, None)
    while True:
      events = selector.select(timeout=POLL_S) if readers else time.sleep(POLL_S) or []
      for key, _ in events:
        pid, lines = readers[key.fileobj]
        messages = lines.read()
        if messages is None:
          selector.unregister(key.fileobj)
          del readers[key.fileobj]
          with self.lock:
            self.hung_up.add(pid)
            expected = self.leaving or pid in self.departed
          if not expected:
            self._peer_lost(pid)
          continue
        for message in messages:
          if 'bye' in message:
            self._on_bye(pid, int(message.get('process_id', pid)), int(message['bye']), message)
          elif 'lost' in message:
            self._peer_lost(int(message['lost']))
      if self._stop_at is not None and time.monotonic() >= self._stop_at:
        self._stop_at = None
        with self.lock:
          leaving = self.leaving
        if not leaving:
          self._stop(self._stop_line)

  def _on_bye(self, sender: int, who: int, status: int, message: Mapping[str, Any]) -> None:
    """Process `who` leaves with `status` (`sender` passed it on, or is it)."""
    with self.lock:
      self.departed[who] = status
    if self.members.process_id == 0 and who == sender:
      self._broadcast(message, but=sender)  # the others hear it from process 0
    if status != 0 and self._stop_at is None and not self.lost.is_set():
      self._stop_at = time.monotonic() + _GRACE_S
      self._stop_line = (f'process {who} of {self.members.num_processes} stopped with exit '
                         f'status {status} (its output says why); stopped this process too')
      # What fails here now (a collective, a checkpoint write) fails because of it.
      self.lost_message = self._stop_line
      self.lost.set()

  def _peer_lost(self, pid: int) -> None:
    with self.lock:
      if self.leaving:  # this process is ending anyway; the others' hang-ups are expected
        return
    what = ' (the coordinator)' if pid == 0 else ''
    self.lost_message = (
        f'process {pid}{what} of {self.members.num_processes} was lost: it ended without a '
        'word (killed, crashed, or its host or network failed); stopped this process too. '
        'Every checkpoint folder left is complete; start all processes again to resume from '
        'the newest')
    self.lost.set()
    if self.members.process_id == 0:
      self._broadcast({'lost': pid}, but=pid)
    self._stop(self.lost_message)

  def _stop(self, line: str) -> None:
    # In a thread of its own: process 0 waits for the others' hang-ups, which this thread
    # records.
    threading.Thread(target=stop_process, args=(f'error: {line}', errors.EXIT_PEER_LOST),
                     daemon=True).start()

  def say_bye(self, status: int) -> None:
    with self.lock:
      if self.leaving:
        return
      self.leaving = True
    self._broadcast({'bye': int(status), 'process_id': self.members.process_id})

  def last_out(self) -> None:
    """Process 0 (JAX's coordinator): waits at most _LAST_OUT_S for the others to hang up,
    since their JAX clients abort the moment it is gone; no-op in the others."""
    if self.members.process_id != 0:
      return
    with self.lock:
      self.leaving = True
    deadline = time.monotonic() + _LAST_OUT_S
    while time.monotonic() < deadline and len(self.hung_up) < len(self.links):
      time.sleep(0.05)


_session: Optional[_Session] = None
_stopping = threading.Lock()


def stop_process(line: str, status: int) -> None:
  """Prints `line` and ends the process with `status` at once; only the first caller prints.

  os._exit: the others' collectives and JAX's shutdown barrier would wait for the
  peer that is gone. Orbax writes a checkpoint into a temporary folder renamed
  when complete, so what is left is a complete checkpoint or a temporary folder.
  """
  if not _stopping.acquire(blocking=False):
    while True:  # another thread is ending the process
      time.sleep(1)
  if _session is not None:
    _session.last_out()
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  try:
    os.write(2, (line + '\n').encode())  # one write: no other thread's output inside the line
  finally:
    os._exit(status)  # pylint: disable=protected-access


def start(members: Membership, links: dict[int, socket.socket], timeout_s: int) -> None:
  """Watches the roll call's open connections from now until this process ends."""
  global _session
  _session = _Session(members, links, timeout_s)
  atexit.register(_session.say_bye, 0)  # a normal exit; runs before JAX's shutdown


def lost_peer(wait_s: float = _LOSS_CONFIRM_S) -> Optional[str]:
  """What the watch says of a process that died or stopped with an error, waiting up to
  `wait_s` for such news; None if there is none (the error at hand has another cause)."""
  if _session is None:
    return None
  if _session.lost.wait(wait_s):
    return _session.lost_message
  return None


# ----------------------------------------------------------------------------- leaving


def exit_together(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps launch.py's main (outside cli.report_user_errors): in a multi-process run, a
  process that stops tells the others (who stop too, with one line naming it) and ends
  at once; an error caused by a lost peer becomes the watch's one line."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    try:
      return main(argv)
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if _session is None or status == 0:
        raise
      _leave(status)
    except BaseException:  # pylint: disable=broad-except
      if _session is None:
        raise
      message = lost_peer()
      if message is not None:
        stop_process(f'error: {message}', errors.EXIT_PEER_LOST)
      traceback.print_exc()  # a bug: its traceback, then the others are told
      _leave(1)
    raise AssertionError('unreachable')

  return wrapped


def _leave(status: int) -> None:
  """Tells the others that this process stops with `status`, and ends it (process 0 last)."""
  if _session is not None:
    _session.say_bye(status)
    _session.last_out()
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(status)  # pylint: disable=protected-access
