"""grain's per-process iterator state in a checkpoint: the data position read out of it.

Checkpoints written before the trainer stored meta[DATA_POSITION] (and saves given a
`data_iterator`) hold the item `data/`: one file per process,
`process_<i>-of-<n>.json`, restorable only by as many processes. This module finds
those files and reads the global batch position out of them for any process count,
so `Checkpointer.data_position` can resume such a checkpoint elsewhere.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

from absl import logging
import jax

from alexnet_jax.core import errors

GRAIN_ITEM = 'data'  # the item of grain's per-process iterator state files


def position_from_grain_state(state: Any) -> Optional[int]:
  """Batches read, from a grain state of the train iterator; None for a shape not known.

  With threads the state is {'next_index': k}: k local batches read, and local
  batch k is this process's part of global batch k (input_pipeline.ProcessBlocks),
  so k is the global position for any process count. With W worker processes
  (mp_prefetch) worker w serves batches w, w + W, ...; its state counts the
  batches it served, and their sum is the position.
  """
  if not isinstance(state, Mapping):
    return None
  if set(state) == {'next_index'} and isinstance(state['next_index'], int):
    return state['next_index']
  workers = state.get('iterators_in_use_states')
  if isinstance(workers, list) and workers and not any(state.get('exhausted') or ()):
    counts = [position_from_grain_state(w) for w in workers]
    if None not in counts and not state.get('future_states'):
      return sum(counts)
  return None


def grain_files(step_dir: str) -> dict[tuple[int, int], str]:
  """(process index, process count) -> path of the grain state files of a checkpoint."""
  folder = os.path.join(step_dir, GRAIN_ITEM)
  try:
    names = os.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return {}
  files = {}
  for name in names:
    match = re.fullmatch(r'process_(\d+)-of-(\d+)\.json', name)
    if match:
      files[(int(match[1]), int(match[2]))] = os.path.join(folder, name)
  return files


def other_process_counts(step_dir: str) -> list[int]:
  """The process counts of the grain state files in `step_dir` when none is this run's."""
  files = grain_files(step_dir)
  if not files or (jax.process_index(), jax.process_count()) in files:
    return []
  return sorted({count for _, count in files})


def position_from_files(step_dir: str, step: int) -> Optional[int]:
  """The global batches read at checkpoint `step`, from its grain files; None, with a
  warning, when it has none or none this program can read.

  This process's file where there is one, else the first: the position is the same
  for any process count, and a warning says when it came from another count's.
  """
  files = grain_files(step_dir)
  if not files:
    logging.warning('Checkpoint at step %d stores no data position.', step)
    return None
  here = jax.process_count()
  key = (jax.process_index(), here)
  path = files.get(key) or files[min(files)]
  try:
    with open(path) as f:
      position = position_from_grain_state(json.load(f))
  except (OSError, ValueError) as e:
    logging.warning('Checkpoint at step %d: cannot read %s (%s).', step, path,
                    errors.first_line(e, 160))
    position = None
  if position is None:
    logging.warning('Checkpoint at step %d: %s holds no data position this program can '
                    'read.', step, path)
    return None
  if key not in files:
    logging.warning('Checkpoint at step %d holds the grain iterator state of %s processes '
                    '(%s); this run has %d. Only its position carries over: global batch '
                    '%d, the same for any process count (grain\'s per-process state is '
                    'not used).', step, ' or '.join(map(str, sorted({n for _, n in files}))),
                    os.path.basename(path), here, position)
  return position
