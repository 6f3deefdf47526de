"""Preemption and Ctrl-C: a signal asks the trainer to save at its next step and stop.

One process: SIGTERM (what cluster schedulers send before they kill a job) and
SIGINT (Ctrl-C) set a flag that the loop reads at each step boundary; the loop
saves that step and leaves (status 0 after SIGTERM, 130 after Ctrl-C). The first
Ctrl-C also gives SIGINT back its default action, so a second one ends the
process at once; that loses only the save in progress, whose files are still in a
temporary folder. Several processes (jax.distributed): JAX's preemption sync
service agrees on one step for all hosts, so every host saves the same step; a
Ctrl-C there is a KeyboardInterrupt (one process cannot stop the others at the
same step). docs/design.md, "Checkpoints and preemption", says why this is not
left to an orbax save policy.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils

_preempted = threading.Event()
_previous_handlers: dict[int, Any] = {}
_received: list[int] = []  # the signals that set the flag, first first


def _on_preemption_signal(signum: int, frame: Any) -> None:
  del frame
  # Only a flag: the loop saves at its next step boundary, outside the handler.
  _received.append(signum)
  _preempted.set()
  if signum == signal.SIGINT:
    # A second Ctrl-C takes the default action: the process ends at once, from the kernel,
    # even inside a long computation where no Python handler would run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Python runs this handler in the main thread between bytecodes, and logging's locks
    # are reentrant, so logging here cannot deadlock.
    logging.warning('Ctrl-C: saving a checkpoint at the end of this step, then exiting. Press '
                    'Ctrl-C again to exit at once (the newest complete checkpoint stays).')


def install_preemption_handler(signals: Sequence[int] = (signal.SIGTERM,)) -> bool:
  """Makes `signals` set the flag that `preemption_requested` reports; returns whether installed.

  Multi-process runs (jax.distributed) leave SIGTERM to JAX's preemption
  service, which agrees on one step for all hosts; a Python handler would
  replace its own. Handlers can only be set from the main thread.
  """
  if jax.process_count() > 1:
    logging.info('Preemption: using JAX\'s preemption sync service (%d processes).',
                 jax.process_count())
    return False
  if threading.current_thread() is not threading.main_thread():
    logging.warning('Preemption handler not installed: not on the main thread.')
    return False
  for sig in signals:
    previous = signal.signal(sig, _on_preemption_signal)
    _previous_handlers.setdefault(sig, previous)
  return True


def uninstall_preemption_handler() -> None:
  """Restores the handlers replaced by install_preemption_handler and clears the flag."""
  for sig, previous in _previous_handlers.items():
    signal.signal(sig, previous)
  _previous_handlers.clear()
  _preempted.clear()
  _received.clear()


def received_signal() -> Optional[int]:
  """The first signal that asked to stop since the handler was installed, or None."""
  return _received[0] if _received else None


def preemption_requested(step: int) -> bool:
  """Whether the loop should save a checkpoint at `step` and stop.

  Single process: True once SIGTERM arrived. Multi-process: True on every host
  at the same step, as agreed by JAX's preemption sync service; then every host
  must call this at every step.
  """
  if _preempted.is_set():
    return True
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:
    # jax.distributed without its preemption service: nothing to agree on.
    return False


class PreemptionWatcher:
  """install_preemption_handler / preemption_requested / uninstall as one object.

    with PreemptionWatcher() as preemption:
      for step in ...:
        ...
        if preemption.requested(step):
          save(step, force=True); break
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self.installed = install_preemption_handler(signals)

  @property
  def interrupted(self) -> bool:
    """Whether the stop was asked by Ctrl-C (SIGINT) rather than by a preemption."""
    return received_signal() == signal.SIGINT

  def requested(self, step: Optional[int] = None) -> bool:
    """See preemption_requested; multi-process runs must pass the step, at every step."""
    if step is None:
      return _preempted.is_set()
    return preemption_requested(step)

  def close(self) -> None:
    if self.installed:
      uninstall_preemption_handler()
      self.installed = False

  def __enter__(self) -> 'PreemptionWatcher':
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
