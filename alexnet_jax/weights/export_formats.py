"""The writers of export_weights: torchvision's state_dict and safetensors, from a read run.

Each takes a FinishedRun (evaluation.finished_run) and an output path, writes the file
atomically (a temporary file renamed into place) and raises errors.InputError for a
run its format cannot hold.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import ml_collections

from alexnet_jax.core import errors
from alexnet_jax.evaluation import finished_run
from alexnet_jax.model import alexnet
from alexnet_jax.weights import layout
from alexnet_jax.weights import safetensors_io
from alexnet_jax.weights import torchvision_io


def torchvision_mismatch(config: ml_collections.ConfigDict) -> str | None:
  """Why torchvision's AlexNet layout cannot hold the run's network, or None when it can.

  The layout is one tower without LRN, conv1 padded by 2, 3x3 pooling with stride 2 and
  a 6x6 map into fc6 (torchvision's adaptive average pool to 6x6 is then the identity).
  Widths may differ from torchvision's alexnet (64-192-384-256-256, 4096): the state_dict
  then loads into that class built with the run's widths.
  """
  m = config.model
  pool5 = alexnet.spatial_sizes(config.data.crop_size, m.conv1_padding, m.pool_size,
                                m.pool_stride)['pool5']
  checks = [
      (m.towers == 1, f'{m.towers} towers (torchvision has one)'),
      (not m.use_lrn, 'LRN (torchvision has none)'),
      (m.conv1_padding == 2, f'conv1 padding {m.conv1_padding} (torchvision: 2)'),
      ((m.pool_size, m.pool_stride) == (3, 2),
       f'{m.pool_size}x{m.pool_size} pooling with stride {m.pool_stride} (torchvision: 3, 2)'),
      (pool5 == 6, f'a {pool5}x{pool5} map into fc6 at {config.data.crop_size} crops '
                   '(torchvision: 6x6)'),
  ]
  reasons = [why for ok, why in checks if not ok]
  return '; '.join(reasons) if reasons else None


def _atomic(path: str, write: Callable[[str], None]) -> None:
  """write(temporary path) in `path`'s folder, then renamed onto `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_torchvision(run: finished_run.FinishedRun, path: str) -> None:
  """torchvision's alexnet state_dict of the run; refuses another architecture."""
  why = torchvision_mismatch(run.config)
  if why is not None:
    raise errors.InputError(f'torchvision\'s AlexNet layout cannot hold this run\'s network: {why}; '
                            'export it --to=safetensors (any run) instead')
  net = layout.from_flax(run.params, run.config)
  _atomic(path, lambda tmp: torchvision_io.write(net, tmp))


def write_safetensors(run: finished_run.FinishedRun, path: str) -> None:
  """The run's params, mean image and config in one safetensors file (any run)."""
  _atomic(path, lambda tmp: safetensors_io.write(tmp, run.config, run.params,
                                                 run.info.mean_image))
