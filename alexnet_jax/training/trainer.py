"""The training loop: `train_and_evaluate(config, workdir)`.

Read top to bottom, this file follows a run: load the config; take the
workdir's lock and check a resume (config and dataset); make the mesh; find the
data; set up the experiment (model, optimizer, shardings, steps); restore or
start; then the loop with its periodic actions (log, evaluate, checkpoint). The
lock is held in a `with` block around all of it; the checkpointer, the device
feed, the metric writer, the progress reporter and the preemption watcher live in
one `ExitStack`, so each is closed (the last save awaited, the prefetch thread
stopped, files flushed, signal handlers restored) on every way out. No
checkpoint is written of weights after a NaN loss: the losses of the steps since
the last log line are checked before each save. Each checkpoint also carries those
steps' metrics (the part of the log window not yet written), so the first train line
after a restore averages the same steps as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.storage import checkpointing
from alexnet_jax.distributed import agreement
from alexnet_jax.distributed import startup
from alexnet_jax.config import resume_changes
from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.learning import experiment
from alexnet_jax.data import dataset_info
from alexnet_jax.data import device_feed
from alexnet_jax.data import fingerprint
from alexnet_jax.data import sources
from alexnet_jax.evaluation import evaluators
from alexnet_jax.figures import run_figures
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import checkpoint_integrity
from alexnet_jax.storage import metric_log
from alexnet_jax.learning import optim
from alexnet_jax.training import init_from
from alexnet_jax.training import stop_signals
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.learning import step_fns
from alexnet_jax.storage import tracking
from alexnet_jax.storage import run_record
from alexnet_jax.storage import workdir_files


def load_dataset(config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """The dataset's facts, preparing it first (host 0) when config.data.prepare_from says so."""
  if config.data.prepare_from and jax.process_index() == 0:
    from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
    prepare.ensure_prepared(config.data.prepare_from, config.data.dir,
                            image_size=config.data.image_size, storage=config.data.storage)
  startup.sync_hosts('dataset prepared')
  info = input_pipeline.load_info(config.data)
  dataset_info.check_trainable(info, config.data.dir or config.data.source)
  return info


def _fixed_data_dir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`config` with an absolute data.dir: a relative one keeps naming the run's first folder."""
  stored_dir = None
  if (config.data.dir and not os.path.isabs(config.data.dir) and
      checkpointing.finished_steps(workdir)):  # a resume: which folder did the run start with?
    stored = (workdir_files.load_config_dict(workdir) or {}).get('data')
    stored_dir = stored.get('dir') if isinstance(stored, dict) else None
  data_dir, note = sources.absolute_data_dir(config.data.dir, stored_dir)
  if note:
    logging.warning('%s', note)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.dir = data_dir
  return config


@dataclasses.dataclass
class _TrainingSession:
  """What the loop works with; everything but the train state, which the loop threads."""
  config: ml_collections.ConfigDict
  workdir: str
  exp: experiment.Experiment
  steps_per_epoch: int
  num_steps: int
  feed: device_feed.DeviceFeed  # (data position, global batch) of each step, transferred ahead
  train_step: Callable[..., Any]
  evals: list[evaluators.CropEvaluator]  # config.evals, in their listed order
  dropout_rng: jax.Array
  plateau: optim.PlateauSchedule | None
  ckpt: checkpointing.Checkpointer
  writer: metric_log.MetricWriter
  reporter: metric_log.ProgressReporter
  preemption: stop_signals.PreemptionWatcher
  profiler: metric_log.StepProfiler


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config`, writing everything to `workdir`; returns the last eval metrics.

  Restarting with the same workdir resumes from the newest complete checkpoint,
  after checking that the config changes nothing a resume may not change
  (resume_changes.py) and that the dataset is the one the run trained on. One run
  at a time holds the workdir (workdir.hold_lock). Ctrl-C saves the current step and
  raises errors.Interrupted; SIGTERM saves it and returns.
  """
  config = resolution.load(config)
  # Every process must train the same run: a difference stops all of them here, in one line.
  agreement.agree('config', _config_fields(config))
  # A name orbax cannot keep checkpoints under is refused before anything is written.
  checkpoint_integrity.check_directory_name(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
  workdir_files.prepare_workdir(workdir)
  with workdir_files.hold_lock(workdir):  # for the run's whole life, its plots included
    mesh = experiment.create_mesh(config)  # a mesh the devices cannot form fails before the data
    config = _fixed_data_dir(config, workdir)
    accepted = workdir_files.check_resume(workdir, config)  # before anything is compiled or written
    start = _init_from_plan(config, workdir)  # a fine-tuning source, checked before the data
    info = load_dataset(config)
    agreement.agree('dataset', _dataset_fields(info))
    experiment.check_val_split(config, info)
    print_ = fingerprint.of_dataset(config.data, info)  # every split's labels, no image decoded
    workdir_files.check_dataset(workdir, info, print_)
    state, last_eval, interrupted = _train(config, workdir, mesh, info, accepted, print_, start)
    # Leaving _train waited for the last save: the checkpoints named below are complete.
    if interrupted is not None:
      raise errors.Interrupted(interrupted)
    run_figures.write_end_of_training_plots(workdir, state.params, config.model.towers)  # never raises
  if jax.process_index() == 0 and last_eval:
    summary = ', '.join(f'{k} {last_eval[k]:.4f}' for k in last_eval if k.startswith('val'))
    print(f'Finished at step {last_eval["step"]}: {summary}\n'
          f'Logs: {os.path.join(workdir, "metrics.jsonl")}, plots in {os.path.join(workdir, "plots")}, '
          f'TensorBoard: tensorboard --logdir {workdir}', flush=True)
  return last_eval


# Resolved per host from its own cores (resolution.resolve_auto): they may differ between hosts.
HOST_FIELDS = ('data.num_threads', 'data.worker_count')


def _config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved config as dotted fields, less those each host resolves for itself."""
  fields = resume_changes.flatten(config.to_dict())
  return {k: v for k, v in fields.items() if k not in HOST_FIELDS}


def _dataset_fields(info: input_pipeline.DatasetInfo) -> dict[str, Any]:
  """What each process reads of the dataset: classes, split sizes, image size, statistics."""
  def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]

  def array(values: np.ndarray) -> str:
    return digest(np.ascontiguousarray(values, np.float32).tobytes())

  return {'num_classes': info.num_classes,
          'class_names': digest('\n'.join(info.class_names).encode()),
          'split_sizes': dict(info.split_sizes), 'image_size': info.image_size,
          'mean_image': array(info.mean_image), 'eigvals': array(info.eigvals),
          'eigvecs': array(info.eigvecs)}


InitFrom = Optional[tuple[init_from.Source, init_from.LayerPlan]]


def _init_from_plan(config: ml_collections.ConfigDict, workdir: str) -> InitFrom:
  """config.init_from's checkpoint and which layers it gives; None: not set, or a resume."""
  source = init_from.find_source(config, workdir)
  return None if source is None else (source, init_from.plan_layers(source, config))


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
           info: input_pipeline.DatasetInfo, accepted: list[resume_changes.Change],
           print_: fingerprint.Fingerprint, start: InitFrom
           ) -> tuple[step_fns.TrainState, dict[str, Any], Optional[str]]:
  """Set-up, restore and the loop: (state, last eval, what to say if Ctrl-C stopped it).

  Everything the loop holds lives in one ExitStack, closed on every way out: the
  signal handlers restored, the metric files flushed, the save in flight awaited.
  """
  steps_per_epoch, num_steps = experiment.count_steps(config, info)
  exp = experiment.setup(config, info, mesh=mesh)

  is_host0 = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    # From here a signal (SIGTERM, Ctrl-C) asks for a save at the next step boundary.
    preemption = stack.enter_context(
        stop_signals.PreemptionWatcher((signal.SIGTERM, signal.SIGINT)))
    # Under the mesh, values made on the host side (the keys, the learning rate) are global
    # arrays of every process; outside it they would sit on one device of one process.
    stack.enter_context(meshes.use_mesh(mesh, exp.rules))
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    state = exp.init_state(init_rng)
    ckpt = stack.enter_context(checkpointing.Checkpointer.from_config(workdir, config.checkpoint))
    state, plateau, position, pending = _restore_or_start(ckpt, exp, state, start)
    start_step = int(state.step)
    _check_steps_left(workdir, start_step, num_steps)  # before anything is written
    _warn_if_nothing_profiled(config.log.get('profile_steps', ()), start_step, num_steps)
    feed = stack.enter_context(_start_feed(config, mesh, position))  # stopped on every way out
    # Written once the run is sure to start: a refused resume leaves the workdir as it was.
    workdir_files.record_config(workdir, config, accepted, step=start_step)
    workdir_files.save_dataset_info(workdir, info, print_)  # predict needs no data
    record = run_record.record_run(workdir, start_step)  # code, packages, devices of this start
    tracker = tracking.open_tracker(workdir, config, record) if is_host0 else None
    writer = stack.enter_context(  # closes the tracker too
        metric_log.MetricWriter(workdir, enabled=is_host0, tensorboard=config.log.tensorboard,
                                tracker=tracker))
    writer.truncate_after(start_step)
    reporter = metric_log.ProgressReporter(
        num_steps, start_step=start_step,
        steps_per_epoch=steps_per_epoch, enabled=is_host0,
        progress_bar=None if config.log.progress else False)
    stack.callback(reporter.close)
    profiler = metric_log.StepProfiler(workdir, config.log.get('profile_steps', ()),
                                        enabled=is_host0)
    stack.callback(profiler.close)
    run = _TrainingSession(
        config=config, workdir=workdir, exp=exp, steps_per_epoch=steps_per_epoch,
        num_steps=num_steps, feed=feed, train_step=exp.train_step(),
        evals=evaluators.build(config, exp, exp.eval_step(), placement.data_shard(mesh)),
        dropout_rng=jax.device_put(dropout_rng, placement.replicated(mesh)),
        plateau=plateau, ckpt=ckpt, writer=writer, reporter=reporter,
        preemption=preemption, profiler=profiler)
    state, last_eval, stopped = _loop(run, _with_start_lr(run, state, start_step), start_step,
                                      pending)
    interrupted = None
    if stopped is not None and preemption.interrupted:
      interrupted = _interrupted_message(run, stopped, start_step)
  return state, last_eval, interrupted


def _check_steps_left(workdir: str, start_step: int, num_steps: int) -> None:
  """Refuses a resume whose checkpoint is past the run's end as its config now sets it.

  Continuing would train nothing yet record the shorter length as the run's
  config; the checkpoint's step is kept and the config left as it was.
  """
  if start_step > num_steps:
    raise errors.InputError(
        f'the run in {workdir} is at step {start_step}, past the {num_steps} steps its config '
        'now asks for (num_train_steps or num_epochs): a run cannot be shortened below its '
        'checkpoints; resume it with its own length, or start a new run in another --workdir')


def _warn_if_nothing_profiled(window: tuple[int, ...], start_step: int, num_steps: int) -> None:
  """One warning when log.profile_steps lies outside the steps this start will run."""
  if not window:
    return
  start, stop = window
  if start > num_steps:
    logging.warning('log.profile_steps (%d, %d) starts after the run\'s last step %d: nothing '
                    'is profiled.', start, stop, num_steps)
  elif stop - 1 <= start_step:
    logging.warning('log.profile_steps (%d, %d) ends before step %d, where this run resumes: '
                    'nothing is profiled.', start, stop, start_step + 1)


def _interrupted_message(run: _TrainingSession, stopped: int, start_step: int) -> str:
  folder = run.ckpt.directory
  if stopped > start_step:
    return (f'Ctrl-C at step {stopped}: saved the checkpoint of step {stopped} in {folder}; '
            'rerun the same command to resume from it')
  newest = run.ckpt.latest_step()
  kept = f'the newest checkpoint is step {newest}' if newest is not None else 'no checkpoint yet'
  return (f'Ctrl-C before the first step: nothing new to save ({kept} in {folder}); rerun the '
          'same command to resume')


def _restore_or_start(ckpt: checkpointing.Checkpointer, exp: experiment.Experiment,
                      state: step_fns.TrainState, start: InitFrom
                      ) -> tuple[step_fns.TrainState, optim.PlateauSchedule | None, int,
                                 list[dict[str, Any]]]:
  """The newest readable checkpoint, else a fresh start: (state, plateau, data position,
  the metrics of its steps not yet logged). A fresh start takes config.init_from's
  parameters where it names a run (also when every checkpoint of this one was unusable
  and moved aside, so that `start` found none to resume).

  The data position is the global batches already read, the same number for any
  process count (docs/checkpoints.md).
  """
  restored = ckpt.restore(exp.abstract_state)
  if restored is None:
    start = start or _init_from_plan(exp.config, os.path.dirname(ckpt.directory))
    if start is not None:
      state = init_from.start_from(*start, exp, state)
    return state, optim.make_plateau(exp.config.optim), 0, []
  state, meta = restored
  step = int(state.step)
  position = ckpt.data_position(step, meta)
  if position is None:
    # Every run reads one batch per step from batch 0, so the step is the position.
    logging.warning('Continuing at global batch %d (one batch per step).', step)
    position = step
  logging.info('Resumed from step %d.', step)
  logging.info('The data continues at global batch %d.', position)
  return (state, optim.make_plateau(exp.config.optim, meta.get('plateau')), int(position),
          _unlogged_from_meta(meta))


# Checkpoint meta key: {metric: [value of each step since the last train line]}.
UNLOGGED_METRICS = 'unlogged_metrics'


def _unlogged_to_meta(pending: list[dict[str, jax.Array]]) -> dict[str, list[float]]:
  """The per-step metrics not yet logged, as JSON: float32 values survive exactly."""
  if not pending:
    return {}
  values = jax.device_get(pending)
  return {k: [float(step[k]) for step in values] for k in values[0]}


def _unlogged_from_meta(meta: dict[str, Any]) -> list[dict[str, Any]]:
  """The steps `_unlogged_to_meta` stored, as the loop's pending list (float32 scalars).

  A checkpoint written before the field existed has none: its first line after a
  restore then averages only the steps since.
  """
  stored = meta.get(UNLOGGED_METRICS) or {}
  count = len(next(iter(stored.values()), []))
  return [{k: np.float32(v[i]) for k, v in stored.items()} for i in range(count)]


def _start_feed(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                position: int) -> device_feed.DeviceFeed:
  """The train batches from global batch `position` on, data.device_prefetch of them ahead."""
  shard_index, shard_count = placement.data_shard(mesh)
  batches = input_pipeline.create_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      process_index=shard_index, process_count=shard_count, start=position)
  return device_feed.DeviceFeed(batches, lambda local: placement.make_global_batch(local, mesh),
                             start=position, depth=config.data.device_prefetch)


# ----------------------------------------------------------------------------- the loop


def _loop(run: _TrainingSession, state: step_fns.TrainState, start_step: int,
          pending: list[dict[str, Any]]
          ) -> tuple[step_fns.TrainState, dict[str, Any], Optional[int]]:
  """Steps from start_step to the end, or to a stop signal.

  `pending` holds the metrics of the steps before start_step that no train line
  has averaged yet (restored with the checkpoint).

  Returns the state, the last eval metrics and the step at which a signal stopped
  the run (None when it ran to the end); that step's checkpoint has been started.
  """
  config, spe = run.config, run.steps_per_epoch
  last_eval: dict[str, Any] = {}
  if start_step >= run.num_steps:
    evals = [r for r in metric_log.read_metrics(run.workdir) if r['kind'] == 'eval']
    if not evals or evals[-1]['step'] != start_step:
      # Saved at the end but its final evaluation failed (a damaged val shard): do it now.
      logging.info('Evaluating the last step %d, whose final evaluation is missing.', start_step)
      return state, _evaluate_and_log(run, state, start_step, final=True), None
    logging.info('The run in %s already finished at step %d.', run.workdir, start_step)
    return state, evals[-1], None
  if run.preemption.requested():  # a signal during set-up: the state is the restored one
    logging.warning('Stop signal received before the first step: nothing new to save; '
                    'exiting.')
    return state, last_eval, start_step
  logging.info('Training %d steps (%d per epoch, global batch %d) from step %d.', run.num_steps,
               spe, config.batch_size, start_step)
  pending = list(pending)  # metrics of the steps not yet logged or checked
  timer = (time.perf_counter(), start_step)
  for step in range(start_step + 1, run.num_steps + 1):
    run.profiler.before_step(step)  # the trace includes waiting for the batch
    _, batch = next(run.feed)
    state, metrics = run.train_step(state, batch, run.dropout_rng)
    run.profiler.after_step(step, state)
    pending.append(metrics)
    epoch, epoch_end, last = step // spe, step % spe == 0, step == run.num_steps
    if step % config.log.every_steps == 0 or epoch_end or last:
      timer = _log_train(run, step, pending, timer)
      pending = []
    if (epoch_end and epoch % config.eval_every_epochs == 0) or last:
      last_eval = _final_or_due_evaluation(run, state, step, pending, final=last)
      if run.plateau is not None:
        state = _with_lr(run, state, run.plateau.update(last_eval['val_top1_err']))
      _save(run, state, step, pending, val_error=last_eval['val_top1_err'], force=True)
    else:
      _save(run, state, step, pending, force=epoch_end)  # unforced: orbax saves every_steps
    if epoch_end and config.optim.schedule == 'step':
      state = _with_lr(run, state, optim.learning_rate_at(config.optim, epoch))
    if run.preemption.requested(step):
      _save(run, state, step, pending, force=True)
      if not run.preemption.interrupted:
        logging.warning('Preemption signal received: saved step %d; exiting.', step)
      return state, last_eval, step
  return state, last_eval, None


def _stop_if_diverged(run: _TrainingSession, pending: list[dict[str, jax.Array]],
                      step: int) -> None:
  """Raises NonFiniteError at the first NaN or infinite loss among the pending steps.

  The steps pending end at `step`. Waits first for the save in flight, of an
  earlier step whose losses were checked, so the checkpoint the message names is
  complete.
  """
  if not pending:
    return
  losses = np.asarray(jax.device_get([m['loss'] for m in pending]), np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if not bad.size:
    return
  run.ckpt.wait()
  first = step - len(pending) + 1 + int(bad[0])
  metric_log.check_finite(losses[bad[0]], first, last_checkpoint_step=run.ckpt.latest_step())


def _log_train(run: _TrainingSession, step: int, pending: list[dict[str, jax.Array]],
               timer: tuple[float, int]) -> tuple[float, int]:
  """Writes the mean of the pending step metrics; stops on a non-finite loss."""
  _stop_if_diverged(run, pending, step)
  # Summed in float64 (a float32 mean of 20 equal rates of 0.01 is 0.010000001), then kept
  # float32, so that metrics.jsonl writes the shortest decimal of the float32 value.
  summary = {k: np.float32(np.mean(v, dtype=np.float64)) for k, v in jax.device_get(
      jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
  now, (last_time, last_step) = time.perf_counter(), timer
  summary['images_per_sec'] = round((step - last_step) * run.config.batch_size / (now - last_time),
                                    1)
  summary['epoch'] = step / run.steps_per_epoch
  run.writer.write({'step': step, 'kind': 'train', **summary})
  run.reporter.update(step, summary)
  return now, step


def _final_or_due_evaluation(run: _TrainingSession, state: step_fns.TrainState, step: int,
                             pending: list[dict[str, jax.Array]], final: bool
                             ) -> dict[str, Any]:
  """`_evaluate_and_log`; a final evaluation that fails first saves the last step.

  A user error there (a damaged or missing val shard) would otherwise lose every step
  since the last checkpoint; a rerun then finds the last step saved and evaluates it.
  """
  try:
    return _evaluate_and_log(run, state, step, final)
  except errors.UserError:
    if final:
      _save(run, state, step, pending, force=True)
    raise


def _evaluate_and_log(run: _TrainingSession, state: step_fns.TrainState, step: int,
                      final: bool) -> dict[str, Any]:
  """The evaluations of config.evals due at this step (the 'final' ones at the end), logged."""
  record: dict[str, Any] = {'step': step, 'kind': 'eval', 'epoch': step / run.steps_per_epoch}
  for evaluator in evaluators.due(run.evals, final):
    record.update(evaluator.run(state))
  record = run.writer.write(record)  # now with its wall-clock time, as in metrics.jsonl
  run.reporter.log_eval(step, record)
  return record


def _save(run: _TrainingSession, state: step_fns.TrainState, step: int,
          pending: list[dict[str, jax.Array]], val_error: float | None = None,
          force: bool = False) -> None:
  """Starts the checkpoint of `step` if one is due; never one of weights after a NaN loss."""
  if not run.ckpt.will_save(step, force):
    return
  _stop_if_diverged(run, pending, step)  # the steps not yet logged: checked before they are kept
  meta = {'step': step, 'epoch': step / run.steps_per_epoch,
          'plateau': run.plateau.state_dict() if run.plateau else None,
          # Of the batches this step consumed, not of those the feed read ahead.
          checkpointing.DATA_POSITION: run.feed.position,
          checkpointing.PROCESS_COUNT: jax.process_count(),
          # The log window so far: a restore continues it instead of starting a shorter one.
          UNLOGGED_METRICS: _unlogged_to_meta(pending)}
  run.ckpt.save(step, state, meta=meta, val_error=val_error, force=force)


def _with_lr(run: _TrainingSession, state: step_fns.TrainState, lr: float) -> step_fns.TrainState:
  """The state with the learning rate the next update uses set to `lr`, sharded as before."""
  return jax.device_put(state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr)),
                        run.exp.state_shardings)


def _with_start_lr(run: _TrainingSession, state: step_fns.TrainState,
                   start_step: int) -> step_fns.TrainState:
  """The schedule's rate at the start (a resume may continue under a changed config)."""
  if run.config.optim.schedule != 'plateau':
    return _with_lr(run, state, optim.learning_rate_at(run.config.optim,
                                                       start_step / run.steps_per_epoch))
  return _with_lr(run, state, run.plateau.lr) if run.plateau is not None else state
