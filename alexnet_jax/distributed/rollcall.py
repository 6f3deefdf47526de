"""The roll call: every process of a run reports to process 0 before JAX starts.

`jax.distributed.initialize` alone aborts with a C++ stack after its timeout
for a peer that never comes, says nothing of a duplicate process id, and
crashes on a coordinator port that is taken. So the processes meet first over
plain TCP on the coordinator's port (docs/cluster.md, "Coordinator and peers"):
process 0 binds the port (taken: one line at once), the others report their id
and process count, and process 0 answers 'go' or the one line that stops all.
The connections stay open afterwards: the watch (watch.py) reads them.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import time
from typing import Any, Mapping, Optional

from absl import logging

from alexnet_jax.core import errors
from alexnet_jax.distributed.environment import Membership, parse_address

_MAGIC = 'alexnet_jax roll call 1'
POLL_S = 0.25
# Process 0 listens this long after the last expected process reported in, so that a second
# claim of an id by a process already waiting (each retries every POLL_S) is seen.
_SETTLE_S = 4 * POLL_S


def send(sock: socket.socket, message: Mapping[str, Any]) -> None:
  sock.sendall((json.dumps(message) + '\n').encode())


class Lines:
  """Newline-delimited JSON messages read from one socket."""

  def __init__(self, sock: socket.socket):
    self.sock, self._buffer = sock, b''

  def read(self) -> Optional[list[dict[str, Any]]]:
    """The messages now available; None once the other side has closed the connection."""
    try:
      chunk = self.sock.recv(65536)
    except (BlockingIOError, socket.timeout):
      return []
    except OSError:
      return None
    if not chunk:
      return None
    self._buffer += chunk
    *lines, self._buffer = self._buffer.split(b'\n')
    out = []
    for line in lines:
      try:
        out.append(json.loads(line))
      except ValueError:
        out.append({})
    return out


def _listen(port: int, members: Membership) -> socket.socket:
  """Process 0's listening socket on the coordinator port; one line when the port is taken.

  No SO_REUSEPORT: JAX's coordinator (gRPC) sets it, so without it here a port
  held by another run's coordinator, or by any other program, refuses the bind.
  """
  last: Optional[OSError] = None
  for family, host in ((socket.AF_INET6, '::'), (socket.AF_INET, '0.0.0.0')):
    try:
      sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
      last = e
      continue
    try:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # old TIME_WAIT is fine
      if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
      sock.bind((host, port))
      sock.listen(max(16, members.num_processes))
      return sock
    except OSError as e:
      sock.close()
      last = e
      if e.errno == errno.EADDRINUSE:
        break
  if last is not None and last.errno == errno.EADDRINUSE:
    override = ('--coordinator_port=PORT' if members.source != 'flags'
                else '--coordinator_address=HOST:PORT')
    raise errors.InputError(
        f'the coordinator port {port} on this host is already in use (by another program, '
        'another run, or an earlier start of this one that is still running); stop it, or '
        f'give every process another port with {override}')
  raise errors.InputError(f'cannot listen on the coordinator port {port}: {last}')


def _gather(members: Membership, timeout_s: int) -> dict[int, socket.socket]:
  """Process 0: waits for every other process to report in; their open connections.

  Once all have arrived it waits _SETTLE_S more, so that a second process
  claiming an id already taken is still seen and refused.
  """
  port = members.port
  listener = _listen(port, members)
  logging.info('Process 0 of %d: waiting at %s for the other processes (at most %d s).',
               members.num_processes, members.coordinator, timeout_s)
  selector = selectors.DefaultSelector()
  selector.register(listener, selectors.EVENT_READ, None)
  arrived: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
  pending: dict[socket.socket, Lines] = {}
  deadline = time.monotonic() + timeout_s
  error, settled = None, None
  try:
    while error is None:
      if len(arrived) == members.num_processes - 1:
        settled = settled or time.monotonic() + _SETTLE_S
        if time.monotonic() >= settled:
          break
      left = (settled or deadline) - time.monotonic()
      if left <= 0 and settled is None:
        error = _never_arrived(members, arrived, timeout_s)
        break
      for key, _ in selector.select(timeout=max(0.0, min(left, 1.0))):
        if key.fileobj is listener:
          conn, _ = listener.accept()
          conn.setblocking(False)
          pending[conn] = Lines(conn)
          selector.register(conn, selectors.EVENT_READ, None)
        else:
          error = _receive(key.fileobj, members, selector, pending, arrived)
          if error is not None:  # the first misfit stops the run; later reports wait
            break
    verdict = {'verdict': 'go'} if error is None else {'verdict': 'error', 'message': error}
    # A late one (still pending) hears no 'go', only a stop.
    _send_all([conn for conn, _ in arrived.values()]
              + (list(pending) if error is not None else []), verdict)
  finally:
    selector.close()
    listener.close()  # JAX's coordinator takes the port next; accepted connections stay
    for conn in pending:
      conn.close()
  if error is not None:
    for conn, _ in arrived.values():
      conn.close()
    raise errors.InputError(error)
  return {i: conn for i, (conn, _) in arrived.items()}


def _never_arrived(members: Membership, arrived: Mapping[int, Any], timeout_s: int) -> str:
  """The line of a roll call that ran out of time."""
  missing = [i for i in range(1, members.num_processes) if i not in arrived]
  return (f'waited {timeout_s} s at coordinator {members.coordinator} for the '
          f'{members.num_processes} processes of this run: {len(arrived) + 1} arrived, '
          f'process id{"s" if len(missing) > 1 else ""} '
          f'{", ".join(map(str, missing))} never did (start '
          f'{"them" if len(missing) > 1 else "it"} with the same coordinator, or check '
          '--num_processes; --distributed_timeout sets the wait)')


def _receive(conn: socket.socket, members: Membership, selector: selectors.BaseSelector,
             pending: dict[socket.socket, Lines],
             arrived: dict[int, tuple[socket.socket, dict[str, Any]]]) -> Optional[str]:
  """Reads a pending connection: its report moves it to `arrived`, a stranger is dropped.

  Returns the line that stops the run when the report does not fit, else None.
  """
  messages = pending[conn].read()
  if not messages:
    if messages is None:  # hung up before a word: not one of ours, or it died
      _drop(conn, selector, pending)
    return None
  hello = messages[0]
  if hello.get('magic') != _MAGIC:  # not one of ours (a port scan): ignored
    _drop(conn, selector, pending)
    return None
  error = _check_hello(hello, members, arrived)
  if error is None:
    arrived[hello['process_id']] = (conn, hello)
    selector.unregister(conn)
    del pending[conn]
  return error


def _drop(conn: socket.socket, selector: selectors.BaseSelector,
          pending: dict[socket.socket, Lines]) -> None:
  selector.unregister(conn)
  del pending[conn]
  conn.close()


def _send_all(conns: list[socket.socket], message: Mapping[str, Any]) -> None:
  """`message` to each connection; one that is gone already is skipped."""
  for conn in conns:
    try:
      conn.setblocking(True)
      send(conn, message)
    except OSError:
      pass


def _who(hello: Mapping[str, Any]) -> str:
  return f'host {hello.get("host")} pid {hello.get("pid")}'


def _check_hello(hello: Mapping[str, Any], members: Membership,
                 arrived: Mapping[int, tuple[socket.socket, dict[str, Any]]]) -> Optional[str]:
  """The line that stops the run for this report, or None when it fits."""
  pid, count = hello.get('process_id'), hello.get('num_processes')
  if count != members.num_processes:
    return (f'process {pid} ({_who(hello)}) was started for {count} processes, process 0 for '
            f'{members.num_processes}; give every process the same --num_processes')
  if pid == 0:
    return (f'two processes claim process id 0: this one and {_who(hello)}; each process needs '
            f'its own id in [0, {members.num_processes})')
  if pid in arrived:
    return (f'two processes claim process id {pid}: {_who(arrived[pid][1])} and {_who(hello)}; '
            f'each process needs its own id in [0, {members.num_processes})')
  return None


def _hello(members: Membership) -> dict[str, Any]:
  return {'magic': _MAGIC, 'process_id': members.process_id, 'num_processes': members.num_processes,
          'host': socket.gethostname(), 'pid': os.getpid()}


def _report(members: Membership, timeout_s: int) -> socket.socket:
  """Another process: reports in to process 0 and waits for its verdict; the connection."""
  host, port = parse_address(members.coordinator, 'coordinator')
  deadline = time.monotonic() + timeout_s
  logging.info('Process %d of %d: reporting to process 0 at %s (waiting at most %d s).',
               members.process_id, members.num_processes, members.coordinator, timeout_s)
  reached = False  # something listens there, but hung up without a verdict
  while time.monotonic() < deadline:
    try:
      sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
    except OSError:
      time.sleep(POLL_S)
      continue
    try:
      send(sock, _hello(members))
      lines = Lines(sock)
      while time.monotonic() < deadline:
        sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
        messages = lines.read()
        if messages is None:
          reached = True  # not a roll call: JAX's coordinator of a run already started, or
          break           # another program; it may still become ours, so try again
        for message in messages:
          if message.get('verdict') == 'go':
            sock.settimeout(None)
            return sock
          raise errors.InputError(message.get('message') or f'refused by process 0: {message}')
    except OSError:
      pass
    sock.close()
    time.sleep(POLL_S)
  if reached:
    raise errors.InputError(
        f'process {members.process_id} of {members.num_processes} found no roll call at '
        f'{members.coordinator} within {timeout_s} s: a program there answers but is not '
        'process 0 waiting for its peers (a run that already has all its processes, e.g. '
        f'another process was given --process_id={members.process_id}; or another program '
        'holds the port)')
  raise errors.InputError(
      f'no process 0 answered at {members.coordinator} within {timeout_s} s: process '
      f'{members.process_id} of {members.num_processes} waited in vain (process 0 not started, '
      'or on another address or port, or unreachable; --distributed_timeout sets the wait)')




def hold(members: Membership, timeout_s: int) -> dict[int, socket.socket]:
  """The roll call, at most `timeout_s` seconds: the open connections, by process id
  (process 0: one to every other process; another process: {0: its connection})."""
  if members.process_id == 0:
    return _gather(members, timeout_s)
  return {0: _report(members, timeout_s)}
