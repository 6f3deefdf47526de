"""One run's checkpoint over a whole split, by the evaluator the training loop uses.

  evaluation = checkpoint_eval.evaluate_run('runs/a', step='best', crops=10)

The checkpoint is restored onto the run's own mesh (config.mesh) when the
devices here can form it, else data-parallel over as many devices as divide the
batch, and evaluated by evaluators.for_crops: the same eval step and batches as
the run's own evaluation, so the numbers equal those in its metrics.jsonl. The
result is cached in WORKDIR/eval/ (eval_cache.py) under the identity of what
produced it: the checkpoint's files, the dataset's fingerprint of the split
(data/fingerprint.py), the crops and the split. A dataset other than the one the
run recorded (--data_dir) is named in one warning line that says what differs,
and its results are kept in their own files.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax.config import eval_schema
from alexnet_jax.core import errors
from alexnet_jax.data import fingerprint
from alexnet_jax.data import input_pipeline
from alexnet_jax.evaluation import eval_cache
from alexnet_jax.evaluation import evaluators
from alexnet_jax.evaluation import finished_run
from alexnet_jax.sharding import placement
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import metric_log
from alexnet_jax.storage import workdir_files
from alexnet_jax.learning import experiment
from alexnet_jax.learning import step_fns


@dataclasses.dataclass
class EvalJob:
  """One checkpoint to evaluate, everything known before any computation."""
  workdir: str
  config: ml_collections.ConfigDict  # stored, resolved; data.dir replaced by --data_dir
  info: input_pipeline.DatasetInfo  # what the run trained with (its stored copy)
  data: input_pipeline.DatasetInfo  # the dataset evaluated on, as it is now
  step: int
  cache_path: str
  identity: dict[str, Any]  # eval_cache.identity of this evaluation
  cached: Optional[eval_cache.Evaluation]


def load_job(workdir: str | os.PathLike[str], step: str | int, crops: Optional[int], split: str,
             data_dir: Optional[str]) -> tuple[EvalJob, int]:
  """The job for the run in WORKDIR and the crops to evaluate with (default: its final test).

  Reads the dataset's description and the split's labels (no image) to know
  which cached result may answer.
  """
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
  data = _check_data(workdir, config, info, split)
  print_ = fingerprint.of_dataset(config.data, data, splits=(split,)).for_split(split)
  other = _other_data(workdir, config, print_, split, bool(data_dir))
  path = eval_cache.cache_path(workdir, chosen, crops, split, other)
  step_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(chosen))
  identity = eval_cache.identity(chosen, eval_cache.checkpoint_digest(step_dir), print_.digest,
                                 crops, split)
  job = EvalJob(workdir, config, info, data, chosen, path, identity,
                eval_cache.read_cached(path, identity))
  return job, crops


def _check_data(workdir: str, config: ml_collections.ConfigDict,
                info: input_pipeline.DatasetInfo, split: str) -> input_pipeline.DatasetInfo:
  """The dataset's facts; it must be there and hold the classes the run learned."""
  data = input_pipeline.load_info(config.data)  # a missing folder: one line
  if data.class_names != info.class_names:
    raise errors.InputError(f'the dataset in {config.data.dir} has other classes '
                            f'({data.num_classes}) than the run in {workdir} was trained on '
                            f'({info.num_classes})')
  if not data.split_sizes.get(split):
    raise errors.InputError(f'the dataset in {config.data.dir} has no {split!r} split '
                            f'(it has {sorted(data.split_sizes)})')
  return data


def _other_data(workdir: str, config: ml_collections.ConfigDict,
                print_: fingerprint.Fingerprint, split: str, moved: bool) -> Optional[str]:
  """None for the run's own dataset, else the evaluated one's digest (a warning says why).

  A run made before fingerprints were recorded counts its config.data.dir as
  its own dataset, and any --data_dir as another.
  """
  stored = workdir_files.load_fingerprint(workdir)
  if stored is None:
    return print_.digest if moved else None
  differences = fingerprint.differences(stored.for_split(split), print_)
  if not differences:
    return None
  logging.warning('Evaluating %s on another dataset than it trained on (%s: %s); its result '
                  'is kept apart from the run\'s own.', workdir, config.data.dir,
                  ', '.join(differences))
  return print_.digest


def split_size(job: EvalJob, split: str) -> int:
  """Images in the split (load_job checked the dataset has them)."""
  return int(job.data.split_sizes[split])


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
        count=int(result['count']), mesh=self.mesh, identity=self.job.identity)


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
  back from there unless `force`, when it was made of the same checkpoint files,
  dataset, crops and split; results on another dataset have their own files.
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
