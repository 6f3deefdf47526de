"""Weights & Biases, optional: metrics.jsonl mirrored to one W&B run per workdir.

Off unless config.log.wandb.project names a project; then host 0 opens the run
(`open_tracker`) and MetricWriter hands it every record it writes. Off, this
module imports nothing of wandb, so a machine without it pays nothing.

One workdir is one W&B run, however often it is killed and resumed: the run's
id is kept in WORKDIR/wandb_run.json and every start resumes it
(`resume='allow'`). A resumed run writes again the steps after its checkpoint,
which the killed one may already have sent; W&B keeps a step once, so the file
also holds the last (step, kind) sent, written before the record is, and nothing
at or before it is sent again (on CPU the rewritten records equal the first
ones; docs/reliability.md). The resolved config and this start's run record go
into the W&B run's config; run_record.jsonl, every start's, is uploaded as a file.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Mapping, Optional

from absl import logging
import ml_collections

from alexnet_jax.core import fileio
from alexnet_jax.storage import run_record

STATE_FILE = 'wandb_run.json'
KINDS = ('train', 'eval')  # the order of a step's records in metrics.jsonl
FIELDS = ('project', 'entity', 'name', 'mode')
MODES = ('', 'online', 'offline', 'disabled')


def settings(config: ml_collections.ConfigDict) -> dict[str, str]:
  """config.log.wandb's fields, '' where a config (an older run's) lacks them."""
  section = config.log.get('wandb') or {}
  return {field: section.get(field, '') for field in FIELDS}


def _read_state(workdir: str) -> dict[str, Any]:
  try:
    with open(os.path.join(workdir, STATE_FILE)) as f:
      state = json.load(f)
  except (OSError, ValueError):
    return {}
  return state if isinstance(state, dict) else {}


def _write_state(workdir: str, state: Mapping[str, Any]) -> None:
  fileio.atomic_write(os.path.join(workdir, STATE_FILE), lambda f: f.write(json.dumps(state)))


class WandbTracker:
  """A W&B run that gets metrics.jsonl's records, each (step, kind) once across resumes."""

  def __init__(self, run: Any, workdir: str, run_id: str, sent: tuple[int, int]):
    self._run = run
    self._workdir = workdir
    self._id = run_id
    self._sent = sent  # (step, index in KINDS) of the last record sent

  def log(self, record: Mapping[str, Any]) -> None:
    """Sends one metrics.jsonl record as `<kind>/<key>` values at its step."""
    position = (int(record['step']), KINDS.index(record['kind']))
    if position <= self._sent:
      return
    self._sent = position
    # Written first: a kill between the two loses this record rather than sending it twice.
    _write_state(self._workdir, {'id': self._id, 'sent': list(position)})
    values = {f'{record["kind"]}/{key}': value for key, value in record.items()
              if key not in ('step', 'kind', 'time') and value is not None}
    self._run.log(values, step=position[0])

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None


def open_tracker(workdir: str, config: ml_collections.ConfigDict,
                 record: Optional[Mapping[str, Any]]) -> Optional[WandbTracker]:
  """The W&B run of WORKDIR, resumed or new; None when config.log.wandb.project is ''.

  Call on host 0 only. A W&B run that cannot start (no network, no login) is a
  warning: training goes on with metrics.jsonl and TensorBoard.
  """
  chosen = settings(config)
  if not chosen['project']:
    return None
  import wandb  # pylint: disable=g-import-not-at-top
  workdir = os.fspath(workdir)
  state = _read_state(workdir)
  run_id = state.get('id') or secrets.token_hex(6)  # W&B ids: letters and digits
  sent = tuple(state.get('sent') or (-1, -1))
  _write_state(workdir, {'id': run_id, 'sent': list(sent)})  # a start killed in init resumes it
  try:
    run = wandb.init(
        project=chosen['project'], entity=chosen['entity'] or None,
        name=chosen['name'] or os.path.basename(os.path.abspath(workdir)),
        mode=chosen['mode'] or None, id=run_id, resume='allow', dir=workdir,
        settings=wandb.Settings(console='off', quiet=True))  # the console stays this program's
    run.config.update({'config': config.to_dict(), 'run_record': dict(record or {})},
                      allow_val_change=True)  # a resume may change accepted fields
    run.save(os.path.join(workdir, run_record.RUN_RECORD), base_path=workdir, policy='now')
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('Weights & Biases did not start (%s); training goes on without it.', e)
    return None
  logging.info('Weights & Biases run %s (%s), resumed in every start from %s.', run_id,
               run.url or 'offline: wandb sync uploads it', os.path.join(workdir, STATE_FILE))
  return WandbTracker(run, workdir, run_id, (int(sent[0]), int(sent[1])))
