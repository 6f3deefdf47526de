"""One config across the processes of a run: a difference stops them all with the same line.

  agree('config', fields)    # trainer: before anything is written
  agree('dataset', fields)   # trainer: after the dataset is read

Every process's fields (JSON values) go to every process through one
collective (`multihost_utils.process_allgather`, JAX's public API), so each
compares the same data and, where a process differs from process 0, raises the
same errors.InputError line. No-op in a single-process run.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax.core import errors

# Differing fields named in the line, per process; the rest are counted.
_SHOWN = 6


def agree(what: str, fields: Mapping[str, Any]) -> None:
  """Raises errors.InputError, the same line in every process, unless `fields` are equal in
  every process to process 0's; a single process returns at once."""
  if jax.process_count() == 1:
    return
  mine = json.loads(json.dumps(dict(fields), sort_keys=True, default=str))
  everyone = [json.loads(text) for text in _allgather_text(json.dumps(mine, sort_keys=True))]
  verdict = verdict_line(what, everyone)
  if verdict:
    raise errors.InputError(verdict)


def verdict_line(what: str, everyone: list[dict[str, Any]]) -> str:
  """The line that stops a run whose processes hold `everyone` (by process id); '' if all
  equal process 0's."""
  first = everyone[0]
  differences = []
  for other, theirs in enumerate(everyone[1:], start=1):
    differing = [k for k in sorted(set(first) | set(theirs)) if first.get(k) != theirs.get(k)]
    if differing:
      shown = ', '.join(f'{k} ({_short(theirs.get(k))} vs {_short(first.get(k))})'
                        for k in differing[:_SHOWN])
      more = f' and {len(differing) - _SHOWN} more' if len(differing) > _SHOWN else ''
      differences.append(f'process {other} differs from process 0 in {shown}{more}')
  if not differences:
    return ''
  override = '--config and --config.* overrides' if what == 'config' else 'data'
  return (f'the processes of this run have different {what}s: {"; ".join(differences)}. '
          f'Start every process with the same {override}')


def _allgather_text(text: str) -> list[str]:
  """Every process's `text`, by process id: lengths first, then the bytes padded to the
  longest (a collective needs one shape everywhere)."""
  data = np.frombuffer(text.encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(row[:n]).decode() for row, n in zip(rows, lengths)]


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + '...'
