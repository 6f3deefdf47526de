"""The paper's "5 CNNs" row (Table 2): the averaged predictions of several runs over a split.

Each network's prediction of an image (the mean softmax output of its views) is
averaged over the networks, and the errors are those of the averaged prediction.
Each member is also evaluated (and cached) on its own. The runs must have been
trained on the same dataset with the same class list, and be distinct runs: the
same workdir twice (by its real path) is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.evaluation import checkpoint_eval
from alexnet_jax.evaluation import eval_cache
from alexnet_jax.evaluation import finished_run
from alexnet_jax.learning import step_fns


@dataclasses.dataclass(frozen=True)
class Ensemble:
  members: tuple[eval_cache.Evaluation, ...]  # each network alone
  result: eval_cache.Evaluation  # their averaged predictions
  probabilities: np.ndarray  # (count, num_classes) float32: the averaged predictions
  labels: np.ndarray  # (count,) int32, in the split's order


def check_ensemble(jobs: Sequence[Any]) -> None:
  """The members (EvalJobs, or anything with workdir, config and info) must have learned the
  same classes and read the same data."""
  first = jobs[0]
  where = lambda j: (j.config.data.source, os.path.realpath(j.config.data.dir))
  for job in jobs[1:]:
    if job.info.class_names != first.info.class_names:
      if job.info.num_classes != first.info.num_classes:
        what = f'{job.info.num_classes} classes but {first.workdir} on {first.info.num_classes}'
      else:
        what = f'other classes than {first.workdir}'
      raise errors.InputError(f'{job.workdir} was trained on {what}: an ensemble averages '
                              'predictions over the same classes')
    if where(job) != where(first):
      raise errors.InputError(f'{job.workdir} was trained on other data ({job.config.data.dir}) '
                              f'than {first.workdir} ({first.config.data.dir}); give --data_dir '
                              'to evaluate all of them on one dataset')


def _refuse_duplicates(workdirs: Sequence[str | os.PathLike[str]]) -> None:
  """The same run named twice would count twice in the average: one line names it."""
  seen: dict[str, str] = {}
  for workdir in map(os.fspath, workdirs):
    real = os.path.realpath(workdir)
    if real in seen:
      same = '' if seen[real] == workdir else f' (as {seen[real]})'
      raise errors.InputError(f'--workdir={workdir} is given twice{same}: an ensemble averages '
                              'distinct runs; name each once')
    seen[real] = workdir


def _load_jobs(workdirs: Sequence[str | os.PathLike[str]], step: str | int,
               crops: Optional[int], split: str,
               data_dir: Optional[str]) -> tuple[list[checkpoint_eval.EvalJob], int]:
  """The members' jobs and the one view count they are evaluated with."""
  if not workdirs:
    raise errors.InputError('give at least one --workdir')
  _refuse_duplicates(workdirs)
  step = finished_run.parse_step(step)
  check_ensemble([_member(w, data_dir) for w in workdirs])  # before any dataset is read
  loaded = [checkpoint_eval.load_job(w, step, crops, split, data_dir) for w in workdirs]
  crop_counts = sorted({c for _, c in loaded})
  if len(crop_counts) > 1:
    raise errors.InputError(f'the runs ended with different tests ({crop_counts} crops); choose '
                            'one with --crops')
  return [job for job, _ in loaded], crop_counts[0]


class _Member(NamedTuple):
  """What check_ensemble compares: a run's stored config and dataset info."""
  workdir: str
  config: ml_collections.ConfigDict
  info: Any


def _member(workdir: str | os.PathLike[str], data_dir: Optional[str]) -> _Member:
  config = finished_run.load_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  return _Member(os.fspath(workdir), config, finished_run.dataset_info(workdir, config))


def _of_average(jobs: Sequence[checkpoint_eval.EvalJob], average: np.ndarray,
                labels: np.ndarray, crops: int, split: str) -> eval_cache.Evaluation:
  """The Evaluation of the averaged predictions, by the eval step's own sums."""
  sums = jax.device_get(jax.jit(step_fns.probability_sums)(
      average, labels.astype(np.int32), np.ones(labels.shape, bool)))
  count = float(sums['count'])
  return eval_cache.Evaluation(
      workdirs=tuple(j.workdir for j in jobs), steps=tuple(j.step for j in jobs), crops=crops,
      split=split, loss=float(sums['loss_sum']) / count,
      top1_err=float(sums['top1_wrong']) / count, top5_err=float(sums['top5_wrong']) / count,
      count=int(count), mesh={})


def evaluate_ensemble(workdirs: Sequence[str | os.PathLike[str]], *,
                      step: str | int = finished_run.NEWEST, crops: Optional[int] = None,
                      split: str = 'val', data_dir: Optional[str] = None, force: bool = False,
                      devices: Optional[Sequence[jax.Device]] = None,
                      progress: Optional[bool] = None) -> Ensemble:
  """Each run alone and the average of their predictions (the paper's ensemble).

  Arguments as `checkpoint_eval.evaluate_run`; `step` applies to every run. With
  crops=None the runs must have ended with the same test. Raises errors.InputError
  when the runs learned different classes or read different datasets.
  """
  jobs, crops = _load_jobs(workdirs, step, crops, split, data_dir)
  sizes = [checkpoint_eval.split_size(job, split) for job in jobs]
  bar = checkpoint_eval.reporter(
      sum(checkpoint_eval.num_batches(j, s) for j, s in zip(jobs, sizes)), progress)
  members, summed, labels, done = [], None, None, 0
  try:
    for job in jobs:
      recompute = job.cached is None or force
      member = checkpoint_eval.SplitPass(job, crops, split, devices, bar, done)
      evaluation = member.evaluate(with_sums=recompute, with_probabilities=True)
      done = member.done
      if recompute:
        eval_cache.write_cached(job.cache_path, evaluation)
      members.append(evaluation if recompute else job.cached)
      probs = np.concatenate(member.probabilities).astype(np.float64)
      these = np.concatenate(member.labels)
      if labels is not None and not np.array_equal(these, labels):
        raise errors.InputError(f'{job.workdir} read the {split} images in another order or with '
                                f'other labels than {jobs[0].workdir}: not the same dataset')
      summed, labels = (probs if summed is None else summed + probs), these
  finally:
    bar.close()
  average = (summed / len(jobs)).astype(np.float32)
  return Ensemble(tuple(members), _of_average(jobs, average, labels, crops, split), average,
                  labels.astype(np.int32))
