"""What an evaluation of a checkpoint found, and its file in WORKDIR/eval/.

An Evaluation is kept as WORKDIR/eval/<step>-<crops>crop.json (`-<split>` added
for other splits than val; `-data<digest>` added when the dataset is not the one
the run trained on) and read back instead of evaluating again. Each file
carries the identity of what produced it (`identity`): the checkpoint's files,
the dataset's fingerprint of that split, the crops and the split. A file answers
only for the same identity: one of a checkpoint since replaced by another
training, or of other data, is evaluated again; an unreadable file only warns
and is evaluated again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional

from absl import logging

from alexnet_jax.core import fileio

EVAL_DIR = 'eval'
FORMAT = 'alexnet_jax.evaluation/1'
ENSEMBLE_FORMAT = 'alexnet_jax.ensemble_evaluation/1'


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Loss and errors of one network's checkpoint (or an ensemble's) over a split."""
  workdirs: tuple[str, ...]  # one run, or the members of an ensemble
  steps: tuple[int, ...]  # the checkpoint step of each
  crops: int  # views per image: 1 (center) or 10 (the paper's test)
  split: str
  loss: float  # mean cross-entropy of the (averaged) predictions
  top1_err: float  # fractions, as in metrics.jsonl
  top5_err: float
  count: int  # images evaluated
  mesh: dict[str, int]  # the mesh each member ran on ({} for an ensemble)
  cached: Optional[str] = None  # the file this was read from; None: computed now
  identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `identity()`

  def to_json(self) -> dict[str, Any]:
    return {'format': FORMAT if len(self.workdirs) == 1 else ENSEMBLE_FORMAT,
            'workdirs': list(self.workdirs), 'steps': list(self.steps), 'crops': self.crops,
            'split': self.split, 'loss': self.loss, 'top1_err': self.top1_err,
            'top5_err': self.top5_err, 'count': self.count, 'mesh': self.mesh,
            'identity': dict(self.identity)}

  def line(self) -> str:
    """What a person reads: which network and test, then loss and errors."""
    what = '10-crop test' if self.crops == 10 else 'center crop'
    if len(self.workdirs) == 1:
      head = f'{self.workdirs[0]} step {self.steps[0]}'
    else:
      head = f'ensemble of {len(self.workdirs)}'
    source = f' (cached: {self.cached})' if self.cached else ''
    return (f'{head}, {self.split} {what}, {self.count} images: loss {self.loss:.4f}, '
            f'top-1 error {100 * self.top1_err:.2f}%, top-5 error {100 * self.top5_err:.2f}%'
            f'{source}')


def cache_path(workdir: str, step: int, crops: int, split: str,
               other_data: Optional[str] = None) -> str:
  """WORKDIR/eval/<step>-<crops>crop[-<split>][-data<digest>].json.

  split: added unless 'val'. other_data: the fingerprint digest of a dataset
  other than the run's own, so that its results never replace the run's.
  """
  suffix = '' if split == 'val' else f'-{split}'
  if other_data:
    suffix += f'-data{other_data}'
  return os.path.join(workdir, EVAL_DIR, f'{step}-{crops}crop{suffix}.json')


def checkpoint_digest(step_dir: str) -> str:
  """Digest of a checkpoint folder's file names, sizes and modification times.

  A checkpoint written again (a new training in the same workdir) has new
  times, so its digest differs; copies that keep times (cp -p, shutil.copytree)
  keep it. Nothing is read but the folder listing.
  """
  entries = []
  for dirpath, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(dirpath, name)
      stat = os.stat(path)
      entries.append(f'{os.path.relpath(path, step_dir)}\t{stat.st_size}\t{stat.st_mtime_ns}')
  return hashlib.sha256('\n'.join(sorted(entries)).encode()).hexdigest()[:16]


def identity(step: int, checkpoint: str, dataset: str, crops: int,
             split: str) -> dict[str, Any]:
  """What an evaluation depends on: checkpoint and dataset digests, crops and split."""
  return {'step': int(step), 'checkpoint': checkpoint, 'dataset': dataset, 'crops': int(crops),
          'split': split}


def read_cached(path: str, expected: Optional[Mapping[str, Any]] = None
                ) -> Optional[Evaluation]:
  """The evaluation stored at `path` for identity `expected`, else None.

  None also when the file is missing or unreadable (a warning), or was made of
  another checkpoint or dataset (an info line: it is evaluated again).
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      d = json.load(f)
    if d.get('format') != FORMAT:
      raise ValueError(f'unknown format {d.get("format")!r}')
    found = Evaluation(workdirs=tuple(d['workdirs']), steps=tuple(d['steps']), crops=d['crops'],
                       split=d['split'], loss=d['loss'], top1_err=d['top1_err'],
                       top5_err=d['top5_err'], count=d['count'], mesh=d['mesh'], cached=path,
                       identity=dict(d.get('identity') or {}))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # AttributeError:
    # JSON of another shape than an object
    logging.warning('Ignoring the unreadable evaluation %s (%s); evaluating again.', path, e)
    return None
  if expected is not None and found.identity != dict(expected):
    stale = [k for k in expected if found.identity.get(k) != expected[k]] or ['identity']
    logging.info('%s was made of another %s; evaluating again.', path, ', '.join(stale))
    return None
  return found


def write_cached(path: str, evaluation: Evaluation) -> None:
  """Writes the evaluation to `path` atomically; a workdir that cannot be written only warns."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.atomic_write(path, lambda f: f.write(json.dumps(evaluation.to_json(), indent=1) + '\n'))
  except OSError as e:
    logging.warning('Could not write %s (%s); the result is not kept.', path, e.strerror or e)
