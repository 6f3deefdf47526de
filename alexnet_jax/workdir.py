"""What a run keeps in its workdir besides checkpoints and metrics.

  WORKDIR/config.json         the resolved config, read back by predict, plot and resumes
  WORKDIR/config.py           the same as a config file: --config=WORKDIR/config.py reruns it
  WORKDIR/dataset_info.json   classes, split sizes, image size, PCA, stats source
  WORKDIR/mean_image.npy      float32 (S, S, 3) per-pixel training mean, 0-255 units

A checkpoint holds weights only; classifying a new image also needs what the
run saw of its dataset, so host 0 copies those facts here at the start of
training and predictions need no training data. Files are replaced atomically.
"""

from __future__ import annotations

import ast
import json
import os
import pprint
from typing import Any, Mapping, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax import errors
from alexnet_jax import fileio
from alexnet_jax import input_pipeline

CONFIG_JSON = 'config.json'
CONFIG_PY = 'config.py'


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, so a bad path fails before any compile."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(f'workdir {workdir!r} cannot be written: {e.strerror or e}') from e


# ----------------------------------------------------------------------------- config


def _plain(value: Any) -> Any:
  """ConfigDict / tuples / numpy scalars -> JSON types (tuples become lists)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, 'item') and callable(value.item):  # numpy scalar
    return value.item()
  return value


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def save_config(workdir: str | os.PathLike[str], config: Any) -> None:
  """Writes the resolved config to WORKDIR/config.json and WORKDIR/config.py (host 0).

  config.py is loadable by `--config=WORKDIR/config.py` to rerun the same
  settings. Overwrites earlier files: call check_config first on resume.
  """
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  text = json.dumps(_plain(config), indent=2, sort_keys=True, allow_nan=False) + '\n'
  fileio.atomic_write(os.path.join(workdir, CONFIG_JSON), lambda f: f.write(text))
  as_dict = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  literal = pprint.pformat(as_dict, indent=1, width=100, sort_dicts=True)
  try:
    ast.literal_eval(literal)
  except (ValueError, SyntaxError):
    logging.warning('Config holds values that are not Python literals; %s not written.', CONFIG_PY)
    return
  body = '\n'.join('      ' + line for line in literal.splitlines())
  source = (
      '"""The resolved config of the run in this folder, written by alexnet_jax at its start.\n\n'
      'Rerun with: python launch.py --config=<this file> --workdir=<this folder>\n"""\n\n'
      'import ml_collections\n\n\n'
      'def get_config() -> ml_collections.ConfigDict:\n'
      '  return ml_collections.ConfigDict(\n'
      f'{body})\n')
  fileio.atomic_write(os.path.join(workdir, CONFIG_PY), lambda f: f.write(source))


def load_config_dict(workdir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
  """The stored config.json of WORKDIR as a dict, or None if there is none."""
  path = os.path.join(os.fspath(workdir), CONFIG_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def config_differences(stored: Mapping[str, Any], current: Any) -> list[str]:
  """'field: stored -> current' for every dotted field whose value differs."""
  old, new = _flatten(_plain(stored)), _flatten(_plain(current))
  missing = '(absent)'
  return [f'{k}: {json.dumps(old.get(k, missing))} -> {json.dumps(new.get(k, missing))}'
          for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]


def check_config(workdir: str | os.PathLike[str], config: Any) -> Optional[list[str]]:
  """Compares `config` with WORKDIR/config.json; warns and returns the differing fields.

  Returns None when no config is stored (a fresh workdir), [] when they agree.
  """
  stored = load_config_dict(workdir)
  if stored is None:
    return None
  differences = config_differences(stored, config)
  if differences:
    logging.warning('The config differs from the one stored in %s (%d fields): %s',
                    os.path.join(os.fspath(workdir), CONFIG_JSON), len(differences),
                    '; '.join(differences))
  return differences


# ----------------------------------------------------------------------------- dataset facts


INFO_FILE = 'dataset_info.json'
MEAN_FILE = 'mean_image.npy'
INFO_FORMAT = 'alexnet_jax.dataset_info/1'


def save_dataset_info(workdir: str | os.PathLike[str], info: input_pipeline.DatasetInfo) -> None:
  """Writes WORKDIR/dataset_info.json and WORKDIR/mean_image.npy (host 0 only)."""
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  description = {
      'format': INFO_FORMAT,
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
    if d.get('format') != INFO_FORMAT:
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
    raise errors.InputError(
        f'the dataset description stored in {workdir} ({INFO_FILE}, {MEAN_FILE}) '
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
    raise errors.MissingInputError(
        f'{workdir} holds no {INFO_FILE} (written by runs since it was added) and its '
        f'dataset is not available: {e}') from e
