"""The config of a run: the hardware-dependent choices filled in, then every field checked.

Every entry point (launch.py's train and dry run, predict, summary) calls
`resolve_auto` and `validate` once, before anything is compiled or written, so
a bad value is one line naming the field; `resolve_auto` first refuses a field
that no config has (known_fields). The modules below this one trust
the config they are given.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax.config import eval_schema
from alexnet_jax.config import known_fields
from alexnet_jax.core import errors
from alexnet_jax.data import raw_format
from alexnet_jax.model import alexnet
from alexnet_jax.learning import optim
from alexnet_jax.sharding import meshes

# data.device_prefetch of configs that lack it (written before it existed); configs/imagenet.py
# sets the same.
DEFAULT_DEVICE_PREFETCH = 2
# data.storage of configs written before it: automatic preparation wrote JPEG shards.
DEFAULT_STORAGE = 'jpeg'

# Feeding the step (docs/design.md, "Input pipeline on a GPU host"): what one core of the
# train pipeline does, measured with benchmarks/loader_baseline.py on prepared 256x256
# shards (benchmarks/README.md, section 3), and the step it must keep up with.
RECORD_SECONDS = 359e-6  # one record on one thread: read, decode, crop, flip, lighting, batch
GIL_SECONDS = 68e-6  # of which the GIL is held: the same pipeline with the decoder stubbed
PROCESS_EFFICIENCY = 0.57  # N worker processes against N x one thread (H200 host, 16 cores)
# Train-step images/s per device of the paper net by per-device batch (docs/design.md,
# "Step rates"): CPU the quiet float32 row; GPU one H200 in bfloat16. TPU: not measured,
# the H200's figures stand in. Between batches: linear; outside: the nearest.
STEP_IMAGES_PER_SEC = {
    'cpu': ((64, 27.5),),
    'gpu': ((128, 23_451.0), (256, 27_235.0), (512, 29_682.0), (1024, 30_747.0)),
}
STEP_IMAGES_PER_SEC['tpu'] = STEP_IMAGES_PER_SEC['gpu']


def thread_images_per_sec(cores: int) -> float:
  """Amdahl's projection for `cores` decoder threads: the GIL-held part runs one at a time.

  An upper bound: on the H200 host 16 threads fed 2,623 images/s where this says
  11,600 (threads waiting for the GIL cost more than the time it is held).
  """
  return 1.0 / (GIL_SECONDS + (RECORD_SECONDS - GIL_SECONDS) / cores)


def process_images_per_sec(cores: int) -> float:
  """`cores` worker processes: each decodes on its own GIL, at PROCESS_EFFICIENCY."""
  return cores * PROCESS_EFFICIENCY / RECORD_SECONDS


def step_images_per_sec(platform: str, batch_per_device: int) -> float:
  """Images/s one device's train step takes at this per-device batch (STEP_IMAGES_PER_SEC)."""
  # Another accelerator backend (a ROCm GPU reports 'gpu' too): the H200's figures.
  batches, rates = zip(*STEP_IMAGES_PER_SEC.get(platform, STEP_IMAGES_PER_SEC['gpu']))
  return float(np.interp(batch_per_device, batches, rates))


@dataclasses.dataclass(frozen=True)
class Feeding:
  """The input-pipeline choice of data.worker_count -1 and the figures behind it."""
  cores: int
  batch_per_device: int  # images a model replica (a device, or a pair on mesh.model=2) steps on
  batch_per_process: int  # images one process reads per step
  threads: float  # images/s `cores` threads project
  processes: float  # images/s `cores` worker processes project
  need: float  # images/s the step takes from one process
  raw: bool = False  # a raw-pixel dataset: the gather's threads, never worker processes

  @property
  def use_processes(self) -> bool:
    return not self.raw and self.threads < self.need

  def describe(self) -> str:
    if self.raw:  # the gather's threads copy crops, releasing the GIL: they add up
      return (f'input per host: raw storage, read by {self.cores} gather threads, never worker '
              f'processes; the step needs {self.need:,.0f} images/s (batch '
              f'{self.batch_per_device} per device, {self.batch_per_process} per process): '
              'data.worker_count -1 chooses threads')
    choice = (f'data.worker_count -1 chooses {self.cores} worker processes' if self.use_processes
              else 'data.worker_count -1 chooses threads (no worker processes)')
    short = ' (short of the step: it will wait for input)' if (
        max(self.threads, self.processes) < self.need) else ''
    return (f'input per host: {self.cores} threads project {self.threads:,.0f} images/s, '
            f'{self.cores} processes {self.processes:,.0f}; the step needs {self.need:,.0f} '
            f'(batch {self.batch_per_device} per device, {self.batch_per_process} per '
            f'process): {choice}{short}')


def feeding(platform: str, cores: int, batch_per_device: int,
            batch_per_process: int, raw: bool = False) -> Feeding:
  """Threads or worker processes for one process's input (see resolve_auto).

  The step runs step_images_per_sec / batch_per_device steps a second, and each
  step takes batch_per_process images from this process. `raw`: a raw-pixel dataset,
  read by the gather's threads whatever the need (the dry run's input lines say how
  many keep up: `training/feed_plan.py`).
  """
  need = step_images_per_sec(platform, batch_per_device) * batch_per_process / batch_per_device
  return Feeding(cores=cores, batch_per_device=batch_per_device,
                 batch_per_process=batch_per_process, threads=thread_images_per_sec(cores),
                 processes=process_images_per_sec(cores), need=need, raw=raw)


def feeding_for(config: ml_collections.ConfigDict, platform: str, cores: int, devices: int,
                processes: int) -> Feeding:
  """`feeding` of a config's batch on `devices` devices in `processes` processes.

  The batch is split over the mesh's data axis (all devices when the mesh does not
  fit these devices: the run refuses it later, with its own message), and over the
  processes that hold different rows of it (at most one slice per data index).
  """
  try:
    data = meshes.mesh_shape(config.mesh, devices, config.model).data
  except (errors.InputError, ValueError, TypeError, KeyError, AttributeError):
    data = devices
  data = max(1, data)
  batch_per_device = max(1, int(config.batch_size) // data)
  slices = max(1, min(processes, data))
  return feeding(platform, cores, batch_per_device, max(1, int(config.batch_size) // slices),
                 raw=raw_pixels(config.data))


def resolve_auto(config: ml_collections.ConfigDict, *, platform: str | None = None,
                 cpu_count: int | None = None, devices: int | None = None,
                 processes: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the settings the program chooses for the hardware filled in.

  model.dtype 'auto': bfloat16 compute on GPU/TPU (params stay float32), float32 on
  CPU, where bfloat16 is slower. data.worker_count -1: one grain worker process per
  core where `cores` threads cannot keep up with the step (`feeding`: Amdahl's
  projection of the threads, whose per-record Python holds the GIL, against the
  step's images/s at the per-device batch times the devices of a process), else 0.
  On an H200 host 16 threads fed 2,600 images/s where 16 processes fed 16,000
  (docs/design.md, "Input pipeline on a GPU host"); a CPU's step needs ~30. data.num_threads
  -1: one decoder thread per core without worker processes, one per worker with them.
  A raw-pixel dataset already in data.dir always takes threads (worker_count 0): its
  batch-level gather's threads release the GIL while they copy (`data.gather`).
  platform ('cpu', 'gpu', 'tpu'), cpu_count, devices and processes default to this
  machine's; the dry run passes those of the cluster it plans for, so both use this one rule.
  A field that no config has (a typo) is refused first (known_fields).
  """
  known_fields.check(config)
  values = config.to_dict()
  values['mesh']['model'] = _mesh_size(values['mesh'].get('model'))
  config = ml_collections.ConfigDict(values)
  if 'device_prefetch' not in config.data:  # a config written before the field existed
    config.data.device_prefetch = DEFAULT_DEVICE_PREFETCH
  if 'storage' not in config.data:
    config.data.storage = DEFAULT_STORAGE
  platform = jax.default_backend() if platform is None else platform
  cores = (os.cpu_count() or 1) if cpu_count is None else cpu_count
  if config.model.dtype == 'auto':
    config.model.dtype = 'float32' if platform == 'cpu' else 'bfloat16'
  if config.data.worker_count == -1:
    feed = feeding_for(config, platform, cores,
                       jax.device_count() if devices is None else devices,
                       jax.process_count() if processes is None else processes)
    config.data.worker_count = cores if feed.use_processes else 0
  if _is_int(config.data.worker_count) and config.data.worker_count > cores:
    # Each worker holds a copy of the pipeline (~350 MB): a thousand would exhaust the memory
    # long before they fed more images than one per core does.
    logging.warning('data.worker_count=%d cut to %d, the CPU cores of this host (each worker '
                    'process decodes on one core)', config.data.worker_count, cores)
    config.data.worker_count = cores
  if config.data.num_threads == -1:
    config.data.num_threads = 1 if config.data.worker_count > 0 else cores
  return config


def raw_pixels(data: ml_collections.ConfigDict) -> bool:
  """Whether data.dir already holds a raw-pixel prepared dataset (trained on by threads)."""
  return data.source == 'prepared' and bool(data.dir) and raw_format.is_raw(str(data.dir))


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


def check_checkpoint_config(checkpoint_config: Any) -> None:
  """Raises errors.InputError naming the first of config.checkpoint's counts that is not one.

  The one check of every_steps and keep: validate calls it for a run's
  config, storage's Checkpointer for its own arguments. keep_best and start_fresh_if_unusable
  are read as truth values.
  """
  for field in ('every_steps', 'keep'):
    value = checkpoint_config.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise errors.InputError(f'config.checkpoint.{field} must be a positive integer, got {value!r}')


# config.init_from's STEP words, as evaluate's and predict's --step take them.
INIT_FROM_STEPS = ('newest', 'best')


def parse_init_from(text: str) -> tuple[str, str | int]:
  """config.init_from 'WORKDIR[:STEP]' as (WORKDIR, STEP): STEP a number, 'newest' or 'best'.

  The text after the last ':' is STEP unless it holds a path separator, so a workdir
  whose name has a ':' is written with a trailing '/'. STEP defaults to 'newest'.
  Raises errors.InputError for an empty WORKDIR or a STEP that is none of these.
  """
  if not isinstance(text, str) or not text:
    raise errors.InputError(f'config.init_from must be WORKDIR[:STEP], got {text!r}')
  workdir, sep, step = text.rpartition(':')
  if not sep or '/' in step or os.sep in step:
    workdir, step = text, INIT_FROM_STEPS[0]
  if not workdir:
    raise errors.InputError(f'config.init_from must be WORKDIR[:STEP], got {text!r}: the '
                            'workdir is empty')
  if step in INIT_FROM_STEPS:
    return workdir, step
  if step.isascii() and step.isdigit():  # 0-9 only: no sign, no spaces
    return workdir, int(step)
  raise errors.InputError(
      f'config.init_from={text}: STEP must be a checkpoint step (0, 1, ...), '
      f"{' or '.join(repr(s) for s in INIT_FROM_STEPS)}, got {step!r}")


WANDB_MODES = ('', 'online', 'offline', 'disabled')


def _check_wandb(section: Any) -> None:
  """config.log.wandb: text fields, a known mode, and the wandb package where a project is set."""
  for field in ('project', 'entity', 'name', 'mode'):
    value = section.get(field, '')
    if not isinstance(value, str):
      raise errors.InputError(f'config.log.wandb.{field} must be text, got {value!r}')
  if section.get('mode', '') not in WANDB_MODES:
    raise errors.InputError(f'config.log.wandb.mode must be one of {WANDB_MODES}, got '
                            f'{section.get("mode")!r}')
  # find_spec looks for the package without importing it: W&B off costs nothing.
  if section.get('project', '') and importlib.util.find_spec('wandb') is None:
    raise errors.InputError(
        f'config.log.wandb.project is {section.get("project")!r} but the wandb package is not '
        "installed: pip install wandb (requirements.txt pins it), or leave the project '' for "
        'no W&B')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first field of a resolved config with an impossible value.

  The one entry point of the config checks, and each field is checked in one
  function: the top-level, data, log and checkpoint fields here (the checkpoint
  module sits above this package and calls check_checkpoint_config); each other
  section by the module below that uses it: config.optim (optim.validate_optim_config), the mesh sizes' form
  (meshes.check_mesh_config), the mesh rules (meshes.logical_rules) and config.model
  with the network at the configured crop (alexnet.check_fields, via AlexNet.check).
  The library used without a config (an AlexNet when applied, a Checkpointer,
  PlateauSchedule.from_config) runs the same function, so it refuses the same values
  with the same message; no other code checks these fields again. Whether the mesh fits the
  devices depends on them and is checked when the mesh is made.
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
  eval_schema.validate_evals(config)
  init_from = config.get('init_from', '')
  need(isinstance(init_from, str), 'init_from', "text: 'WORKDIR[:STEP]' or ''")
  if init_from:
    parse_init_from(init_from)
  d = config.data
  need(_is_int(d.crop_size) and d.crop_size > 0, 'data.crop_size', 'a positive integer')
  need(_is_int(d.image_size) and d.image_size >= d.crop_size, 'data.image_size',
       f'an integer >= data.crop_size ({d.crop_size})')
  need(isinstance(d.random_crop, bool), 'data.random_crop', 'True or False')
  need(d.lighting_std >= 0, 'data.lighting_std', '>= 0')
  need(d.mean in ('pixel', 'channel'), 'data.mean', "'pixel' or 'channel'")
  need(d.storage in ('jpeg', 'raw'), 'data.storage', "'jpeg' or 'raw'")
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
  _check_wandb(config.log.get('wandb') or {})
  check_checkpoint_config(config.checkpoint)
  optim.validate_optim_config(config.optim)
  meshes.check_mesh_config(config.mesh)
  meshes.logical_rules(config)
  alexnet.from_config(config.model).check((1, d.crop_size, d.crop_size, 3))


def load(config: ml_collections.ConfigDict, *, platform: str | None = None,
         cpu_count: int | None = None, devices: int | None = None,
         processes: int | None = None) -> ml_collections.ConfigDict:
  """resolve_auto, then validate: the config an entry point works with."""
  config = resolve_auto(config, platform=platform, cpu_count=cpu_count, devices=devices,
                        processes=processes)
  validate(config)
  return config
