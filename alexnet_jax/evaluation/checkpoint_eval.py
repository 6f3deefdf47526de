"""One run's checkpoint over a whole split, by the evaluator the training loop uses.

  evaluation = checkpoint_eval.evaluate_run('runs/a', step='best', crops=10)

The checkpoint is restored onto the run's own mesh (config.mesh) when the
devices here can form it, else data-parallel over as many devices as divide the
batch, and evaluated by evaluators.for_crops: the same eval step and batches as
the run's own evaluation, so the numbers equal those in its metrics.jsonl. The
result is cached in WORKDIR/eval/ (eval_cache.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax.config import eval_schema
from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.evaluation import eval_cache
from alexnet_jax.evaluation import evaluators
from alexnet_jax.evaluation import finished_run
from alexnet_jax.sharding import placement
from alexnet_jax.storage import metric_log
from alexnet_jax.learning import experiment
from alexnet_jax.learning import step_fns


@dataclasses.dataclass
class EvalJob:
  """One checkpoint to evaluate, everything known before any computation."""
  workdir: str
  config: ml_collections.ConfigDict  # stored, resolved; data.dir replaced by --data_dir
  info: input_pipeline.DatasetInfo  # what the run trained with (its stored copy)
  step: int
  cache_path: str
  cached: Optional[eval_cache.Evaluation]


def load_job(workdir: str | os.PathLike[str], step: str | int, crops: Optional[int], split: str,
             data_dir: Optional[str]) -> tuple[EvalJob, int]:
  """The job for the run in WORKDIR and the crops to evaluate with (default: its final test)."""
  workdir = os.fspath(workdir)
  config = finished_run.load_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  info = finished_run.dataset_info(workdir, config)
  crops = config.final_eval_crops if crops is None else crops
  eval_schema.kind_for_crops(crops)  # 1 or 10
  if split not in eval_schema.SPLITS:
    raise errors.InputError(f'split must be one of {eval_schema.SPLITS}, got {split!r}')
  chosen = finished_run.choose_step(workdir, config, step)
  path = eval_cache.cache_path(workdir, chosen, crops, split)
  return EvalJob(workdir, config, info, chosen, path, eval_cache.read_cached(path)), crops


def split_size(job: EvalJob, split: str) -> int:
  """Images in the split; checks the dataset is there and holds the classes the run learned."""
  data = input_pipeline.load_info(job.config.data)  # a missing folder: one line
  if data.class_names != job.info.class_names:
    raise errors.InputError(f'the dataset in {job.config.data.dir} has other classes '
                            f'({data.num_classes}) than the run in {job.workdir} was trained on '
                            f'({job.info.num_classes})')
  if not data.split_sizes.get(split):
    raise errors.InputError(f'the dataset in {job.config.data.dir} has no {split!r} split '
                            f'(it has {sorted(data.split_sizes)})')
  return int(data.split_sizes[split])


def num_batches(job: EvalJob, size: int) -> int:
  return -(-size // job.config.batch_size)


def eval_mesh(config: ml_collections.ConfigDict,
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """The run's own mesh (config.mesh) over `devices` when it fits them, else data-parallel.

  Data-parallel: over the largest number of the devices that divides the batch,
  so every device gets the same share of each eval batch.
  """
  devices = list(jax.devices() if devices is None else devices)
  try:
    return experiment.create_mesh(config, devices)
  except errors.InputError as e:
    count = max(n for n in range(1, len(devices) + 1) if config.batch_size % n == 0)
    logging.info('The run\'s mesh does not fit here (%s); data-parallel over %d devices.', e,
                 count)
    return experiment.create_mesh(config, devices[:count], {'data': count, 'model': 1})


class SplitPass:
  """One network over the split: its sums (as training evaluates), its predictions if asked."""

  def __init__(self, job: EvalJob, crops: int, split: str,
               devices: Optional[Sequence[jax.Device]], reporter: metric_log.ProgressReporter,
               done: int):
    self.exp = experiment.setup(job.config, job.info, mesh=eval_mesh(job.config, devices))
    self.evaluator = evaluators.for_crops(crops, split, self.exp, self.exp.eval_step())
    self.job, self.crops, self.split = job, crops, split
    self.reporter, self.done = reporter, done
    self.probabilities: list[np.ndarray] = []
    self.labels: list[np.ndarray] = []
    self._probability_step = None

  @property
  def mesh(self) -> dict[str, int]:
    return {name: int(size) for name, size in self.exp.mesh.shape.items()}

  def _on_batch(self, local: dict[str, np.ndarray], batch: step_fns.Batch) -> None:
    if self._probability_step is not None:
      probs = np.asarray(jax.device_get(self._probability_step(self.state, batch)))
      mask = np.asarray(local['mask'], bool)
      self.probabilities.append(probs[mask])
      self.labels.append(np.asarray(local['label'])[mask])
    self.done += 1
    self.reporter.update(self.done)

  def evaluate(self, with_sums: bool,
               with_probabilities: bool) -> Optional[eval_cache.Evaluation]:
    """Restores the checkpoint and runs the split once; returns the Evaluation if with_sums."""
    self.state, _ = finished_run.restore_state(self.job.workdir, self.job.config, self.job.step,
                                               self.exp.abstract_state)
    if with_probabilities:
      self._probability_step = self.exp.probability_step()
    if not with_sums:
      for local in self.evaluator.batches():
        self._on_batch(local, placement.make_global_batch(local, self.exp.mesh))
      return None
    result = self.evaluator.measure(self.state, on_batch=self._on_batch)
    return eval_cache.Evaluation(
        workdirs=(self.job.workdir,), steps=(self.job.step,), crops=self.crops, split=self.split,
        loss=result['loss'], top1_err=result['top1_err'], top5_err=result['top5_err'],
        count=int(result['count']), mesh=self.mesh)


def reporter(total: int, progress: Optional[bool]) -> metric_log.ProgressReporter:
  return metric_log.ProgressReporter(total, enabled=True, progress_bar=progress)


def evaluate_run(workdir: str | os.PathLike[str], *, step: str | int = finished_run.NEWEST,
                 crops: Optional[int] = None, split: str = 'val', data_dir: Optional[str] = None,
                 force: bool = False, devices: Optional[Sequence[jax.Device]] = None,
                 progress: Optional[bool] = None) -> eval_cache.Evaluation:
  """Loss, top-1 and top-5 error of one run's checkpoint over a split.

  step: 'newest', 'best' or a step number. crops: 1 or 10; None: the run's
  config.final_eval_crops. devices: where to run (default all). progress: draw
  a bar (None: on a terminal). The result is cached in WORKDIR/eval/ and read
  back from there unless `force`.
  """
  job, crops = load_job(workdir, finished_run.parse_step(step), crops, split, data_dir)
  if job.cached is not None and not force:
    return job.cached
  size = split_size(job, split)
  bar = reporter(num_batches(job, size), progress)
  try:
    evaluation = SplitPass(job, crops, split, devices, bar, 0).evaluate(True, False)
  finally:
    bar.close()
  eval_cache.write_cached(job.cache_path, evaluation)
  return evaluation
