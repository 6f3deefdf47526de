"""Checkpoints of a run: the only module that imports orbax.

A checkpoint of step N is the folder `WORKDIR/checkpoints/N/` with three items
(docs/checkpoints.md shows the files and how to read them with orbax alone):

  state/  the train state pytree (step, params, opt_state), each array written
          by the devices that hold it and read back straight into the target
          sharding;
  meta/   a JSON dict the trainer chooses (step, epoch, plateau schedule state)
          and, under DATA_POSITION, the global batches the train iterator had
          read: one number for every process count, so a run resumes with
          another number of processes on the same global batch sequence.
  checksums/  a checksum of every array of state/ (checkpoint_integrity),
          compared by every restore: a difference is damage like a truncated file.

Checkpoints written before DATA_POSITION existed (and saves given a
`data_iterator`) hold one more item, `data/`: grain's iterator state, one file
per process, `process_<i>-of-<n>.json`. `data_position` reads the position out
of those files for any process count (`grain_state`).

Saves are asynchronous: `save` returns once the arrays are copied off the
devices (their buffers may then be donated), and the files are written in the
background into a temporary folder that is renamed when complete. A killed
process therefore leaves either a finished checkpoint or a temporary folder
that is ignored. A finished checkpoint that was damaged afterwards (a truncated
or deleted file) fails to read; `restore` then falls back to the previous one
and moves the damaged folder to `checkpoints/damaged/` so that its step number
can be saved again.

The first save of a Checkpointer is read back before `save` returns, and a
writer refuses a folder whose path orbax would take for a glob pattern.

Cadence: orbax's FixedIntervalPolicy decides which unforced saves are written
(multiples of `every_steps`). Retention: the newest `keep` checkpoints plus,
with `keep_best`, the one with the lowest validation error (orbax's LatestN and
BestN preservation policies). docs/design.md, "Checkpoints and preemption",
says why preemption is handled by the trainer rather than by an orbax policy.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.storage import checkpoint_failures
from alexnet_jax.storage import checkpoint_files
from alexnet_jax.storage import checkpoint_integrity
from alexnet_jax.storage import grain_state

CHECKPOINT_DIR = checkpoint_files.CHECKPOINT_DIR
DAMAGED_DIR = checkpoint_files.DAMAGED_DIR
finished_steps = checkpoint_files.finished_steps
# Name under which orbax stores the per-checkpoint metrics that BestN ranks.
VAL_ERROR = checkpoint_files.VAL_ERROR
# meta keys: the global batches the train iterator had read, and the processes that saved.
DATA_POSITION = 'data_position'
PROCESS_COUNT = 'process_count'
# The item holding {array path: checksum} of `state` (checkpoint_integrity), checked by restore.
CHECKSUMS_ITEM = 'checksums'
CheckpointError = checkpoint_failures.CheckpointError
CheckpointWriteError = checkpoint_failures.CheckpointWriteError


def _rank_val_error(metrics: Mapping[str, Any]) -> float:
  # Saves without an evaluation carry val_error=None; they rank last.
  value = metrics.get(VAL_ERROR)
  return float('inf') if value is None else float(value)


def _is_primary() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _abstract_leaf(x: Any) -> Any:
  """A restore target for one leaf of a saved state: its shape, dtype and placement."""
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x


class Checkpointer:
  """Saves and restores train state, run metadata and the data iterator.

  Usage in a trainer:

    with Checkpointer.from_config(workdir, config.checkpoint) as ckpt:
      restored = ckpt.restore(abstract_state, data_iterator=it)
      ...
      ckpt.save(step, state, data_iterator=it, meta={...}, force=epoch_end or preempted)
    # leaving the block waits for the last save

  All hosts call every method; each writes its own shards and iterator state.
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3,
               keep_best: bool = True, every_steps: Optional[int] = None,
               async_save: bool = True, start_fresh_if_unusable: bool = False,
               read_only: bool = False):
    """Opens (creating it if needed) the checkpoint folder `directory`.

    keep: how many of the newest checkpoints to keep (>= 1).
    keep_best: also keep the checkpoint with the lowest `val_error` given to save.
    every_steps: `save` without `force` writes only at multiples of this (orbax's
      FixedIntervalPolicy); None: always.
    async_save: write files in a background thread.
    start_fresh_if_unusable: restore's default when no checkpoint is readable.
    read_only: for readers beside a live run (predict, plot): never deletes orbax's
      temporary folders (a save in flight), never moves damaged checkpoints, never saves.
    """
    resolution.check_checkpoint_config({'every_steps': 1 if every_steps is None else every_steps,
                             'keep': keep})
    self._directory = os.path.abspath(os.fspath(directory))
    if not read_only:
      checkpoint_integrity.check_directory_name(self._directory)
    self._keep_best = bool(keep_best)
    self._start_fresh_if_unusable = bool(start_fresh_if_unusable)
    self._read_only = bool(read_only)
    policies = [checkpoint_managers.LatestN(n=keep)]
    if self._keep_best:
      # reverse=True sorts by descending error, and BestN keeps the tail: the lowest.
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=_rank_val_error, reverse=True, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax store the metrics with each checkpoint, so the best
        # one is still known after a restart; the policy above does the ranking.
        best_fn=_rank_val_error if self._keep_best else None,
        best_mode='min',
        save_decision_policy=checkpoint_managers.FixedIntervalPolicy(every_steps or 1),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=read_only,
        # What orbax would set itself for a reader, with a warning on every open.
        **({'save_interval_steps': 0} if read_only else {}),
    )
    self._set_aside_unreadable_files()
    self._manager = ocp.CheckpointManager(self._directory, options=options)
    self._writing: Optional[int] = None  # Step of the save in flight, if any.
    # The first save of this Checkpointer is read back and compared before save returns.
    self._read_back_done = read_only

  def _set_aside_unreadable_files(self) -> None:
    """Moves checkpoints whose files orbax reads on opening are unreadable to damaged/.

    Orbax reads every checkpoint's metrics and metadata files when it opens the
    folder and stops at the first that is not the JSON it wrote, so one damaged file
    would keep every checkpoint from being read. A reader (read_only) moves nothing:
    it refuses in one line naming the file.
    """
    bad = checkpoint_files.unreadable_open_files(self._directory)
    if bad and self._read_only:
      step, path, reason = bad[0]
      raise CheckpointError(
          f'checkpoint {self.step_path(step)} is damaged: {path} {reason}; resume the run '
          '(launch.py with its --workdir) to move it to '
          f'{os.path.join(self._directory, DAMAGED_DIR)} and go on from the one before it')
    _sync('alexnet_jax_checkpoint_scan')  # every process has looked before any moves
    if bad:
      moved = self._move_aside(sorted({step for step, _, _ in bad}))
      for step, path, reason in bad:
        logging.warning('Checkpoint at step %d is damaged (%s %s); moved to %s.', step, path,
                        reason, ', '.join(moved))

  @classmethod
  def from_config(cls, workdir: str | os.PathLike[str], checkpoint_config: Any,
                  **kwargs: Any) -> 'Checkpointer':
    """A Checkpointer for WORKDIR/checkpoints configured by config.checkpoint.

    Reads keep, keep_best, every_steps and start_fresh_if_unusable; `kwargs`
    override them (or set async_save).
    """
    every = checkpoint_config.get('every_steps', None)
    settings = dict(
        keep=checkpoint_config.get('keep', 3),
        keep_best=checkpoint_config.get('keep_best', True),
        every_steps=every if every and every > 0 else None,
        start_fresh_if_unusable=checkpoint_config.get('start_fresh_if_unusable', False))
    settings.update(kwargs)
    return cls(os.path.join(os.fspath(workdir), CHECKPOINT_DIR), **settings)

  @property
  def directory(self) -> str:
    return self._directory

  def step_path(self, step: int) -> str:
    """The folder of the checkpoint of `step`."""
    return os.path.join(self._directory, str(step))

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def val_errors(self) -> dict[int, Optional[float]]:
    """Step -> the validation error stored with that finished checkpoint (None: saved without).

    Orbax keeps these beside each checkpoint for the keep_best policy; reading them
    changes nothing. Runs with keep_best=False store none.
    """
    errors_by_step = {}
    for step in self.all_steps():
      try:
        metrics = self._manager.metrics(step) if self._keep_best else None
      except (OSError, ValueError):
        if not os.path.isdir(self.step_path(step)):
          continue  # deleted since it was listed, by the run that writes these checkpoints
        raise
      value = metrics.get(VAL_ERROR) if isinstance(metrics, Mapping) else None
      errors_by_step[step] = None if value is None else float(value)
    return errors_by_step

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def will_save(self, step: int, force: bool = False) -> bool:
    """Whether `save(step, ..., force=force)` would write a checkpoint."""
    if self._read_only or step in self._manager.all_steps():
      return False
    return force or self._manager.should_save(step)

  def save(self, step: int, state: Any, *, meta: Mapping[str, Any],
           data_iterator: Optional[grain.DatasetIterator] = None,
           val_error: Optional[float] = None, force: bool = False) -> bool:
    """Starts saving checkpoint `step`; returns whether one is being written.

    state: any pytree of jax arrays (possibly sharded) and scalars.
    meta: JSON-serialisable dict stored beside it and returned by restore.
    data_iterator: a grain iterator; its state is captured before returning, one
      file per process (restorable only by as many processes). The trainer stores
      meta[DATA_POSITION] instead, which any process count can resume from.
    val_error: the validation error at this step, ranking it for keep_best.
    force: save even if `step` is not a multiple of every_steps (epoch end,
      preemption). A step that already has a checkpoint is never rewritten.

    The previous save is awaited first, so at most one is in flight. Errors of
    a background write surface here or in `wait()`.
    """
    if self._read_only:
      raise ValueError(f'{self._directory} was opened read-only; it cannot save')
    step = int(step)
    if not force and not self._manager.should_save(step):
      return False
    if step in self._manager.all_steps():
      logging.info('Checkpoint at step %d already exists in %s; not saved again.',
                   step, self._directory)
      return False
    try:
      # A copy through JSON: fails here, not in a background thread, and later
      # changes to the caller's dict do not leak into the checkpoint.
      meta = json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as e:
      raise TypeError(f'checkpoint meta must be JSON-serialisable: {e}') from None
    items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items[grain_state.GRAIN_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None
    if self._keep_best:
      metrics = {VAL_ERROR: None if val_error is None else float(val_error)}
    self.wait()  # A failed background write is reported under its own step.
    started = time.perf_counter()
    # On the devices that hold the arrays, before save returns and their buffers may be donated.
    items[CHECKSUMS_ITEM] = ocp.args.JsonSave(checkpoint_integrity.checksums(state))
    checksum_seconds = time.perf_counter() - started
    target = jax.tree.map(_abstract_leaf, state)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                 force=True)  # the cadence was decided above
    except (OSError, ValueError) as e:
      raise checkpoint_failures.write_error(self._directory, step, e) from e
    if saved:
      self._writing = step
      logging.info('Saving checkpoint at step %d to %s (checksums took %.3f s)', step,
                   self.step_path(step), checksum_seconds)
      if not self._read_back_done:
        self._read_back(step, target)
    return saved

  def _read_back(self, step: int, target: Any) -> None:
    """Waits for the save of `step`, reads it back into `target` and compares its checksums.

    Done for the first save of a Checkpointer, so that a folder where orbax writes
    checkpoints it cannot read back fails at the run's first save, not at its resume.
    """
    self._read_back_done = True
    self.wait()
    try:
      self._restore_step(step, target, None)
    except Exception as e:  # pylint: disable=broad-exception-caught
      checkpoint_failures.raise_if_not_damage(e)
      moved = self._quarantine([step])
      raise CheckpointError(
          f'checkpoint of step {step} was written to {self.step_path(step)} but does not read '
          f'back as saved ({errors.first_line(e, 200)}); moved to {moved[0]}. Checkpoints '
          f'cannot be kept in {self._directory}: use another --workdir') from e

  def _restore_step(self, step: int, abstract_state: Any,
                    data_iterator: Optional[grain.DatasetIterator]) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of checkpoint `step`, its arrays compared with their stored checksums.

    Raises checkpoint_integrity.DamagedArrays on a difference; checkpoints written
    before checksums existed (no `checksums/` item) are read unchecked.
    """
    items = {'state': ocp.args.StandardRestore(abstract_state), 'meta': ocp.args.JsonRestore()}
    if data_iterator is not None:
      items[grain_state.GRAIN_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    has_sums = os.path.isdir(os.path.join(self.step_path(step), CHECKSUMS_ITEM))
    if has_sums:
      items[CHECKSUMS_ITEM] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    meta = restored['meta']
    if not isinstance(meta, dict):
      raise ValueError(f'meta of step {step} is {type(meta).__name__}, not a JSON object')
    if has_sums:
      checkpoint_integrity.verify(restored[CHECKSUMS_ITEM], restored['state'])
    return restored['state'], meta

  def restore(self, abstract_state: Any, *,
              data_iterator: Optional[grain.DatasetIterator] = None,
              step: Optional[int] = None,
              start_fresh_if_unusable: Optional[bool] = None) -> Optional[tuple[Any, dict[str, Any]]]:
    """Restores the newest readable checkpoint: (state, meta), or None if there is none.

    abstract_state: pytree of jax.ShapeDtypeStruct with .sharding, the layout
      of the state (e.g. `jax.eval_shape` of the init plus the target
      shardings); arrays are read directly into those shardings.
    data_iterator: set to the saved position (in place) when given; then a
      checkpoint whose grain files are another process count's raises
      CheckpointError at once (it is not damaged: nothing is moved).
      Without it, `data_position` gives the position for any process count.
    step: restore exactly this step, with no fallback.

    A checkpoint that fails to read is reported (a warning naming its step and
    folder) and the previous one is tried. When an older one succeeds, the
    newer unreadable ones are moved to checkpoints/damaged/. When none is
    readable, CheckpointError is raised and nothing is moved, unless
    `start_fresh_if_unusable` (default: the constructor's): then they are all
    moved aside and None returned.
    """
    if start_fresh_if_unusable is None:
      start_fresh_if_unusable = self._start_fresh_if_unusable
    candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not candidates:
      return None
    initial_position = data_iterator.get_state() if data_iterator is not None else None
    failures: list[tuple[int, BaseException]] = []
    errors.ignore_aborted_reads()
    for candidate in candidates:
      try:
        state, meta = self._restore_step(candidate, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-exception-caught
        checkpoint_failures.raise_if_not_damage(e)
        other = (grain_state.other_process_counts(self.step_path(candidate))
                 if data_iterator is not None else [])
        if other:  # healthy, but grain's state files are per process: never moved aside
          data_iterator.set_state(initial_position)
          raise self._other_count_error(candidate, other) from e
        # Any other read error (truncated array file, missing item, bad JSON) means
        # this checkpoint is unusable; the kind matters less than moving on.
        if step is not None:
          raise CheckpointError(f'cannot restore checkpoint {self.step_path(candidate)}: '
                                f'{errors.first_line(e)}') from e
        logging.warning('Checkpoint at step %d (%s) is unreadable (damaged, or saved with a '
                        'different model config): %s. Trying the previous one.', candidate,
                        self.step_path(candidate), errors.first_line(e))
        failures.append((candidate, e))
        continue
      if failures and not self._read_only:
        moved = self._quarantine([s for s, _ in failures])
        logging.warning('Resuming from checkpoint step %d instead of %d; damaged checkpoints '
                        'moved to %s.', candidate, failures[0][0], ', '.join(moved))
      logging.info('Restored checkpoint at step %d from %s', candidate, self.step_path(candidate))
      return state, meta

    if data_iterator is not None:
      data_iterator.set_state(initial_position)
    return self._none_usable(failures, start_fresh_if_unusable)

  def _none_usable(self, failures: Sequence[tuple[int, BaseException]],
                   start_fresh: bool) -> None:
    """No checkpoint read: all moved aside (start_fresh), else CheckpointError naming each."""
    summary = '; '.join(f'step {s}: {errors.first_line(e, 160)}' for s, e in failures)
    message = f'no usable checkpoint in {self._directory} ({summary})'
    if start_fresh:
      moved = self._quarantine([s for s, _ in failures])
      logging.warning('%s. Starting from scratch as requested; unreadable checkpoints moved to %s.',
                      message, ', '.join(moved))
      return None
    raise CheckpointError(message + '. Move or delete them to start from scratch, or allow a '
                          'fresh start (config.checkpoint.start_fresh_if_unusable=True).')

  def _other_count_error(self, step: int, counts: Sequence[int]) -> CheckpointError:
    return CheckpointError(
        f'checkpoint {self.step_path(step)} holds the data iterator state of '
        f'{" or ".join(map(str, counts))} processes, not of {jax.process_count()}: '
        'restore it without data_iterator and start the iterator at its data_position')

  def data_position(self, step: int, meta: Mapping[str, Any]) -> Optional[int]:
    """The global batches read at checkpoint `step`, whose restored meta is `meta`.

    meta[DATA_POSITION] where the trainer stored it, else read from grain's
    files of an older checkpoint (for any process count); None, with a warning,
    when neither gives it: the caller decides what to do then. A position that
    another process count saved carries over, and a warning says so.
    """
    here = jax.process_count()
    if DATA_POSITION in meta:
      saved_by = meta.get(PROCESS_COUNT)
      if saved_by is not None and saved_by != here:
        logging.warning('Checkpoint at step %d was written by %s processes and is resumed by '
                        '%d: its data position (global batch %d) is the same for any process '
                        'count and carries over.', step, saved_by, here, meta[DATA_POSITION])
      return int(meta[DATA_POSITION])
    return grain_state.position_from_files(self.step_path(step), step)

  def _quarantine(self, steps: Sequence[int]) -> list[str]:
    """Moves the given step folders into checkpoints/damaged/ (host 0); returns the new paths."""
    targets = self._move_aside(steps)
    self._manager.reload()
    return targets

  def _move_aside(self, steps: Sequence[int]) -> list[str]:
    """_quarantine without telling orbax (for use before its manager exists)."""
    damaged_root = os.path.join(self._directory, DAMAGED_DIR)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    targets = [os.path.join(damaged_root, f'{s}-{stamp}') for s in steps]
    if _is_primary():
      os.makedirs(damaged_root, exist_ok=True)
      for i, s in enumerate(steps):
        while os.path.exists(targets[i]):  # the same step damaged twice within a second
          targets[i] += '+'
        if os.path.exists(self.step_path(s)):
          shutil.move(self.step_path(s), targets[i])
    _sync('alexnet_jax_checkpoint_quarantine')
    return targets

  def wait(self) -> None:
    """Blocks until the last save is on disk; raises CheckpointWriteError if it failed."""
    step, self._writing = self._writing, None
    try:
      self._manager.wait_until_finished()
    except (OSError, ValueError) as e:
      raise checkpoint_failures.write_error(self._directory, step, e) from e

  def close(self) -> None:
    """Waits for the last save and releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
    """Waits for the save in flight on every way out, so the newest folder is complete or
    absent (a failed write leaves a temporary folder, deleted at the next start).

    Leaving on an error, a failed write is logged rather than raised: the error
    that ended the run stays the one reported.
    """
    if exc_type is None:
      self.close()
      return
    try:
      self.wait()
    except CheckpointWriteError as e:
      logging.error('%s', e)
    finally:
      self._manager.close()


