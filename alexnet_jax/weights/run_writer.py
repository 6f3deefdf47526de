"""Writes weights made elsewhere as an ordinary run: config, step-0 checkpoint, dataset facts.

  write_run('runs/bvlc', config, params, mean_image=mean, source_note='caffe: bvlc.caffemodel')

The workdir then holds what a training run's start writes (config.json and config.py,
dataset_info.json with mean_image.npy, run_record.jsonl, a checksummed orbax checkpoint
of the whole train state at step 0, its optimizer state fresh) plus IMPORT_FILE, saying
where the weights came from. evaluate, predict, plot, export_weights and fine-tuning
read it as they read any run. The run's classes are ImageNet's wnids in the order of
tensorflow-datasets' labels.txt (sorted wnids, the order torchvision's and Caffe's
ImageNet models use) when it has 1000 outputs and that file is at hand, so `evaluate`
accepts an ImageNet prepared by `alexnet_jax.prepare`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.data import dataset_info
from alexnet_jax.data import sources
from alexnet_jax.learning import experiment
from alexnet_jax.learning import optim
from alexnet_jax.prepare import labels
from alexnet_jax.storage import checkpoint_integrity
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import run_record
from alexnet_jax.storage import workdir_files

IMPORT_FILE = 'imported_from.json'
IMAGENET_CLASSES = 1000


def class_names(num_classes: int) -> tuple[str, ...]:
  """ImageNet's wnids for 1000 classes (where tensorflow-datasets is installed), else
  'class_0', 'class_1', ...: the output index is all an import knows of a class."""
  if num_classes == IMAGENET_CLASSES:
    try:
      return labels.imagenet_wnids()
    except errors.MissingInputError as e:
      logging.warning('Classes named by their index: %s', e)
  return tuple(f'class_{i}' for i in range(num_classes))


def imported_info(num_classes: int, mean_image: np.ndarray, source_note: str
                  ) -> dataset_info.DatasetInfo:
  """The dataset facts an imported run keeps: its classes and its preprocessing's mean."""
  names = class_names(num_classes)
  mean_image = np.asarray(mean_image, np.float32)
  return dataset_info.DatasetInfo(
      num_classes=num_classes, class_names=names, class_descriptions=names, split_sizes={},
      image_size=int(mean_image.shape[0]), mean_image=mean_image,
      eigvals=np.float32(sources.IMAGENET_EIGVALS), eigvecs=np.float32(sources.IMAGENET_EIGVECS),
      stats_source=f'imported: {source_note}')


def check_new_workdir(workdir: str | os.PathLike[str]) -> None:
  """Raises errors.InputError for a workdir that holds a run, or whose name orbax cannot keep
  checkpoints under: called before the weights are read, and again before they are written."""
  workdir = os.fspath(workdir)
  checkpoint_integrity.check_directory_name(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
  if workdir_files.load_config_dict(workdir) is not None or checkpointing.finished_steps(workdir):
    raise errors.InputError(f'{workdir} already holds a run; import into a new --workdir')


def _state_with(exp: experiment.Experiment, params: Any) -> Any:
  """The train state of step 0 holding `params`, each array where the run keeps it."""
  state = exp.init_state(jax.random.key(0))  # a fresh optimizer state, as a new run has
  expected = jax.tree.structure(state.params)
  if jax.tree.structure(params) != expected:
    raise errors.InputError(f'the weights\' layers {sorted(params)} do not match the network '
                            f'of the config ({sorted(state.params)})')
  def place(path: Any, ref: jax.Array, new: Any) -> jax.Array:
    new = np.asarray(new, ref.dtype)
    if new.shape != ref.shape:
      raise errors.InputError(f'{jax.tree_util.keystr(path)} has shape {new.shape}; the network '
                              f'of the config needs {ref.shape}')
    return jax.device_put(new, ref.sharding)

  return state.replace(params=jax.tree_util.tree_map_with_path(place, state.params, params))


def write_run(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict, params: Any,
              *, mean_image: np.ndarray, source_note: str) -> ml_collections.ConfigDict:
  """Writes `params` (this project's pytree) as the step-0 checkpoint of a new run.

  config: a full run config (layout.config_for); stored resolved, as launch stores it.
  mean_image: (S, S, 3) RGB 0-255 mean the weights were trained against.
  source_note: one line saying where the weights came from.
  Returns the stored config. Refuses a workdir that already holds a run.
  """
  workdir = os.fspath(workdir)
  config = resolution.load(config)
  check_new_workdir(workdir)
  info = imported_info(config.model.num_classes, mean_image, source_note)
  mesh = experiment.create_mesh(config, jax.devices()[:1], {'data': 1, 'model': 1})
  state = _state_with(experiment.setup(config, info, mesh=mesh), params)  # before any write
  workdir_files.prepare_workdir(workdir)
  with workdir_files.hold_lock(workdir):
    check_new_workdir(workdir)  # again under the lock: another import may have come first
    meta = {'step': 0, 'epoch': 0.0, checkpointing.DATA_POSITION: 0,
            checkpointing.PROCESS_COUNT: jax.process_count(),
            'plateau': (optim.make_plateau(config.optim).state_dict()
                        if config.optim.schedule == 'plateau' else None)}
    with checkpointing.Checkpointer.from_config(workdir, config.checkpoint) as ckpt:
      ckpt.save(0, state, meta=meta, force=True)
    workdir_files.record_config(workdir, config, [], step=0)
    workdir_files.save_dataset_info(workdir, info)
    run_record.record_run(workdir, 0)
    fileio.atomic_write(os.path.join(workdir, IMPORT_FILE), lambda f: f.write(
        json.dumps({'source': source_note}, indent=1) + '\n'))
  return config

