"""A whole run's weights in one safetensors file, and back; needs the safetensors package.

The file holds this project's own layout, so any run exports (two towers, LRN, any
widths): one tensor per parameter named 'conv1/kernel', 'fc6/bias', ... (HWIO and
(in, out) kernels, fc6's rows in (H, W, C) order, conv1 reading RGB), the run's mean
image as 'mean_image' (S, S, 3, RGB, 0-255), and in the metadata one entry, METADATA_KEY:
JSON of {'format': FORMAT, 'config': the run's config}. One entry, because safetensors
writes its metadata entries in no fixed order: so exporting the same run twice gives the
same bytes. Importing it gives back the same config, weights and mean bit for bit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from alexnet_jax.config import known_fields
from alexnet_jax.core import errors
from alexnet_jax.weights import layout
from alexnet_jax.weights import optional

FORMAT = 'alexnet_jax.weights/1'
METADATA_KEY = 'alexnet_jax'
MEAN = 'mean_image'


def write(path: str | os.PathLike[str], config: ml_collections.ConfigDict, params: Any,
          mean_image: np.ndarray) -> None:
  """Writes the run's params, mean image and config to `path`."""
  numpy_io = optional.require('safetensors.numpy', 'writing a safetensors file')
  tensors = {f'{layer}/{part}': np.ascontiguousarray(np.asarray(value, np.float32))
             for layer, parts in params.items() for part, value in parts.items()}
  tensors[MEAN] = np.ascontiguousarray(np.asarray(mean_image, np.float32))
  metadata = {METADATA_KEY: json.dumps({'format': FORMAT, 'config': config.to_dict()},
                                       sort_keys=True)}
  numpy_io.save_file(tensors, os.fspath(path), metadata=metadata)


def _open(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  safetensors = optional.require('safetensors', 'reading a safetensors file')
  numpy_io = optional.require('safetensors.numpy', 'reading a safetensors file')
  if not os.path.isfile(path):
    raise errors.MissingInputError(f'{path} does not exist')
  try:
    with safetensors.safe_open(path, framework='numpy') as f:
      metadata = f.metadata() or {}
    return numpy_io.load_file(path), metadata
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise errors.InputError(f'{path} is not a safetensors file: {errors.first_line(e, 200)}') from e


def read(path: str | os.PathLike[str]) -> layout.RunWeights:
  """The config, params and mean image a file of `write` holds."""
  path = os.fspath(path)
  tensors, metadata = _open(path)
  try:
    header = json.loads(metadata.get(METADATA_KEY, '{}'))
  except ValueError:
    header = {}
  if not isinstance(header, dict) or header.get('format') != FORMAT:
    raise errors.InputError(f'{path} is not a safetensors file exported by alexnet_jax (its '
                            f'metadata has no {METADATA_KEY!r} entry of format {FORMAT!r})')
  stored = header.get('config')
  if not isinstance(stored, dict):
    raise errors.InputError(f'{path} holds no run config in its metadata')
  known_fields.check(stored, where=path, fix='export it again from its run')
  if MEAN not in tensors:
    raise errors.InputError(f'{path} holds no {MEAN!r} tensor')
  params: dict[str, dict[str, np.ndarray]] = {}
  for name, value in tensors.items():
    if name != MEAN:
      layer, _, part = name.partition('/')
      params.setdefault(layer, {})[part] = value
  return layout.RunWeights(ml_collections.ConfigDict(stored), params, tensors[MEAN])
