"""The processes of a multi-process run: checked start-up, one config, and a watch for lost peers.

`jax.distributed.initialize` alone waits five minutes without a word for a peer
that never comes, then aborts with a C++ stack; it says nothing about a
duplicate process id; and a peer killed mid-run leaves the others in a
collective until a heartbeat times out and aborts them too. So before JAX is
initialised the processes hold a roll call of their own, over plain TCP on the
coordinator's port (docs/cluster.md, "Coordinator and peers"):

  start(plan, timeout_s)   # process 0 binds the port (taken: one line at once),
                           # the others report in with their id and process count;
                           # process 0 answers 'go' or the one line that stops all
  agree('config', fields)  # after initialize: every process's fields equal process 0's
  exit_together(main)      # launch.py: a process that stops tells the others

The roll call's connections stay open for the whole run: when a process dies
(kill -9, a crash, its host gone) the others see its connection close (TCP
keepalive covers a host that vanishes without a word) and stop within seconds
with one line naming it, before JAX's own heartbeat would abort them. A process
that leaves on purpose says so first ('bye' and its exit status). JAX's
coordinator runs in a helper process of process 0 (`serve_coordinator`), so that
the others' JAX clients do not abort the moment process 0 dies.

Every failure here that the program can name is one `error:` line: status 2 for
a start-up mistake (the flags, the cluster variables, the port, the configs),
errors.EXIT_PEER_LOST for a run stopped because another process died or stopped.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import functools
import hashlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Optional

from absl import logging

from alexnet_jax.core import errors

# Seconds every process waits for the others at start (--distributed_timeout).
DEFAULT_TIMEOUT_S = 120
# Ports derived for a SLURM step: below Linux's ephemeral range (32768-60999), from which the
# kernel picks the local ports of outgoing connections, so none of those can hold it.
PORT_RANGE = (10000, 32768)
# Cloud TPU: the port jax.distributed uses on worker 0 (jax/_src/clusters/cloud_tpu_cluster.py).
TPU_PORT = 8482
_MAGIC = 'alexnet_jax roll call 1'
_POLL_S = 0.25
# Process 0 listens this long after the last expected process reported in, so that a second
# claim of an id by a process already waiting (each retries every _POLL_S) is seen.
_SETTLE_S = 4 * _POLL_S
# After a peer says it stopped with an error, the time this process gets to stop by itself
# (the same error reached at the same point) before it stops for the peer's sake.
_GRACE_S = 5.0
# How long an error that may come from a lost peer waits for the watch to confirm it.
_LOSS_CONFIRM_S = 5.0
# TCP keepalive on the roll call's connections: a host that vanishes without closing them
# (power, network) is noticed after about IDLE + INTERVAL x COUNT seconds.
_KEEPALIVE = (10, 5, 3)


class PeerLost(Exception):
  """Another process of the run died or stopped; the watch reports it (errors.EXIT_PEER_LOST)."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the run: what jax.distributed.initialize gets."""
  coordinator: str  # host:port of process 0
  num_processes: int
  process_id: int
  local_device_ids: Optional[tuple[int, ...]] = None
  source: str = 'flags'  # where the values came from, for messages: flags, SLURM, TPU, ...


# ----------------------------------------------------------------------------- checks


def parse_address(address: str, what: str) -> tuple[str, int]:
  """(host, port) of 'host:port' or '[v6]:port'; errors.InputError naming `what` otherwise."""
  text = (address or '').strip()
  host, sep, port = text.rpartition(':')
  if not sep or not host:
    raise errors.InputError(f'{what}={address!r} must be host:port (the address of process 0 '
                            'and a free port on it, e.g. node001:23456)')
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]
  elif ':' in host:
    raise errors.InputError(f'{what}={address!r}: write an IPv6 address in brackets, '
                            f'[{host}]:{port}')
  return host, check_port(port, f'{what}={address!r}: the port')


def check_port(value: Any, what: str) -> int:
  text = str(value).strip()
  if not text.isdigit() or not 1 <= int(text) <= 65535:
    raise errors.InputError(f'{what} must be an integer in [1, 65535], got {value!r}')
  return int(text)


def check_timeout(timeout_s: Any) -> int:
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
    raise errors.InputError(f'--distributed_timeout must be a positive number of seconds, got '
                            f'{timeout_s!r}')
  return timeout_s


def plan_from_flags(coordinator_address: Optional[str], num_processes: Optional[int],
                    process_id: Optional[int]) -> Optional[Plan]:
  """The plan the three flags give (None for one process); InputError naming a bad flag."""
  if num_processes is None:
    raise errors.InputError('--num_processes is required with --coordinator_address/--process_id')
  if num_processes < 1:
    raise errors.InputError(f'--num_processes must be >= 1, got {num_processes}')
  if num_processes == 1:
    return None
  if process_id is None or not 0 <= process_id < num_processes:
    raise errors.InputError(f'--process_id must be in [0, {num_processes}), got {process_id}')
  what = '--coordinator_address'
  if not coordinator_address and os.environ.get('JAX_COORDINATOR_ADDRESS'):
    coordinator_address, what = os.environ['JAX_COORDINATOR_ADDRESS'], 'JAX_COORDINATOR_ADDRESS'
  if not coordinator_address:
    raise errors.InputError('--coordinator_address (host:port of process 0) is required for '
                            f'{num_processes} processes')
  host, port = parse_address(coordinator_address, what)
  _check_resolves(host, what)
  return Plan(_join(host, port), num_processes, process_id)


def _join(host: str, port: int) -> str:
  return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


def _check_resolves(host: str, what: str) -> None:
  try:
    socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
  except (socket.gaierror, UnicodeError):
    raise errors.InputError(f'{what}: host {host!r} cannot be resolved; give the name or '
                            'address of the node that runs process 0') from None


def env_int(env: Mapping[str, str], name: str, lowest: int) -> int:
  """The integer a cluster launcher put in environment variable `name`; one line naming the
  variable when it holds something else."""
  value = env.get(name, '')
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < lowest:
    raise errors.InputError(f'the environment variable {name}={value!r} must be an integer >= '
                            f'{lowest} (the cluster launcher sets it; unset it, or fix the job '
                            'script that sets it)')
  return number


def slurm_port(job_id: int, step_id: int) -> int:
  """The coordinator port of SLURM step `step_id` of job `job_id` (docs/cluster.md).

  A hash of both ids over PORT_RANGE: jobs whose ids differ by 4096 (which share
  JAX's own choice, job id mod 4096) or steps of one job get different ports.
  """
  digest = hashlib.sha256(f'{job_id}.{step_id}'.encode()).digest()
  return PORT_RANGE[0] + int.from_bytes(digest[:8], 'big') % (PORT_RANGE[1] - PORT_RANGE[0])


SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                   'SLURM_LOCALID')


def slurm_present(env: Mapping[str, str]) -> bool:
  """Whether this is a task of a SLURM step (srun), as JAX's own detection sees it."""
  return all(k in env for k in SLURM_VARIABLES)


def plan_from_slurm(env: Mapping[str, str], port: Optional[int]) -> Plan:
  """The plan of an srun task, from its SLURM variables; InputError naming a bad variable."""
  count = env_int(env, 'SLURM_NTASKS', 1)
  rank = env_int(env, 'SLURM_PROCID', 0)
  local = env_int(env, 'SLURM_LOCALID', 0)
  if rank >= count:
    raise errors.InputError(f'the SLURM variables disagree: SLURM_PROCID={rank} but '
                            f'SLURM_NTASKS={count} (task ids run from 0 to {count - 1})')
  job = env_int(env, 'SLURM_JOB_ID', 0)
  step = env.get('SLURM_STEP_ID', '0').strip()
  step_id = int(step) if step.isdigit() else 0
  nodes = env.get('SLURM_STEP_NODELIST', '').strip()
  if not nodes:
    raise errors.InputError('the SLURM variable SLURM_STEP_NODELIST is empty: run launch.py '
                            'under srun (scripts/slurm_gpu.sbatch)')
  from jax._src.clusters import slurm_cluster  # pylint: disable=g-import-not-at-top
  chosen = slurm_port(job, step_id) if port is None else port
  with _patched_env({'SLURM_STEP_NODELIST': nodes}):
    address = slurm_cluster.SlurmCluster.get_coordinator_address(None, str(chosen))
  return Plan(address, count, rank, (local,), 'SLURM')


class _patched_env:  # pylint: disable=invalid-name
  def __init__(self, values: Mapping[str, str]):
    self._values, self._old = values, {}

  def __enter__(self) -> None:
    for k, v in self._values.items():
      self._old[k] = os.environ.get(k)
      os.environ[k] = v

  def __exit__(self, *exc: Any) -> None:
    for k, v in self._old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def plan_from_environment(port: Optional[int], timeout_s: int) -> Plan:
  """The plan JAX's cluster detection finds (Open MPI, Cloud TPU, ...), with `port` if given."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  override = {'JAX_COORDINATOR_PORT': str(port)} if port is not None else {}
  with _patched_env(override):
    address, count, rank, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, timeout_s)
  if address is None or count is None or rank is None:
    raise errors.InputError('no cluster found to join (--auto_distributed): give '
                            '--coordinator_address, --num_processes and --process_id')
  host, chosen = parse_address(address, 'the detected coordinator address')
  return Plan(_join(host, chosen), int(count), int(rank),
              None if local is None else tuple(local), 'the cluster environment')


# ----------------------------------------------------------------------------- the roll call


def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
  sock.sendall((json.dumps(message) + '\n').encode())


class _Lines:
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


def _keepalive(sock: socket.socket) -> None:
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  idle, interval, count = _KEEPALIVE
  for name, value in (('TCP_KEEPIDLE', idle), ('TCP_KEEPINTVL', interval),
                      ('TCP_KEEPCNT', count)):
    if hasattr(socket, name):
      sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _listen(port: int, plan: Plan) -> socket.socket:
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
      sock.listen(max(16, plan.num_processes))
      return sock
    except OSError as e:
      sock.close()
      last = e
      if e.errno == errno.EADDRINUSE:
        break
  if last is not None and last.errno == errno.EADDRINUSE:
    override = ('--coordinator_port=PORT' if plan.source != 'flags'
                else '--coordinator_address=HOST:PORT')
    raise errors.InputError(
        f'the coordinator port {port} on this host is already in use (by another program, '
        'another run, or an earlier start of this one that is still running); stop it, or '
        f'give every process another port with {override}')
  raise errors.InputError(f'cannot listen on the coordinator port {port}: {last}')


def _roll_call_coordinator(plan: Plan, timeout_s: int) -> dict[int, socket.socket]:
  """Process 0: waits for every other process to report in; their open connections.

  Once all have arrived it waits _SETTLE_S more, so that a second process
  claiming an id already taken is still seen and refused.
  """
  port = parse_address(plan.coordinator, 'coordinator')[1]
  listener = _listen(port, plan)
  logging.info('Process 0 of %d: waiting at %s for the other processes (at most %d s).',
               plan.num_processes, plan.coordinator, timeout_s)
  selector = selectors.DefaultSelector()
  selector.register(listener, selectors.EVENT_READ, None)
  arrived: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
  pending: dict[socket.socket, _Lines] = {}
  deadline = time.monotonic() + timeout_s
  error, settled = None, None
  try:
    while error is None:
      if len(arrived) == plan.num_processes - 1:
        settled = settled or time.monotonic() + _SETTLE_S
        if time.monotonic() >= settled:
          break
      left = (settled or deadline) - time.monotonic()
      if left <= 0 and settled is None:
        error = _never_arrived(plan, arrived, timeout_s)
        break
      for key, _ in selector.select(timeout=max(0.0, min(left, 1.0))):
        if key.fileobj is listener:
          conn, _ = listener.accept()
          conn.setblocking(False)
          pending[conn] = _Lines(conn)
          selector.register(conn, selectors.EVENT_READ, None)
        else:
          error = _receive(key.fileobj, plan, selector, pending, arrived)
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


def _never_arrived(plan: Plan, arrived: Mapping[int, Any], timeout_s: int) -> str:
  """The line of a roll call that ran out of time."""
  missing = [i for i in range(1, plan.num_processes) if i not in arrived]
  return (f'waited {timeout_s} s at coordinator {plan.coordinator} for the '
          f'{plan.num_processes} processes of this run: {len(arrived) + 1} arrived, '
          f'process id{"s" if len(missing) > 1 else ""} '
          f'{", ".join(map(str, missing))} never did (start '
          f'{"them" if len(missing) > 1 else "it"} with the same coordinator, or check '
          '--num_processes; --distributed_timeout sets the wait)')


def _receive(conn: socket.socket, plan: Plan, selector: selectors.BaseSelector,
             pending: dict[socket.socket, _Lines],
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
  error = _check_hello(hello, plan, arrived)
  if error is None:
    arrived[hello['process_id']] = (conn, hello)
    selector.unregister(conn)
    del pending[conn]
  return error


def _drop(conn: socket.socket, selector: selectors.BaseSelector,
          pending: dict[socket.socket, _Lines]) -> None:
  selector.unregister(conn)
  del pending[conn]
  conn.close()


def _send_all(conns: list[socket.socket], message: Mapping[str, Any]) -> None:
  """`message` to each connection; one that is gone already is skipped."""
  for conn in conns:
    try:
      conn.setblocking(True)
      _send(conn, message)
    except OSError:
      pass


def _who(hello: Mapping[str, Any]) -> str:
  return f'host {hello.get("host")} pid {hello.get("pid")}'


def _check_hello(hello: Mapping[str, Any], plan: Plan,
                 arrived: Mapping[int, tuple[socket.socket, dict[str, Any]]]) -> Optional[str]:
  """The line that stops the run for this report, or None when it fits."""
  pid, count = hello.get('process_id'), hello.get('num_processes')
  if count != plan.num_processes:
    return (f'process {pid} ({_who(hello)}) was started for {count} processes, process 0 for '
            f'{plan.num_processes}; give every process the same --num_processes')
  if pid == 0:
    return (f'two processes claim process id 0: this one and {_who(hello)}; each process needs '
            f'its own id in [0, {plan.num_processes})')
  if pid in arrived:
    return (f'two processes claim process id {pid}: {_who(arrived[pid][1])} and {_who(hello)}; '
            f'each process needs its own id in [0, {plan.num_processes})')
  return None


def _hello(plan: Plan) -> dict[str, Any]:
  return {'magic': _MAGIC, 'process_id': plan.process_id, 'num_processes': plan.num_processes,
          'host': socket.gethostname(), 'pid': os.getpid()}


def _roll_call_peer(plan: Plan, timeout_s: int) -> socket.socket:
  """Another process: reports in to process 0 and waits for its verdict; the connection."""
  host, port = parse_address(plan.coordinator, 'coordinator')
  deadline = time.monotonic() + timeout_s
  logging.info('Process %d of %d: reporting to process 0 at %s (waiting at most %d s).',
               plan.process_id, plan.num_processes, plan.coordinator, timeout_s)
  reached = False  # something listens there, but hung up without a verdict
  while time.monotonic() < deadline:
    try:
      sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
    except OSError:
      time.sleep(_POLL_S)
      continue
    try:
      _send(sock, _hello(plan))
      lines = _Lines(sock)
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
    time.sleep(_POLL_S)
  if reached:
    raise errors.InputError(
        f'process {plan.process_id} of {plan.num_processes} found no roll call at '
        f'{plan.coordinator} within {timeout_s} s: a program there answers but is not process 0 '
        'waiting for its peers (a run that already has all its processes, e.g. another process '
        f'was given --process_id={plan.process_id}; or another program holds the port)')
  raise errors.InputError(
      f'no process 0 answered at {plan.coordinator} within {timeout_s} s: process '
      f'{plan.process_id} of {plan.num_processes} waited in vain (process 0 not started, or on '
      'another address or port, or unreachable; --distributed_timeout sets the wait)')


# ----------------------------------------------------------------------------- the watch


class _Session:
  """This process's open connections to the others and the thread that watches them."""

  def __init__(self, plan: Plan, links: dict[int, socket.socket], timeout_s: int):
    self.plan, self.timeout_s = plan, timeout_s
    self.links = links  # process id -> connection (process 0: every peer; a peer: {0: ...})
    self.lock = threading.Lock()
    self.leaving = False  # this process said bye: the others' hang-ups are expected
    self.departed: dict[int, int] = {}  # process id -> the status it said it leaves with
    self.hung_up: set[int] = set()  # processes whose connection has closed
    self.service: Optional[subprocess.Popen] = None  # process 0: the helper of JAX's service
    self.lost = threading.Event()
    self.lost_message = ''
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
        _send(conn, message)
      except OSError:
        pass
      finally:
        try:
          conn.setblocking(False)
        except OSError:
          pass

  def _watch(self) -> None:
    selector = selectors.DefaultSelector()
    readers = {}
    for pid, conn in self.links.items():
      readers[conn] = (pid, _Lines(conn))
      selector.register(conn, selectors.EVENT_READ, None)
    stop_at, stop_line = None, ''
    while True:
      events = selector.select(timeout=_POLL_S) if readers else time.sleep(_POLL_S) or []
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
            who = int(message.get('process_id', pid))
            status = int(message['bye'])
            with self.lock:
              self.departed[who] = status
            if self.plan.process_id == 0 and who == pid:
              self._broadcast(message, but=pid)  # the others hear it from process 0
            if status != 0 and stop_at is None:
              stop_at = time.monotonic() + _GRACE_S
              stop_line = (f'process {who} of {self.plan.num_processes} stopped with exit status '
                           f'{status} (its output says why); stopped this process too')
              # What fails here now (a collective, a checkpoint write) fails because of it.
              self.lost_message = stop_line
              self.lost.set()
          elif 'lost' in message:
            self._peer_lost(int(message['lost']))
      if stop_at is not None and time.monotonic() >= stop_at:
        with self.lock:
          if self.leaving:
            return
        self._stop(stop_line)

  def _peer_lost(self, pid: int) -> None:
    with self.lock:
      if self.leaving:  # this process is ending anyway; the others' hang-ups are expected
        return
    what = ' (the coordinator)' if pid == 0 else ''
    self.lost_message = (
        f'process {pid}{what} of {self.plan.num_processes} was lost: it ended without a word '
        '(killed, crashed, or its host or network failed); stopped this process too. Every '
        'checkpoint folder left is complete; start all processes again to resume from the '
        'newest')
    self.lost.set()
    if self.plan.process_id == 0:
      self._broadcast({'lost': pid}, but=pid)
    self._stop(self.lost_message)

  def _stop(self, line: str) -> None:
    stop_process(f'error: {line}', errors.EXIT_PEER_LOST)

  def say_bye(self, status: int) -> None:
    with self.lock:
      if self.leaving:
        return
      self.leaving = True
    self._broadcast({'bye': int(status), 'process_id': self.plan.process_id})


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


def start(plan: Plan, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
  """Roll call, then jax.distributed.initialize; the watch runs from the roll call on.

  Process 0 frees the port between its roll call and JAX's coordinator binding
  it; a program that takes it in that instant stops the start (docs/cluster.md).
  """
  global _session
  import jax  # pylint: disable=g-import-not-at-top
  if plan.process_id == 0:
    links = _roll_call_coordinator(plan, timeout_s)
  else:
    links = {0: _roll_call_peer(plan, timeout_s)}
  _session = _Session(plan, links, timeout_s)
  atexit.register(_session.say_bye, 0)  # a normal exit; runs before JAX's shutdown
  logging.info('Process %d of %d: all %d processes reported in at %s.', plan.process_id,
               plan.num_processes, plan.num_processes, plan.coordinator)
  arguments = dict(
      local_device_ids=None if plan.local_device_ids is None else list(plan.local_device_ids),
      cluster_detection_method='deactivate', initialization_timeout=timeout_s)
  if plan.process_id != 0:
    jax.distributed.initialize(plan.coordinator, plan.num_processes, plan.process_id, **arguments)
    return
  _session.service = _start_service(plan)
  # pylint: disable=g-import-not-at-top,protected-access
  from jax._src import distributed
  # Process 0 joins as a client only: its helper process already runs the service, so the
  # service jax.distributed.initialize would start in process 0 is none (jax 0.10.2's
  # State.initialize; nothing else reads global_state.service).
  make_service = distributed._jax.get_distributed_runtime_service
  distributed._jax.get_distributed_runtime_service = lambda *a, **k: None
  try:
    jax.distributed.initialize(plan.coordinator, plan.num_processes, 0, **arguments)
  finally:
    distributed._jax.get_distributed_runtime_service = make_service
  # pylint: enable=g-import-not-at-top,protected-access


# JAX's coordinator (the service every process's JAX client talks to) runs in a helper process
# that process 0 starts, not in process 0: if process 0 dies, the others' JAX clients would
# abort the moment its service vanished, racing the watch that stops them with one line. The
# helper outlives process 0 by this many seconds (the others stop within one), then ends.
_SERVICE_GRACE_S = 5.0


def _start_service(plan: Plan) -> subprocess.Popen:
  """Starts the helper process that runs JAX's coordinator on the port; waits until it serves."""
  port = parse_address(plan.coordinator, 'coordinator')[1]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root,
                                                                  os.environ.get('PYTHONPATH')])))
  helper = subprocess.Popen(
      [sys.executable, '-c', 'from alexnet_jax.distributed import cluster; '
       f'cluster.serve_coordinator({port}, {plan.num_processes})'],
      # Its own output would come after process 0's last line (and keep a pipe of process 0's
      # output open for its grace): none.
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
      start_new_session=True)
  ready = helper.stdout.readline().strip()
  if ready != b'ready':
    helper.wait()
    raise errors.InputError(
        f'JAX\'s coordinator could not start on port {port} (taken by another program right '
        'after the roll call freed it); start all processes again')
  return helper


def serve_coordinator(port: int, num_processes: int) -> None:
  """The helper process: JAX's coordinator on `port` until process 0 ends, plus a grace."""
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  try:
    service = _jax.get_distributed_runtime_service(f'[::]:{port}', num_processes)
  except Exception:  # pylint: disable=broad-except
    os._exit(1)  # pylint: disable=protected-access
  print('ready', flush=True)
  sys.stdin.buffer.read()  # until process 0 has ended, one way or another
  time.sleep(_SERVICE_GRACE_S)
  del service
  os._exit(0)  # pylint: disable=protected-access


def lost_peer(wait_s: float = _LOSS_CONFIRM_S) -> Optional[str]:
  """What the watch says of a process that died or stopped with an error, waiting up to
  `wait_s` for such news; None if there is none (the error at hand has another cause)."""
  if _session is None:
    return None
  if _session.lost.wait(wait_s):
    return _session.lost_message
  return None


def active() -> bool:
  return _session is not None


# ----------------------------------------------------------------------------- one config


def agree(what: str, fields: Mapping[str, Any], timeout_s: Optional[int] = None) -> None:
  """Raises errors.InputError, the same line in every process, unless `fields` (JSON values)
  are equal in every process to process 0's; no-op in a single-process run.

  Each process posts its fields in JAX's distributed key-value store; process 0
  compares and posts the verdict, which every process reads. Each waits at most
  `timeout_s` (default: the start's --distributed_timeout) for the others.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  if client is None or jax.process_count() == 1:
    return
  if timeout_s is None:
    timeout_s = _session.timeout_s if _session is not None else DEFAULT_TIMEOUT_S
  mine = json.loads(json.dumps(dict(fields), sort_keys=True, default=str))
  me, count, ms = jax.process_index(), jax.process_count(), timeout_s * 1000
  client.key_value_set(f'alexnet_jax/{what}/{me}', json.dumps(mine))
  if me == 0:
    differences = []
    for other in range(1, count):
      theirs = json.loads(client.blocking_key_value_get(f'alexnet_jax/{what}/{other}', ms))
      differing = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
      if differing:
        shown = ', '.join(f'{k} ({_short(theirs.get(k))} vs {_short(mine.get(k))})'
                          for k in differing[:6])
        more = f' and {len(differing) - 6} more' if len(differing) > 6 else ''
        differences.append(f'process {other} differs from process 0 in {shown}{more}')
    verdict = ''
    if differences:
      verdict = (f'the processes of this run have different {what}s: '
                 f'{"; ".join(differences)}. Start every process with the same '
                 f'{"--config and --config.* overrides" if what == "config" else "data"}')
    client.key_value_set(f'alexnet_jax/{what}/verdict', verdict)
  else:
    verdict = client.blocking_key_value_get(f'alexnet_jax/{what}/verdict', ms)
  if verdict:
    raise errors.InputError(verdict)


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + '...'


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
  """Tells the others that this process stops with `status`, and ends it.

  Process 0's helper runs JAX's coordinator until 5 s after process 0 ends: the
  others would abort if it went first, so process 0 waits (a bounded time) until
  they have hung up.
  """
  if _session is not None:
    _session.say_bye(status)
    if _session.plan.process_id == 0:
      deadline = time.monotonic() + _GRACE_S + 5
      while time.monotonic() < deadline and len(_session.hung_up) < len(_session.links):
        time.sleep(0.05)
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(status)  # pylint: disable=protected-access
