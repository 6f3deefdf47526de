"""The config of a run: the hardware-dependent choices filled in, then every field checked.

Every entry point (launch.py's train and dry run, predict, summary) calls
`resolve_auto` and `validate` once, before anything is compiled or written, so
a bad value is one line naming the field. The modules below this one trust
the config they are given.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from alexnet_jax import errors
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import sharding

# data.device_prefetch of configs that lack it (written before it existed); configs/imagenet.py
# sets the same.
DEFAULT_DEVICE_PREFETCH = 2

def resolve_auto(config: ml_collections.ConfigDict, *, platform: str | None = None,
                 cpu_count: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the settings the program chooses for the hardware filled in.

  model.dtype 'auto': bfloat16 compute on GPU/TPU (params stay float32), float32 on
  CPU, where bfloat16 is slower. data.num_threads -1: one decoder thread per core.
  data.worker_count -1: one grain worker process per core on GPU/TPU, none on CPU.
  Threads suffice for a CPU job's few images per second, but on an H200 host 16
  threads fed 2,600 images/s where 16 processes fed 16,000 (the per-record Python
  holds the GIL; docs/design.md, "Input pipeline on a GPU host").
  platform ('cpu', 'gpu', 'tpu') and cpu_count default to this machine's; the dry
  run passes those of the cluster it plans for, so both use this one rule.
  """
  values = config.to_dict()
  values['mesh']['model'] = _mesh_size(values['mesh'].get('model'))
  config = ml_collections.ConfigDict(values)
  if 'device_prefetch' not in config.data:  # a config written before the field existed
    config.data.device_prefetch = DEFAULT_DEVICE_PREFETCH
  platform = jax.default_backend() if platform is None else platform
  cores = (os.cpu_count() or 1) if cpu_count is None else cpu_count
  if config.model.dtype == 'auto':
    config.model.dtype = 'float32' if platform == 'cpu' else 'bfloat16'
  if config.data.num_threads == -1:
    config.data.num_threads = cores
  if config.data.worker_count == -1:
    config.data.worker_count = 0 if platform == 'cpu' else cores
  return config


def _mesh_size(value: Any) -> Any:
  """'2' as 2: a config whose mesh.model field holds text ('auto' stored in a run's
  config.py) parses a command-line size as text."""
  if isinstance(value, str) and value.lstrip('-').isdigit():
    return int(value)
  return value


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of a dotted field name: get(config, 'data.crop_size')."""
  for part in dotted.split('.'):
    config = config[part]
  return config


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first field of a resolved config with an impossible value.

  Covers the top-level, data, log and checkpoint fields here; the optimizer
  (optim.validate_optim_config), the mesh sizes' form (sharding.check_mesh_config),
  the mesh rules (sharding.logical_rules) and the network at the configured crop
  (AlexNet.check). Whether the mesh fits the devices depends on them and is
  checked when the mesh is made.
  """

  def need(ok: bool, field: str, requirement: str) -> None:
    if not ok:
      raise errors.InputError(f'config.{field} must be {requirement}, got {get(config, field)!r}')

  need(_is_int(config.seed) and 0 <= config.seed < 2**31, 'seed', 'an integer in [0, 2**31)')
  need(_is_int(config.batch_size) and config.batch_size > 0, 'batch_size', 'a positive integer')
  need(_is_int(config.num_epochs) and config.num_epochs > 0, 'num_epochs', 'a positive integer')
  need(_is_int(config.num_train_steps) and (config.num_train_steps > 0
                                            or config.num_train_steps == -1),
       'num_train_steps', 'a positive integer or -1')
  need(_is_int(config.eval_every_epochs) and config.eval_every_epochs > 0, 'eval_every_epochs',
       'a positive integer')
  need(config.final_eval_crops in (1, 10), 'final_eval_crops', '1 or 10')
  d = config.data
  need(_is_int(d.crop_size) and d.crop_size > 0, 'data.crop_size', 'a positive integer')
  need(_is_int(d.image_size) and d.image_size >= d.crop_size, 'data.image_size',
       f'an integer >= data.crop_size ({d.crop_size})')
  need(isinstance(d.random_crop, bool), 'data.random_crop', 'True or False')
  need(d.lighting_std >= 0, 'data.lighting_std', '>= 0')
  need(d.mean in ('pixel', 'channel'), 'data.mean', "'pixel' or 'channel'")
  need(_is_int(d.num_threads) and d.num_threads >= 1, 'data.num_threads', 'a positive integer')
  need(_is_int(d.worker_count) and d.worker_count >= 0, 'data.worker_count', 'an integer >= 0')
  need(_is_int(d.device_prefetch) and d.device_prefetch >= 0, 'data.device_prefetch',
       'an integer >= 0')
  need(_is_int(config.log.every_steps) and config.log.every_steps > 0, 'log.every_steps',
       'a positive integer')
  profile = config.log.get('profile_steps', ())
  need(tuple(profile) == () or (len(profile) == 2 and all(_is_int(s) for s in profile)
                                and 1 <= profile[0] < profile[1]),
       'log.profile_steps', '() or (start, stop) with 1 <= start < stop')
  need(_is_int(config.checkpoint.every_steps) and config.checkpoint.every_steps > 0,
       'checkpoint.every_steps', 'a positive integer')
  need(_is_int(config.checkpoint.keep) and config.checkpoint.keep > 0, 'checkpoint.keep',
       'a positive integer')
  m = config.model
  need(_is_int(m.pool_size) and m.pool_size > 0, 'model.pool_size', 'a positive integer')
  need(_is_int(m.pool_stride) and m.pool_stride > 0, 'model.pool_stride', 'a positive integer')
  need(m.conv_widths is None or (
      isinstance(m.conv_widths, (tuple, list)) and len(m.conv_widths) == 5
      and all(_is_int(c) and c > 0 for c in m.conv_widths)),
       'model.conv_widths', 'None or five positive integers (conv1-conv5)')
  optim.validate_optim_config(config.optim)
  sharding.check_mesh_config(config.mesh)
  sharding.logical_rules(config)
  model_lib.from_config(config.model).check((1, d.crop_size, d.crop_size, 3))


def load(config: ml_collections.ConfigDict, *, platform: str | None = None,
         cpu_count: int | None = None) -> ml_collections.ConfigDict:
  """resolve_auto, then validate: the config an entry point works with."""
  config = resolve_auto(config, platform=platform, cpu_count=cpu_count)
  validate(config)
  return config
