"""The dataset facts a run keeps in its workdir, so predictions need no training data.

A checkpoint holds weights only. Classifying a new image also needs what the run
saw of its dataset: the class names and descriptions, the stored image size and
the training mean image. At the start of training, host 0 copies them next to
the checkpoints:

  WORKDIR/dataset_info.json   classes, split sizes, image size, PCA, stats source
  WORKDIR/mean_image.npy      float32 (S, S, 3) per-pixel training mean, 0-255 units

`dataset_info_for_run` reads them back (falling back to the dataset itself for
runs made before these files existed).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from alexnet_jax import fileio
from alexnet_jax import input_pipeline

INFO_FILE = 'dataset_info.json'
MEAN_FILE = 'mean_image.npy'
FORMAT = 'alexnet_jax.dataset_info/1'


def save_dataset_info(workdir: str | os.PathLike[str], info: input_pipeline.DatasetInfo) -> None:
  """Writes WORKDIR/dataset_info.json and WORKDIR/mean_image.npy (host 0 only)."""
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  description = {
      'format': FORMAT,
      'num_classes': info.num_classes,
      'class_names': list(info.class_names),
      'class_descriptions': list(info.class_descriptions),
      'split_sizes': {k: int(v) for k, v in info.split_sizes.items()},
      'image_size': int(info.image_size),
      'eigvals': np.asarray(info.eigvals, np.float64).tolist(),
      'eigvecs': np.asarray(info.eigvecs, np.float64).tolist(),
      'stats_source': info.stats_source,
  }
  fileio.atomic_write(os.path.join(workdir, MEAN_FILE),
                      lambda f: np.save(f, np.asarray(info.mean_image, np.float32)), 'wb')
  fileio.atomic_write(os.path.join(workdir, INFO_FILE),
                      lambda f: f.write(json.dumps(description, indent=1) + '\n'))


def load_dataset_info(workdir: str | os.PathLike[str]) -> input_pipeline.DatasetInfo | None:
  """The DatasetInfo stored in WORKDIR, or None when the run stored none.

  Raises ValueError when the files exist but cannot be read.
  """
  workdir = os.fspath(workdir)
  info_path, mean_path = os.path.join(workdir, INFO_FILE), os.path.join(workdir, MEAN_FILE)
  if not os.path.exists(info_path):
    return None
  try:
    with open(info_path) as f:
      d = json.load(f)
    if d.get('format') != FORMAT:
      raise ValueError(f'unknown format {d.get("format")!r}')
    mean_image = np.load(mean_path)
    size = int(d['image_size'])
    if mean_image.shape != (size, size, 3):
      raise ValueError(f'{MEAN_FILE} has shape {mean_image.shape}, expected ({size}, {size}, 3)')
    return input_pipeline.DatasetInfo(
        num_classes=int(d['num_classes']),
        class_names=tuple(d['class_names']),
        class_descriptions=tuple(d['class_descriptions']),
        split_sizes=dict(d['split_sizes']),
        image_size=size,
        mean_image=mean_image.astype(np.float32),
        eigvals=np.asarray(d['eigvals'], np.float32),
        eigvecs=np.asarray(d['eigvecs'], np.float32),
        stats_source=d['stats_source'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'the dataset description stored in {workdir} ({INFO_FILE}, {MEAN_FILE}) '
                     f'is unreadable: {e}') from e


def dataset_info_for_run(workdir: str | os.PathLike[str],
                         data_config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """What the run in WORKDIR knew of its dataset: the stored copy, else the dataset itself.

  The stored copy comes first because it is what the run trained with, and it
  is there even where the training data is not (another machine, a laptop).
  """
  stored = load_dataset_info(workdir)
  if stored is not None:
    return stored
  try:
    return input_pipeline.load_info(data_config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'{workdir} holds no {INFO_FILE} (written by runs since it was added) and its '
        f'dataset is not available: {e}') from e
