"""Run metrics: metrics.jsonl, TensorBoard scalars, console lines and a progress bar.

Only host 0 writes; on other hosts every method is a no-op, so the trainer
calls them unconditionally.

metrics.jsonl holds one JSON object per line (docs/design.md, "metrics.jsonl"). Every
record has `step` (optimizer steps done), `kind` and `time` (when it was written, Unix
seconds):

  train: loss, top1_err, top5_err, lr, epoch, images_per_sec
  eval:  val_loss, val_top1_err, val_top5_err (+ val10_top1_err, val10_top5_err
         for the 10-crop test)

Errors are fractions in [0, 1]; extra keys are allowed. float32 values are
written as the shortest decimal that reads back as the same float32 (`0.01`, not
`0.010000000707805157`). A resumed run first calls `truncate_after(restored_step)`,
which drops the lines the crashed run wrote after its last checkpoint, so every
step appears once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, TextIO

from absl import logging
import jax
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.core import progress

METRICS_FILE = 'metrics.jsonl'
KINDS = ('train', 'eval')
REQUIRED_KEYS = {
    'train': ('loss', 'top1_err', 'top5_err', 'lr', 'epoch', 'images_per_sec'),
    'eval': ('val_loss', 'val_top1_err', 'val_top5_err'),
}


class NonFiniteError(errors.UserError, FloatingPointError):
  """A logged loss (or metric) is NaN or infinite."""


def check_finite(value: Any, step: int, name: str = 'loss', *,
                 last_checkpoint_step: Optional[int] = None) -> None:
  """Raises NonFiniteError with a message for the user if `value` is NaN or +-inf.

  Call at logging points only: reading the value waits for the device.
  """
  value = float(np.asarray(value))
  if math.isfinite(value):
    return
  kept = ('no checkpoint was written yet' if last_checkpoint_step is None else
          f'the last good checkpoint (step {last_checkpoint_step}) is kept')
  raise NonFiniteError(
      f'{name} is {value} at step {step}: training stopped; {kept}. Lower '
      f'config.optim.learning_rate or check the input data, then rerun with the same workdir.')


def _json_value(value: Any) -> Any:
  """jax/numpy scalars -> Python numbers; NaN and inf -> None (strict JSON has neither)."""
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, Mapping):
    return {str(k): _json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  array = np.asarray(value)
  if array.ndim:
    return [_json_value(v) for v in array]
  if array.dtype == np.float32:
    # The float64 of a float32 prints its binary noise; this decimal reads back as the same float32.
    return _json_value(float(str(array[()])))
  number = array.item()
  if isinstance(number, float) and not math.isfinite(number):
    return None
  return number


def validate_record(record: Mapping[str, Any]) -> None:
  """Raises ValueError unless `record` has step, a known kind and that kind's keys."""
  step, kind = record.get('step'), record.get('kind')
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise ValueError(f'metrics record needs an integer step >= 0, got {step!r}')
  if kind not in KINDS:
    raise ValueError(f'metrics record kind must be one of {KINDS}, got {kind!r}')
  missing = [k for k in REQUIRED_KEYS[kind] if k not in record]
  if missing:
    raise ValueError(f'{kind} metrics record at step {step} lacks {missing}')


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """The records of WORKDIR/metrics.jsonl, skipping a damaged (half-written) line."""
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if not os.path.exists(path):
    return []
  if not os.path.isfile(path):
    raise errors.InputError(f'{path} is not a regular file; it should hold the run\'s metrics '
                            '(one JSON record a line): move it away')
  records = []
  # Bytes that are not UTF-8 (a damaged disk) spoil their line only.
  with open(path, errors='replace') as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and 'kind' in record and 'step' in record:  # else not a record
        records.append(record)
  return records


class MetricWriter:
  """Appends records to WORKDIR/metrics.jsonl and mirrors numbers to TensorBoard."""

  def __init__(self, workdir: str | os.PathLike[str], *, enabled: Optional[bool] = None,
               tensorboard: bool = True, tracker: Optional[Any] = None,
               clock: Callable[[], float] = time.time):
    """enabled: write at all; default True on host 0 only. tensorboard: also write event files.

    tracker: an experiment tracker (tracking.WandbTracker) that gets every record
    too and is closed with the writer. clock: the wall clock of each record's `time`.
    """
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    self._tracker = tracker if self.enabled else None
    self._clock = clock
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self._tensorboard = tensorboard
    self._tb_writer = None
    self._purge_step: Optional[int] = None
    self._file: Optional[TextIO] = None
    if self.enabled:
      os.makedirs(self.workdir, exist_ok=True)
      self._file = open(self.path, 'a')

  def _tb(self):
    if self._tb_writer is None:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      # purge_step makes TensorBoard drop events of the crashed run from that
      # step on, like truncate_after does for the JSON lines.
      self._tb_writer = tensorboardX.SummaryWriter(self.workdir, purge_step=self._purge_step,
                                                   flush_secs=30)
    return self._tb_writer

  def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one record (see the module docstring) and flushes it to disk.

    Returns the record with its `time` (the wall clock now, unless it has one), on
    every host.
    """
    stamped = dict(record)
    stamped.setdefault('time', float(self._clock()))
    if not self.enabled:
      return stamped
    validate_record(stamped)
    ordered = {'step': int(stamped['step']), 'kind': stamped['kind']}
    ordered.update({k: _json_value(v) for k, v in stamped.items() if k not in ordered})
    self._file.write(json.dumps(ordered, allow_nan=False) + '\n')
    self._file.flush()
    if self._tensorboard:
      tb = self._tb()
      for key, value in ordered.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key not in ('step', 'kind', 'time') and numeric:  # TensorBoard keeps its own wall time
          tb.add_scalar(f'{ordered["kind"]}/{key}', value, ordered['step'])
      tb.flush()
    if self._tracker is not None:
      self._tracker.log(ordered)
    return stamped

  def truncate_after(self, step: int) -> int:
    """Drops records with step > `step` (and any half-written line); returns how many.

    The file is replaced atomically, so a crash here leaves the old or the new one.
    """
    if not self.enabled:
      return 0
    kept, dropped = [], 0
    with open(self.path, errors='replace') as f:  # a line of other bytes is dropped
      for line in f:
        try:
          record = json.loads(line)
          keep = line.endswith('\n') and int(record['step']) <= step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
          keep = False
        if keep:
          kept.append(line)
        else:
          dropped += 1
    self._file.close()
    fileio.atomic_write(self.path, lambda f: f.writelines(kept), fsync=True)
    self._file = open(self.path, 'a')
    if dropped:
      logging.info('Dropped %d lines after step %d from %s.', dropped, step, self.path)
    self._purge_step = step + 1
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None
    return dropped

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb_writer is not None:
      self._tb_writer.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None
    if self._tracker is not None:
      self._tracker.close()
      self._tracker = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


# ----------------------------------------------------------------------------- console


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) < 1e-3 and value != 0 else f'{value:.4f}'
  return str(value)


def format_lr(value: Any) -> str:
  """A learning rate as its float32 reads: '0.01', '1e-05' (the schedule's own numbers)."""
  return str(np.float32(value))


def format_rate(value: Any) -> str:
  """Images per second: whole numbers with thousands separators from 100 on ('1,234')."""
  value = float(value)
  return f'{value:,.0f}' if abs(value) >= 100 else f'{value:.3g}'


class ProgressReporter:
  """Console lines at logging points (absl logging) and a progress bar on a terminal.

  The ETA extrapolates the pace since the first `update` (so compilation of the
  first step does not count) over the remaining steps, evaluations included.
  """

  BAR_WIDTH = 30

  def __init__(self, total_steps: int, *, start_step: int = 0,
               steps_per_epoch: Optional[int] = None, enabled: Optional[bool] = None,
               progress_bar: Optional[bool] = None, stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic, min_redraw_secs: float = 0.2):
    """total_steps: the step the run ends at. enabled: default host 0 only.

    progress_bar: draw a bar on `stream` (stdout by default); None: only if it is a tty.
    """
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    self.total_steps = int(total_steps)
    self.steps_per_epoch = steps_per_epoch
    stream = stream if stream is not None else sys.stdout
    if progress_bar is None:
      progress_bar = bool(getattr(stream, 'isatty', lambda: False)())
    self._bar: Optional[progress.StatusLine] = None
    if self.enabled and progress_bar:
      self._bar = progress.StatusLine(stream, min_interval=min_redraw_secs, clock=clock)
    self._clock = clock
    self._anchor: Optional[tuple[int, float]] = None
    self._step = int(start_step)

  def eta_seconds(self, step: int) -> Optional[float]:
    """Seconds to total_steps at the pace measured so far, or None before there is one."""
    if self._anchor is None:
      return None
    anchor_step, anchor_time = self._anchor
    return progress.eta_seconds(step - anchor_step, self.total_steps - step,
                                self._clock() - anchor_time)

  def _epoch(self, step: int, record: Mapping[str, Any]) -> Optional[float]:
    if 'epoch' in record:
      return float(record['epoch'])
    if self.steps_per_epoch:
      return step / self.steps_per_epoch
    return None

  def train_line(self, step: int, record: Mapping[str, Any]) -> str:
    """The console line of a train record."""
    epoch = self._epoch(step, record)
    head = f'step {step}/{self.total_steps}' + (f' (epoch {epoch:.2f})' if epoch is not None else '')
    parts = [f'{k} {_fmt(float(record[k]))}' for k in ('loss', 'top1_err', 'top5_err')
             if k in record]
    if 'lr' in record:
      parts.append(f'lr {format_lr(record["lr"])}')
    if 'images_per_sec' in record:
      parts.append(f'{format_rate(record["images_per_sec"])} img/s')
    parts.append(f'ETA {progress.format_duration(self.eta_seconds(step))}')
    return f'{head}: ' + ', '.join(parts)

  def eval_line(self, step: int, record: Mapping[str, Any]) -> str:
    """The console line of an eval record."""
    epoch = self._epoch(step, record)
    head = f'eval at step {step}' + (f' (epoch {epoch:.2f})' if epoch is not None else '')
    keys = [k for k in record if k.startswith('val')]
    return f'{head}: ' + ', '.join(f'{k} {_fmt(float(record[k]))}' for k in keys)

  def update(self, step: int, record: Optional[Mapping[str, Any]] = None) -> None:
    """Marks `step` done; logs a console line for a train `record` if given."""
    if not self.enabled:
      return
    self._step = int(step)
    if self._anchor is None:
      self._anchor = (self._step, self._clock())
    if record is not None:
      self._log(self.train_line(step, record))
    if self._bar is not None:
      self._bar.show(self.bar_text())

  def log_eval(self, step: int, record: Mapping[str, Any]) -> None:
    """Logs a console line for an eval record."""
    if self.enabled:
      self._log(self.eval_line(step, record))

  def _log(self, line: str) -> None:
    if self._bar is not None:
      self._bar.clear()  # The bar is redrawn below the new line at the next update.
    logging.info('%s', line)

  def bar_text(self) -> str:
    """'[#####.....]  50.0% 500/1000 ETA 00:01:40'."""
    fraction = min(max(self._step / max(self.total_steps, 1), 0.0), 1.0)
    eta = progress.format_duration(self.eta_seconds(self._step))
    return (f'{progress.bar(fraction, self.BAR_WIDTH)} {100 * fraction:5.1f}% '
            f'{self._step}/{self.total_steps} ETA {eta}')

  def close(self) -> None:
    """Ends the bar's line."""
    if self._bar is not None:
      self._bar.close()


PROFILE_DIR = 'profile'


class StepProfiler:
  """A jax.profiler trace of steps [start, stop) of the run (config.log.profile_steps).

  Written by host 0 into WORKDIR/profile/plugins/profile/<time>/: `<host>.xplane.pb`
  for TensorBoard's profile plugin (`tensorboard --logdir WORKDIR/profile`) and
  `perfetto_trace.json.gz` for https://ui.perfetto.dev. A resumed run traces the
  part of the window it still has to run. `close` ends a trace still open (a
  preempted or failed run), so the file is always complete.
  """

  def __init__(self, workdir: str | os.PathLike[str], steps: tuple[int, ...] = (), *,
               enabled: bool = True):
    self.logdir = os.path.join(os.fspath(workdir), PROFILE_DIR)
    self._window = tuple(steps) if enabled else ()
    self._active = False

  def before_step(self, step: int) -> None:
    """Starts the trace when `step` (1-based, as in metrics.jsonl) is the first to record."""
    if self._window and not self._active and self._window[0] <= step < self._window[1]:
      logging.info('Profiling steps %d to %d into %s.', step, self._window[1] - 1, self.logdir)
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self._active = True

  def after_step(self, step: int, outputs: Any) -> None:
    """Ends the trace after the window's last step, once its work is done on the devices."""
    if self._active and step + 1 >= self._window[1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    if self._active:
      self._active = False
      jax.profiler.stop_trace()
      logging.info('Profile written to %s.', self.logdir)
