"""Opens a finished (or stopped) run read-only: its config, dataset facts, checkpoints, weights.

  run = finished_run.load_run('runs/digits')     # FinishedRun: config, model, params, info, step
  config = finished_run.load_config(workdir)
  state, step = finished_run.restore_state(workdir, config, step, target)

predict, evaluate, plot and the benchmarks read runs through this module only.
The checkpoints are opened read-only: a reader never falls back to an older
checkpoint, moves folders or deletes a save in flight, so it is safe beside a
live run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.model import alexnet
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import workdir_files
from alexnet_jax.learning import experiment
from alexnet_jax.learning import step_fns

NEWEST, BEST = 'newest', 'best'


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """A trained run ready to classify: its config, model, weights and dataset facts."""
  config: ml_collections.ConfigDict
  model: alexnet.AlexNet
  params: Any
  info: input_pipeline.DatasetInfo
  step: int

  @property
  def mean_image(self) -> np.ndarray:
    return input_pipeline.mean_for_config(self.info, self.config.data)


def load_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """The resolved config the run in WORKDIR stored at its start."""
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.MissingInputError(f'workdir {workdir} does not exist')
  stored = workdir_files.load_config_dict(workdir)  # a damaged file is named in its error
  if stored is None:
    raise errors.MissingInputError(f'{workdir} holds no {workdir_files.CONFIG_JSON}: not the '
                                   'workdir of a training run')
  # Runs store their resolved config; an 'auto' left in an older one is resolved here.
  return resolution.resolve_auto(ml_collections.ConfigDict(stored))


def abstract_state(config: ml_collections.ConfigDict,
                   device: jax.Device | None = None) -> step_fns.TrainState:
  """Shapes of the run's TrainState, each placed whole on one device: a restore target.

  Traced with jax.eval_shape, so nothing is initialised. The optimizer state is
  part of it because checkpoints store the whole train state.
  """
  mesh = experiment.create_mesh(config, [device or jax.devices()[0]], {'data': 1, 'model': 1})
  return experiment.setup(config, mesh=mesh).abstract_state


def open_checkpoints(workdir: str | os.PathLike[str],
                     config: ml_collections.ConfigDict) -> checkpointing.Checkpointer:
  """The run's checkpoints, opened read-only; raises FileNotFoundError when it has none.

  Unlike a resuming trainer, this reader never falls back to an older checkpoint,
  moves folders or deletes a save in flight: it is safe beside a live run.
  """
  workdir = os.fspath(workdir)
  folder = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(folder):
    raise errors.MissingInputError(f'no checkpoint in {workdir} ({folder} does not exist)')
  ckpt = checkpointing.Checkpointer.from_config(workdir, config.checkpoint, async_save=False,
                                                read_only=True)
  if not ckpt.all_steps():
    ckpt.close()
    raise errors.MissingInputError(f'no finished checkpoint in {folder}')
  return ckpt


def check_step(ckpt: checkpointing.Checkpointer, step: int,
               workdir: str | os.PathLike[str]) -> None:
  """Raises errors.InputError unless `step` is a finished checkpoint of WORKDIR's `ckpt`."""
  steps = ckpt.all_steps()
  if step not in steps:
    folder = os.path.join(os.fspath(workdir), checkpointing.CHECKPOINT_DIR)
    raise errors.InputError(f'no checkpoint of step {step} in {folder}; it has steps {steps}')


def parse_step(text: str | int | None) -> str | int:
  """'newest', 'best' or a step number from a --step flag."""
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
  ckpt = open_checkpoints(workdir, config)
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
    check_step(ckpt, step, workdir)
    return step
  finally:
    ckpt.close()


def restore_state(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict,
                  step: int | None, target: step_fns.TrainState) -> tuple[Any, int]:
  """(state, step) of the newest checkpoint in WORKDIR, or of `step`, read into `target`.

  target: the abstract state (shapes, dtypes, shardings) to restore into. A
  checkpoint that cannot be read raises checkpoint.CheckpointError naming it.
  """
  ckpt = open_checkpoints(workdir, config)
  try:
    if step is None:
      step = ckpt.all_steps()[-1]
    check_step(ckpt, step, workdir)
    try:
      state, _ = ckpt.restore(target, step=step)
    except checkpointing.CheckpointError as e:
      older = [s for s in ckpt.all_steps() if s < step]
      hint = f'; --step={older[-1]} selects the one before it' if older else ''
      raise checkpointing.CheckpointError(f'{e}{hint}') from e
  finally:
    ckpt.close()
  return state, step


def restore_params(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict,
                   step: int | None = None) -> tuple[Any, int]:
  """(params, step) of the newest checkpoint in WORKDIR, or of `step`, on one device.

  A checkpoint that cannot be read raises checkpoint.CheckpointError; unlike a
  resuming trainer, this reader never falls back to an older one or moves
  folders, so what it reports is the step asked for.
  """
  state, step = restore_state(workdir, config, step, abstract_state(config))
  return state.params, step


def dataset_info(workdir: str | os.PathLike[str],
                 config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """The run's dataset facts, checked against its model."""
  info = workdir_files.dataset_info_for_run(workdir, config.data)
  if info.num_classes != config.model.num_classes:
    raise errors.InputError(
        f'the run in {workdir} has {config.model.num_classes} output classes but '
        f'its dataset description lists {info.num_classes}')
  return info


def load_run(workdir: str | os.PathLike[str], step: int | None = None) -> FinishedRun:
  """Config, model, weights (newest checkpoint, or `step`) and dataset facts of a run."""
  config = load_config(workdir)
  model = alexnet.from_config(config.model)
  info = dataset_info(workdir, config)
  params, step = restore_params(workdir, config, step)
  return FinishedRun(config, model, params, info, step)
