"""Runs one fuzz case as the real command and checks the properties every case must keep.

A case is `python launch.py ARGS` or `python -m alexnet_jax.TOOL ARGS` in a folder of
its own. Properties (`violations`):

- an answer in bounded time (the case's timeout; its whole process session is then killed);
- no Python traceback in what it prints (unless it sets ALEXNET_JAX_TRACEBACK=1);
- a documented exit status: 0, 2 (`error: ...`), 3 (a peer process lost), 130
  (interrupted), or 1 only with absl's `FATAL Flags parsing error` line;
- nothing changed under the case's folder that the case does not name as an output
  (every path's kind, permissions, size, content digest or link target, before and after);
- no process left behind: each case runs in a session of its own, and any process
  still in it after the command ended is a violation (and is killed).

Speed: a subprocess pays ~3-6 s of imports. `Server` imports the libraries once and
forks one child per case, which runs the command as `python` would (runpy as
`__main__`, its own session, stdout and stderr); a case with environment variables
runs as a plain subprocess, since JAX reads them at import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCUMENTED_STATUSES = (0, 2, 3, 130)
PARSER_LINE = 'FATAL Flags parsing error'
TRACEBACK = 'Traceback (most recent call last)'
# Eight CPU devices, as the test suite has (tests/__init__.py): a run made by the tests
# with mesh.model=2 is read back as it was written.
DEVICES_FLAG = '--xla_force_host_platform_device_count=8'


@dataclasses.dataclass
class Case:
  """One command on one hostile input."""
  kind: str  # the class of bad input (inputs.CLASSES)
  what: str  # the input, in words
  tool: str  # launch | prepare | evaluate | predict | plot | summary
  args: list[str]
  cwd: str  # the case's own folder: its inputs, and where it runs
  outputs: list[str] = dataclasses.field(default_factory=list)  # paths it may create or change
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  timeout: float = 120.0
  # Where the case hits a defect of another feature than these classes (outputs, worker
  # processes, image inputs): why. The long profile reports such cases, expected to fail.
  elsewhere: str = ''


@dataclasses.dataclass
class Result:
  status: Optional[int]  # None: killed at the timeout
  output: str  # stdout + stderr
  seconds: float
  changed: list[str]
  left_behind: list[str]  # 'pid command' of processes still in the case's session


def command(tool: str) -> list[str]:
  if tool == 'launch':
    return [sys.executable, os.path.join(REPO, 'launch.py')]
  return [sys.executable, '-m', f'alexnet_jax.{tool}']


# ----------------------------------------------------------------------------- file trees


def _entry(path: str) -> str:
  """What a path is, in a form that changes when it does (never opens a FIFO or device)."""
  info = os.lstat(path)
  mode = stat.S_IMODE(info.st_mode)
  if stat.S_ISLNK(info.st_mode):
    return f'link {os.readlink(path)}'
  if stat.S_ISDIR(info.st_mode):
    return f'dir {mode:o}'
  if not stat.S_ISREG(info.st_mode):
    return f'special {stat.S_IFMT(info.st_mode):o} {mode:o}'
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  except OSError as e:
    return f'file {mode:o} {info.st_size} unreadable {e.errno}'
  return f'file {mode:o} {info.st_size} {digest.hexdigest()}'


def snapshot(root: str) -> dict[str, str]:
  """Every path under `root` (not following links) -> _entry."""
  tree = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      try:
        tree[path] = _entry(path)
      except OSError:  # removed while walking
        continue
  return tree


def changes(before: dict[str, str], after: dict[str, str], outputs: list[str]) -> list[str]:
  """Paths added, removed or changed, except those at or under an output."""
  def named(path: str) -> bool:
    if path not in before and any(o.startswith(path + os.sep) for o in outputs):
      return True  # a missing folder above an output, made to hold it
    return any(path == o or path.startswith(o.rstrip(os.sep) + os.sep) for o in outputs)
  def kept_special(path: str) -> bool:
    # A device, FIFO or socket is never an output's rightful replacement, named or not.
    return not before.get(path, '').startswith('special') or before.get(path) == after.get(path)
  paths = set(before) | set(after)
  return sorted(p for p in paths if before.get(p) != after.get(p)
                and (not named(p) or not kept_special(p)))


# ----------------------------------------------------------------------------- processes


def session_members(session: int) -> list[str]:
  """'pid command' of every live process whose session id is `session`."""
  members = []
  for name in os.listdir('/proc'):
    if not name.isdigit() or int(name) == session:
      continue
    try:
      with open(f'/proc/{name}/stat', 'rb') as f:
        text = f.read().decode('utf-8', 'replace')
    except OSError:
      continue
    fields = text[text.rindex(')') + 2:].split()
    if fields[0] != 'Z' and int(fields[3]) == session:
      members.append(f'{name} {text[text.index("(") + 1:text.rindex(")")]}')
  return members


def _kill_session(session: int) -> None:
  for member in session_members(session):
    try:
      os.kill(int(member.split()[0]), signal.SIGKILL)
    except OSError:
      pass


def _wait(pid: int, timeout: float) -> Optional[int]:
  """The exit status of child `pid`, or None after killing its session at the timeout."""
  deadline = time.monotonic() + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    if time.monotonic() > deadline:
      try:
        os.killpg(pid, signal.SIGKILL)
      except OSError:
        pass
      os.waitpid(pid, 0)
      return None
    time.sleep(0.05)


# ----------------------------------------------------------------------------- running


def _run_in_child(case: dict[str, Any], out_path: str) -> None:
  """In a forked child: a session of its own, then the command as `python` runs it."""
  import runpy  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  os.setsid()
  out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(out, 2)
  status = 0
  try:
    os.chdir(case['cwd'])
    sys.path[0] = REPO
    if case['tool'] == 'launch':
      sys.argv = [os.path.join(REPO, 'launch.py'), *case['args']]
      runpy.run_path(sys.argv[0], run_name='__main__')
    else:
      sys.modules.pop(f'alexnet_jax.{case["tool"]}', None)  # imported fresh as __main__
      sys.argv = [f'alexnet_jax.{case["tool"]}', *case['args']]
      runpy.run_module(f'alexnet_jax.{case["tool"]}', run_name='__main__', alter_sys=True)
  except SystemExit as e:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-exception-caught
    traceback.print_exc()  # what Python itself prints for an uncaught error
    status = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def _run_subprocess(case: dict[str, Any]) -> tuple[Optional[int], str, int]:
  env = dict(os.environ, PYTHONPATH=REPO, **case['env'])
  proc = subprocess.Popen(command(case['tool']) + case['args'], cwd=case['cwd'], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True)
  try:
    output, _ = proc.communicate(timeout=case['timeout'])
    return proc.returncode, output.decode('utf-8', 'replace'), proc.pid
  except subprocess.TimeoutExpired:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
      pass
    output, _ = proc.communicate()
    return None, output.decode('utf-8', 'replace'), proc.pid


def run_one(case: dict[str, Any], fork: bool) -> dict[str, Any]:
  """Runs a case (a dict of Case's fields); returns a dict of Result's fields."""
  before = snapshot(case['cwd'])
  out_path = os.path.join(os.path.dirname(case['cwd']), f'.{os.path.basename(case["cwd"])}.out')
  start = time.monotonic()
  if fork and not case['env']:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _run_in_child(case, out_path)
    status = _wait(pid, case['timeout'])
    with open(out_path, 'rb') as f:
      output = f.read().decode('utf-8', 'replace')
    os.remove(out_path)
  else:
    status, output, pid = _run_subprocess(case)
  seconds = time.monotonic() - start
  time.sleep(0.2)  # a child that outlives its parent has had time to show itself
  left = session_members(pid)
  _kill_session(pid)
  return {'status': status, 'output': output, 'seconds': seconds,
          'changed': changes(before, snapshot(case['cwd']), case['outputs']),
          'left_behind': left}


def serve() -> None:
  """The fork server: imports once, then runs each JSON case read from stdin.

  It must not start JAX's backend itself (threads do not survive fork); each child
  starts its own. Answers one JSON line per case on the original stdout.
  """
  # pylint: disable=g-import-not-at-top,unused-import
  import jax
  jax.config.update('jax_num_cpu_devices', 8)
  from alexnet_jax.core import cli
  from alexnet_jax import evaluate
  from alexnet_jax import plot
  from alexnet_jax import predict
  from alexnet_jax import prepare
  from alexnet_jax import summary
  from alexnet_jax.training import trainer
  # pylint: enable=g-import-not-at-top,unused-import
  answers = os.fdopen(os.dup(1), 'w')
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)  # nothing a library prints may mix with the answers
  for line in sys.stdin:
    answers.write(json.dumps(run_one(json.loads(line), fork=True)) + '\n')
    answers.flush()


class Server:
  """A fork server in a subprocess (see `serve`)."""

  def __init__(self):
    env = dict(os.environ, PYTHONPATH=REPO)
    self._proc = subprocess.Popen(
        [sys.executable, '-c', 'from tests.fuzz import runner; runner.serve()'], cwd=REPO,
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def run(self, case: Case) -> Result:
    fields = dataclasses.asdict(case)
    if case.env:  # JAX reads the environment at import: a plain subprocess
      return Result(**run_one(fields, fork=False))
    self._proc.stdin.write(json.dumps(fields) + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the fork server ended (status {self._proc.wait()})')
    return Result(**json.loads(line))

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


# ----------------------------------------------------------------------------- properties


def violations(case: Case, result: Result) -> list[str]:
  """The properties `result` breaks, in words (empty: the case passes)."""
  found = []
  if result.status is None:
    found.append(f'no answer within {case.timeout:.0f} s')
  if TRACEBACK in result.output and case.env.get('ALEXNET_JAX_TRACEBACK') != '1':
    found.append('a traceback')
  if result.status is not None and result.status not in DOCUMENTED_STATUSES and not (
      result.status == 1 and PARSER_LINE in result.output):
    found.append(f'exit status {result.status}')
  if result.status == 2 and not any(line.startswith('error: ')
                                    for line in result.output.splitlines()):
    found.append('status 2 without an `error:` line')
  if result.changed:
    found.append(f'changed what it was not asked to: {", ".join(result.changed[:5])}')
  if result.left_behind:
    found.append(f'left processes behind: {", ".join(result.left_behind[:5])}')
  return found


def describe(case: Case, result: Result) -> str:
  """One case and what broke, for a failure message or the long profile's report."""
  tail = '\n'.join(result.output.strip().splitlines()[-12:])
  env = ' '.join(f'{k}={v}' for k, v in case.env.items())
  return (f'[{case.kind}] {case.what}\n  $ {env} {" ".join(command(case.tool)[1:])} '
          f'{" ".join(case.args)}\n  in {case.cwd}: status {result.status}, '
          f'{result.seconds:.1f} s; {"; ".join(violations(case, result))}\n{tail}')
