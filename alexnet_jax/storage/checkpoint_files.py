"""A checkpoint folder read without orbax: finished steps by their names, and files orbax
would choke on.

A resume is checked, and a damaged file set aside, before orbax opens the folder:
orbax renames a checkpoint to its step number only once it is complete, and it reads
`_CHECKPOINT_METADATA` and the metrics file as JSON objects when it lists the folder.
"""

from __future__ import annotations

import json
import os
from typing import Optional

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


def unreadable_open_files(directory: str) -> list[tuple[int, str, str]]:
  """(step, file, what is wrong) for each file of _OPEN_FILES in DIRECTORY's step folders
  that orbax could not read."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  found = []
  for name in sorted(names, key=lambda n: (len(n), n)):
    step_dir = os.path.join(directory, name)
    if not name.isdigit() or not os.path.isdir(step_dir):
      continue
    for relative in _OPEN_FILES:
      problem = _json_object_problem(os.path.join(step_dir, relative))
      if problem:
        found.append((int(name), os.path.join(step_dir, relative), problem))
  return found


