"""Environments of the child processes tests start (launch.py, commands, snippets), a free port.

Every child imports this repository (PYTHONPATH) and inherits this process's environment,
whose XLA_FLAGS hold the suite's options (tests/__init__.py); a launch.py child also gets
CPU devices and the same options explicitly, so that it compiles as the test process does.
"""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from tests import XLA_TEST_FLAGS
from tests.helpers import REPO

_CACHE = {}


def subprocess_env(*, drop: tuple[str, ...] = (), **settings: str) -> dict[str, str]:
  """This process's environment with PYTHONPATH=REPO, less the variables whose names start
  with one of `drop`, with `settings` applied last."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
  env['PYTHONPATH'] = REPO
  env.update(settings)
  return env


def compile_cache_dir() -> str:
  """One persistent XLA compilation cache for the test process's launch.py runs."""
  if 'dir' not in _CACHE:
    _CACHE['dir'] = tempfile.mkdtemp(prefix='alexnet_jax_xla_cache_')
    atexit.register(shutil.rmtree, _CACHE['dir'], ignore_errors=True)
  return _CACHE['dir']


def launch_env(devices: int = 8, *, compile_cache: bool = False, **extra: str) -> dict[str, str]:
  """Environment of a launch.py subprocess: `devices` CPU devices, no SLURM variables of a
  job the tests may run in; with `compile_cache`, the shared compilation cache, so that only
  the first run compiles (a cached executable is the one compiled: results stay bitwise)."""
  settings = dict(JAX_PLATFORMS='cpu',
                  XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {XLA_TEST_FLAGS}')
  if compile_cache:
    settings.update(JAX_COMPILATION_CACHE_DIR=compile_cache_dir(),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  settings.update(extra)
  return subprocess_env(drop=('SLURM_',), **settings)


def launch(args, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python launch.py ARGS` from the repository to its end (stdout, stderr as text)."""
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
  """A localhost TCP port nothing listens on now (for a coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
