"""A checkpoint folder read without orbax: finished steps by their names, and files orbax
would choke on.

A resume is checked, and a damaged file set aside, before orbax opens the folder:
orbax renames a checkpoint to its step number only once it is complete, and it reads
`_CHECKPOINT_METADATA` and the metrics file as JSON objects when it lists the folder.
Orbax writes only regular files and folders; anything else in a checkpoint (a FIFO, a
socket, a device, a link that leads nowhere or in a loop) is damage, found here before
a read could block on it or end the process in tensorstore.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Iterator, Optional

from alexnet_jax.core import errors

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged'  # Inside CHECKPOINT_DIR; orbax ignores names that are not step numbers.
VAL_ERROR = 'val_error'


def finished_steps(workdir: str | os.PathLike[str]) -> list[int]:
  """Steps of the finished checkpoints in WORKDIR/checkpoints, read from the folder names alone.

  A checkpoint folder gets its step number as its name only when it is complete
  (orbax renames the temporary folder), so this needs no CheckpointManager: a
  resume can be checked before anything is opened or cleaned up.
  """
  return step_folders(os.path.join(os.fspath(workdir), CHECKPOINT_DIR))


def step_folders(folder: str) -> list[int]:
  """Steps of the finished checkpoints in the checkpoint folder `folder`, ascending."""
  try:
    names = os.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(folder, n)))


# Files of a finished checkpoint that orbax reads as JSON objects when it opens the folder.
_OPEN_FILES = ('_CHECKPOINT_METADATA', os.path.join('metrics', 'metrics'))


def _json_object_problem(path: str) -> Optional[str]:
  """Why `path` is not a JSON object orbax can read ('' if absent), or None when it is."""
  if not os.path.lexists(path):
    return None
  if not os.path.isfile(path):
    return 'is not a regular file'
  try:
    with open(path, 'rb') as f:
      value = json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
    return f'is not JSON ({errors.first_line(e, 120)})'
  if not isinstance(value, dict):
    return f'holds a JSON {type(value).__name__}, not an object'
  metric = value.get(VAL_ERROR)
  if path.endswith('metrics') and not (metric is None or isinstance(metric, (int, float))):
    return f'holds {VAL_ERROR}={metric!r}, not a number'
  return None


def _odd_entries(step_dir: str) -> Iterator[tuple[str, str]]:
  """(path, what it is) of each entry under `step_dir` that is neither a regular file nor a
  folder, links followed (one to a regular file is read as that file)."""
  for dirpath, dirnames, filenames in os.walk(step_dir):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      try:
        mode = os.stat(path).st_mode
      except OSError as e:  # a dangling link, a link loop, a folder it may not enter
        yield path, f'cannot be read ({errors.first_line(e, 120)})'
        continue
      if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ('a FIFO' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode)
                else 'a device')
        yield path, f'is {kind}, not a regular file'


def unreadable_open_files(directory: str) -> list[tuple[int, str, str]]:
  """(step, file, what is wrong) for each file of DIRECTORY's step folders that orbax could
  not read: one of _OPEN_FILES that is not the JSON object it wrote, or any entry that is
  not a regular file or folder."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  found = []
  for name in sorted(names, key=lambda n: (len(n), n)):
    step_dir = os.path.join(directory, name)
    if not name.isdigit() or not os.path.isdir(step_dir):
      continue
    odd = list(_odd_entries(step_dir))
    found += [(int(name), path, problem) for path, problem in odd]
    for relative in _OPEN_FILES:
      path = os.path.join(step_dir, relative)
      problem = None if any(p == path for p, _ in odd) else _json_object_problem(path)
      if problem:
        found.append((int(name), path, problem))
  return found
