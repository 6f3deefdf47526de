"""Where a run came from: one line per start in WORKDIR/run_record.jsonl.

Each start of a run (a resume too) appends the git commit of the checkout it ran from
(and whether tracked files were changed), the package's and its numerics' versions,
the platform, devices, processes, host and command line. Only process 0 writes, and
nothing is rewritten, so the file tells which code made each stretch of a run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any, Optional

import jax


RUN_RECORD = 'run_record.jsonl'
PACKAGE = 'alexnet_jax'
# Distributions whose versions decide the numbers a run computes (numerics, data order).
RECORDED_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'grain', 'orbax-checkpoint', 'numpy')


def _distribution_version(name: str) -> Optional[str]:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(folder: str, *args: str) -> Optional[str]:
  """git's output in `folder`, or None where git is absent or fails (no checkout)."""
  try:
    done = subprocess.run(['git', '-C', folder, *args], capture_output=True, text=True,
                          timeout=20, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def source_revision(package_dir: Optional[str] = None) -> Optional[dict[str, Any]]:
  """{'commit', 'dirty'} of the git checkout the package runs from; None elsewhere.

  An installed copy (site-packages) may sit inside some other repository (a
  virtual environment in a project): the package's own files must be tracked by
  the checkout for its commit to count. Dirty: tracked files differ from the
  commit (untracked files, such as runs and data, do not count).
  """
  if package_dir is None:
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if _git(package_dir, 'ls-files', '--error-unmatch', '__init__.py') is None:
    return None
  commit = _git(package_dir, 'rev-parse', 'HEAD')
  status = _git(package_dir, 'status', '--porcelain', '--untracked-files=no')
  if commit is None or status is None:
    return None
  return {'commit': commit, 'dirty': bool(status)}


def _package_version() -> Optional[str]:
  version = _distribution_version(PACKAGE) or _distribution_version(PACKAGE.replace('_', '-'))
  if version is None:
    version = getattr(sys.modules.get(PACKAGE), '__version__', None)
  return version


def run_record(step: int) -> dict[str, Any]:
  """Where this start of a run came from: code, packages, devices, host, command line."""
  now = time.time()
  devices = jax.devices()
  return {
      'time': now,
      'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)),
      'step': int(step),
      'git': source_revision(),
      'version': _package_version(),
      'packages': {name: _distribution_version(name) for name in RECORDED_PACKAGES},
      'python': platform.python_version(),
      'platform': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'host': socket.gethostname(),
      'argv': list(sys.argv),
      'cwd': os.getcwd(),
  }


def record_run(workdir: str | os.PathLike[str], step: int) -> Optional[dict[str, Any]]:
  """Appends this start's run_record to WORKDIR/run_record.jsonl and returns it (host 0).

  Every start adds a line (a resume too); none is ever rewritten. Other hosts
  write nothing and get None.
  """
  if jax.process_index() != 0:
    return None
  record = run_record(step)
  with open(os.path.join(os.fspath(workdir), RUN_RECORD), 'a') as f:
    f.write(json.dumps(record) + '\n')
  return record


def read_run_records(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """The lines of WORKDIR/run_record.jsonl, oldest first (empty for runs before it existed)."""
  path = os.path.join(os.fspath(workdir), RUN_RECORD)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # the last line of a start killed while writing it
        continue
  return records
