"""Evaluates trained runs on a whole split: one network, or an ensemble of several.

  python -m alexnet_jax.evaluate --workdir=runs/a [--step=newest|best|N] [--crops=1|10]
      [--split=val] [--data_dir=DIR] [--force]
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b ... [--output=FILE]

One --workdir: the checkpoint's loss, top-1 and top-5 error over the split, by
the very eval step training uses (step.eval_step through experiment.setup), so
the numbers equal the run's own evaluation of that checkpoint. The result is
written to WORKDIR/eval/<step>-<crops>crop.json (`-<split>` added for other
splits than val); asking again is answered from that file unless --force.

Several --workdir: the paper's "5 CNNs" row (Table 2). Each network's prediction
of an image (the mean softmax output of its views) is averaged over the
networks, and the errors are those of the averaged prediction. Each member is
also reported (and cached) on its own. The runs must have been trained on the
same dataset with the same class list.

--step: `newest` (default), `best` (the kept checkpoint with the lowest
validation error, as orbax stored it for the keep_best policy) or a step number;
with several runs, each resolves it itself. --crops defaults to the test the run
ended with (config.final_eval_crops). --data_dir replaces the run's config.data.dir
(the data moved, or another machine).

The step is sharded like training: over the run's own mesh (config.mesh) when
the devices here can form it, else data-parallel over as many devices as divide
the batch. It runs as one process, over that process's devices. The runs are only read:
checkpoints are opened read-only (safe beside a run still training), no workdir lock is
taken (like predict and plot) and nothing but WORKDIR/eval/ is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.training import experiment
from alexnet_jax.core import fileio
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import metric_log
from alexnet_jax import predict
from alexnet_jax.sharding import placement
from alexnet_jax.training import step_fns

EVAL_DIR = 'eval'
FORMAT = 'alexnet_jax.evaluation/1'
ENSEMBLE_FORMAT = 'alexnet_jax.ensemble_evaluation/1'
NEWEST, BEST = 'newest', 'best'
SPLITS = ('val', 'train')


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

  def to_json(self) -> dict[str, Any]:
    return {'format': FORMAT if len(self.workdirs) == 1 else ENSEMBLE_FORMAT,
            'workdirs': list(self.workdirs), 'steps': list(self.steps), 'crops': self.crops,
            'split': self.split, 'loss': self.loss, 'top1_err': self.top1_err,
            'top5_err': self.top5_err, 'count': self.count, 'mesh': self.mesh}

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


@dataclasses.dataclass(frozen=True)
class Ensemble:
  members: tuple[Evaluation, ...]  # each network alone
  result: Evaluation  # their averaged predictions
  probabilities: np.ndarray  # (count, num_classes) float32: the averaged predictions
  labels: np.ndarray  # (count,) int32, in the split's order


@dataclasses.dataclass
class _Run:
  """One run to evaluate, everything known before any computation."""
  workdir: str
  config: ml_collections.ConfigDict  # stored, resolved; data.dir replaced by --data_dir
  info: input_pipeline.DatasetInfo  # what the run trained with (its stored copy)
  step: int
  cache_path: str
  cached: Optional[Evaluation]


# ----------------------------------------------------------------------------- choosing


def parse_step(text: str | int | None) -> str | int:
  """'newest', 'best' or a step number from the --step flag."""
  if text is None:
    return NEWEST
  if isinstance(text, int) and not isinstance(text, bool):
    return text
  if text in (NEWEST, BEST):
    return text
  try:
    return int(text)
  except ValueError:
    raise errors.InputError(f"--step must be a checkpoint step, '{NEWEST}' or '{BEST}', got "
                            f'{text!r}') from None


def choose_step(workdir: str, config: ml_collections.ConfigDict, step: str | int) -> int:
  """The checkpoint step that `step` ('newest', 'best' or a number) names in WORKDIR."""
  ckpt = predict.open_checkpoints(workdir, config)
  try:
    if step == NEWEST:
      return ckpt.all_steps()[-1]
    if step == BEST:
      scored = {s: e for s, e in ckpt.val_errors().items() if e is not None}
      if not scored:
        raise errors.InputError(f'no checkpoint in {os.path.join(workdir, "checkpoints")} has a '
                                f'validation error stored (steps {ckpt.all_steps()}); use '
                                f'--step={NEWEST} or a step number')
      return min(scored, key=lambda s: (scored[s], -s))  # ties: the later step
    predict.check_step(ckpt, step, workdir)
    return step
  finally:
    ckpt.close()


def cache_path(workdir: str, step: int, crops: int, split: str) -> str:
  """WORKDIR/eval/<step>-<crops>crop.json (val) or <step>-<crops>crop-<split>.json."""
  suffix = '' if split == 'val' else f'-{split}'
  return os.path.join(workdir, EVAL_DIR, f'{step}-{crops}crop{suffix}.json')


def read_cached(path: str) -> Optional[Evaluation]:
  """The evaluation stored at `path`, or None when there is none or it is unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      d = json.load(f)
    if d.get('format') != FORMAT:
      raise ValueError(f'unknown format {d.get("format")!r}')
    return Evaluation(workdirs=tuple(d['workdirs']), steps=tuple(d['steps']), crops=d['crops'],
                      split=d['split'], loss=d['loss'], top1_err=d['top1_err'],
                      top5_err=d['top5_err'], count=d['count'], mesh=d['mesh'], cached=path)
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('Ignoring the unreadable evaluation %s (%s); evaluating again.', path, e)
    return None


def write_cached(path: str, evaluation: Evaluation) -> None:
  """Writes the evaluation to `path` atomically; a workdir that cannot be written only warns."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.atomic_write(path, lambda f: f.write(json.dumps(evaluation.to_json(), indent=1) + '\n'))
  except OSError as e:
    logging.warning('Could not write %s (%s); the result is not kept.', path, e.strerror or e)


def _load_run(workdir: str | os.PathLike[str], step: str | int, crops: Optional[int], split: str,
              data_dir: Optional[str]) -> tuple[_Run, int]:
  """The run in WORKDIR and the crops to evaluate with (default: the run's own final test)."""
  workdir = os.fspath(workdir)
  config = predict.load_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  info = predict.dataset_info(workdir, config)
  crops = config.final_eval_crops if crops is None else crops
  if crops not in (1, 10):
    raise errors.InputError(f'crops must be 1 (center) or 10 (the paper\'s test), got {crops}')
  if split not in SPLITS:
    raise errors.InputError(f'split must be one of {SPLITS}, got {split!r}')
  chosen = choose_step(workdir, config, step)
  path = cache_path(workdir, chosen, crops, split)
  return _Run(workdir, config, info, chosen, path, read_cached(path)), crops


def _split_size(run: _Run, split: str) -> int:
  """Images in the split; checks the dataset is there and holds the classes the run learned."""
  data = input_pipeline.load_info(run.config.data)  # a missing folder: one line
  if data.class_names != run.info.class_names:
    raise errors.InputError(f'the dataset in {run.config.data.dir} has other classes '
                            f'({data.num_classes}) than the run in {run.workdir} was trained on '
                            f'({run.info.num_classes})')
  if not data.split_sizes.get(split):
    raise errors.InputError(f'the dataset in {run.config.data.dir} has no {split!r} split '
                            f'(it has {sorted(data.split_sizes)})')
  return int(data.split_sizes[split])


def _check_ensemble(runs: Sequence[_Run]) -> None:
  """The members must have learned the same classes and read the same data."""
  first = runs[0]
  where = lambda r: (r.config.data.source, os.path.realpath(r.config.data.dir))
  for run in runs[1:]:
    if run.info.class_names != first.info.class_names:
      if run.info.num_classes != first.info.num_classes:
        what = f'{run.info.num_classes} classes but {first.workdir} on {first.info.num_classes}'
      else:
        what = f'other classes than {first.workdir}'
      raise errors.InputError(f'{run.workdir} was trained on {what}: an ensemble averages '
                              'predictions over the same classes')
    if where(run) != where(first):
      raise errors.InputError(f'{run.workdir} was trained on other data ({run.config.data.dir}) '
                              f'than {first.workdir} ({first.config.data.dir}); give --data_dir '
                              'to evaluate all of them on one dataset')


# ----------------------------------------------------------------------------- computing


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


def _batches(run: _Run, crops: int, split: str) -> Any:
  return input_pipeline.create_eval_iterator(run.config.data, split,
                                             global_batch_size=run.config.batch_size,
                                             crops=crops, process_index=0, process_count=1)


def _num_batches(run: _Run, size: int) -> int:
  return -(-size // run.config.batch_size)


class _Pass:
  """One network over the split: its sums (as training evaluates), its predictions if asked."""

  def __init__(self, run: _Run, crops: int, split: str, devices: Optional[Sequence[jax.Device]],
               reporter: metric_log.ProgressReporter, done: int):
    mesh = eval_mesh(run.config, devices)
    self.exp = experiment.setup(run.config, run.info, mesh=mesh)
    self.run, self.crops, self.split = run, crops, split
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

  def evaluate(self, with_sums: bool, with_probabilities: bool) -> Optional[Evaluation]:
    """Restores the checkpoint and runs the split once; returns the Evaluation if with_sums."""
    self.state, _ = predict.restore_state(self.run.workdir, self.run.config, self.run.step,
                                          self.exp.abstract_state)
    if with_probabilities:
      self._probability_step = self.exp.probability_step()
    batches = _batches(self.run, self.crops, self.split)
    if not with_sums:
      for local in batches:
        self._on_batch(local, self._global(local))
      return None
    result = self.exp.evaluate(self.exp.eval_step(), self.state, batches, on_batch=self._on_batch)
    return Evaluation(workdirs=(self.run.workdir,), steps=(self.run.step,), crops=self.crops,
                      split=self.split, loss=result['loss'], top1_err=result['top1_err'],
                      top5_err=result['top5_err'], count=int(result['count']), mesh=self.mesh)

  def _global(self, local: dict[str, np.ndarray]) -> step_fns.Batch:
    return placement.make_global_batch(local, self.exp.mesh)


def _reporter(total: int, progress: Optional[bool]) -> metric_log.ProgressReporter:
  return metric_log.ProgressReporter(total, enabled=True, progress_bar=progress)


def evaluate_run(workdir: str | os.PathLike[str], *, step: str | int = NEWEST,
                 crops: Optional[int] = None, split: str = 'val', data_dir: Optional[str] = None,
                 force: bool = False, devices: Optional[Sequence[jax.Device]] = None,
                 progress: Optional[bool] = None) -> Evaluation:
  """Loss, top-1 and top-5 error of one run's checkpoint over a split.

  step: 'newest', 'best' or a step number. crops: 1 or 10; None: the run's
  config.final_eval_crops. devices: where to run (default all). progress: draw
  a bar (None: on a terminal). The result is cached in WORKDIR/eval/ and read
  back from there unless `force`.
  """
  run, crops = _load_run(workdir, parse_step(step), crops, split, data_dir)
  if run.cached is not None and not force:
    return run.cached
  size = _split_size(run, split)
  reporter = _reporter(_num_batches(run, size), progress)
  try:
    evaluation = _Pass(run, crops, split, devices, reporter, 0).evaluate(True, False)
  finally:
    reporter.close()
  write_cached(run.cache_path, evaluation)
  return evaluation


def evaluate_ensemble(workdirs: Sequence[str | os.PathLike[str]], *, step: str | int = NEWEST,
                      crops: Optional[int] = None, split: str = 'val',
                      data_dir: Optional[str] = None, force: bool = False,
                      devices: Optional[Sequence[jax.Device]] = None,
                      progress: Optional[bool] = None) -> Ensemble:
  """Each run alone and the average of their predictions (the paper's ensemble).

  Arguments as `evaluate_run`; `step` applies to every run. With crops=None
  the runs must have ended with the same test. Raises errors.InputError when the runs
  learned different classes or read different datasets.
  """
  if not workdirs:
    raise errors.InputError('give at least one --workdir')
  step = parse_step(step)
  loaded = [_load_run(w, step, crops, split, data_dir) for w in workdirs]
  runs = [run for run, _ in loaded]
  crop_counts = sorted({c for _, c in loaded})
  if len(crop_counts) > 1:
    raise errors.InputError(f'the runs ended with different tests ({crop_counts} crops); choose '
                            'one with --crops')
  crops = crop_counts[0]
  _check_ensemble(runs)
  sizes = [_split_size(run, split) for run in runs]
  reporter = _reporter(sum(_num_batches(r, s) for r, s in zip(runs, sizes)), progress)
  members, summed, labels, done = [], None, None, 0
  try:
    for run in runs:
      recompute = run.cached is None or force
      member = _Pass(run, crops, split, devices, reporter, done)
      evaluation = member.evaluate(with_sums=recompute, with_probabilities=True)
      done = member.done
      if recompute:
        write_cached(run.cache_path, evaluation)
      members.append(evaluation if recompute else run.cached)
      probs = np.concatenate(member.probabilities).astype(np.float64)
      these = np.concatenate(member.labels)
      if labels is not None and not np.array_equal(these, labels):
        raise errors.InputError(f'{run.workdir} read the {split} images in another order or with '
                                f'other labels than {runs[0].workdir}: not the same dataset')
      summed, labels = (probs if summed is None else summed + probs), these
  finally:
    reporter.close()
  average = (summed / len(runs)).astype(np.float32)
  sums = jax.device_get(jax.jit(step_fns.probability_sums)(
      average, labels.astype(np.int32), np.ones(labels.shape, bool)))
  count = float(sums['count'])
  result = Evaluation(workdirs=tuple(r.workdir for r in runs), steps=tuple(r.step for r in runs),
                      crops=crops, split=split, loss=float(sums['loss_sum']) / count,
                      top1_err=float(sums['top1_wrong']) / count,
                      top5_err=float(sums['top5_wrong']) / count, count=int(count), mesh={})
  return Ensemble(tuple(members), result, average, labels.astype(np.int32))


# ----------------------------------------------------------------------------- command line


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_multi_string('workdir', None, 'Workdir of a training run; several: their '
                            'ensemble (averaged softmax outputs).')
  flags.DEFINE_string('step', NEWEST, f"Checkpoint: '{NEWEST}', '{BEST}' (lowest validation "
                      'error among the kept ones) or a step number.')
  flags.DEFINE_enum('crops', None, ['10', '1'], '10: the paper\'s 10-crop test; 1: center crop. '
                    'Default: the test the run ended with (config.final_eval_crops).')
  flags.DEFINE_enum('split', 'val', list(SPLITS), 'Split of the dataset to evaluate on.')
  flags.DEFINE_string('data_dir', None, 'Dataset folder; default the run\'s config.data.dir.')
  flags.DEFINE_bool('force', False, 'Evaluate again even if WORKDIR/eval/ holds the result.')
  flags.DEFINE_string('output', None, 'Also write the result (the ensemble\'s, with several '
                      '--workdir) to this JSON file.')
  flags.mark_flag_as_required('workdir')


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.start_reader()
  crops = None if FLAGS.crops is None else int(FLAGS.crops)
  options = dict(step=FLAGS.step, crops=crops, split=FLAGS.split, data_dir=FLAGS.data_dir,
                 force=FLAGS.force)
  start = time.monotonic()
  if len(FLAGS.workdir) == 1:
    result = evaluate_run(FLAGS.workdir[0], **options)
  else:
    ensemble = evaluate_ensemble(FLAGS.workdir, **options)
    for member in ensemble.members:
      print(member.line())
    result = ensemble.result
  print(result.line())
  if FLAGS.output:
    fileio.atomic_write(FLAGS.output,
                        lambda f: f.write(json.dumps(result.to_json(), indent=1) + '\n'))
  logging.info('Evaluated in %.1f s.', time.monotonic() - start)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
