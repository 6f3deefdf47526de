"""The run plan behind `launch.py --dry_run`: what a job will do, before it burns accelerator hours.

Resolves the config, builds the mesh, derives every weight's sharding, and
reports the batch split, the steps, the data each host reads, a per-device
memory estimate (`footprint`), the work of an epoch and, given a speed, how long the run
takes. Nothing is compiled or allocated: the state exists only as shapes
(`jax.eval_shape`).

By default it plans for the visible devices. With a `Target` (launch.py's
`--plan_devices=N --plan_processes=P --plan_platform=gpu ...`) it plans for a
cluster it does not have, from an abstract mesh: a login node or a laptop checks
a job before its accelerators are granted, with the choices the program will
make there (compute dtype, mesh.model 'auto', decoder threads).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from alexnet_jax.storage import checkpointing
from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.learning import experiment
from alexnet_jax.training import feed_plan
from alexnet_jax.training import footprint
from alexnet_jax.data import input_pipeline
from alexnet_jax.core import progress
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.storage import workdir_files

PLATFORMS = ('cpu', 'gpu', 'tpu')
GIB = 2**30
# The values each --plan_* number may take: beyond them a figure describes no machine,
# and the estimates would overflow (inf GiB), or print durations thousands of digits
# long (1e-300 images/s), or build an array of a device per entry (1e12 devices).
PLAN_RANGES = {
    'devices': (1, 2**20), 'processes': (1, 2**20), 'host_cores': (1, 2**16),
    'train_images': (1, 10**12), 'device_memory_gib': (1e-6, 1e6),
    'images_per_sec': (1e-3, 1e12), 'peak_tflops': (1e-3, 1e9),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """What to plan for (launch.py's --plan_* flags); every field None: the visible devices.

  devices, processes, platform, host_cores describe a cluster to plan for without
  having it; device_memory_gib, images_per_sec, peak_tflops with efficiency and
  train_images are figures the estimates use, for a target or the visible devices.
  """
  devices: Optional[int] = None  # accelerator chips of the whole job
  processes: Optional[int] = None  # processes (hosts, or one per GPU); default 1
  platform: Optional[str] = None  # 'cpu', 'gpu' or 'tpu': decides model.dtype 'auto'
  host_cores: Optional[int] = None  # CPU cores per process: data.num_threads -1
  device_memory_gib: Optional[float] = None  # memory per device the estimate must fit in
  images_per_sec: Optional[float] = None  # training images per second of the whole job
  peak_tflops: Optional[float] = None  # per device, at the compute dtype
  efficiency: Optional[float] = None  # fraction of peak_tflops a step achieves
  train_images: Optional[int] = None  # train split size when the dataset cannot be read

  def check(self) -> None:
    """Raises errors.InputError naming the first flag with an impossible value or combination."""
    def positive(name: str, value, kind=int) -> None:
      if value is None:
        return
      ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and (kind is float or float(value).is_integer()))
      if not ok:
        noun = 'a positive integer' if kind is int else 'a positive number'
        raise errors.InputError(f'--plan_{name} must be {noun}, got {value!r}')
      low, high = PLAN_RANGES[name]
      if not (math.isfinite(value) and low <= value <= high):
        raise errors.InputError(f'--plan_{name} must be in [{low:g}, {high:g}] (beyond that it '
                                f'describes no machine), got {value!r}')

    positive('devices', self.devices)
    positive('processes', self.processes)
    positive('host_cores', self.host_cores)
    positive('train_images', self.train_images)
    positive('device_memory_gib', self.device_memory_gib, float)
    positive('images_per_sec', self.images_per_sec, float)
    positive('peak_tflops', self.peak_tflops, float)
    if self.devices is None:
      for name in ('processes', 'platform', 'host_cores'):
        if getattr(self, name) is not None:
          raise errors.InputError(f'--plan_{name} describes the cluster to plan for: give '
                                  '--plan_devices too')
    else:
      if self.platform is None:
        raise errors.InputError(f'--plan_devices={self.devices} needs --plan_platform '
                                f'({", ".join(PLATFORMS)}): it decides the compute dtype')
      if self.devices % (self.processes or 1):
        raise errors.InputError(f'--plan_devices={self.devices} cannot be spread evenly over '
                                f'--plan_processes={self.processes}')
    if self.platform is not None and self.platform not in PLATFORMS:
      raise errors.InputError(f'--plan_platform must be one of {PLATFORMS}, got {self.platform!r}')
    if self.efficiency is not None and not 0 < self.efficiency <= 1:
      raise errors.InputError(f'--plan_efficiency must be in (0, 1], got {self.efficiency!r}')
    if (self.peak_tflops is None) != (self.efficiency is None):
      raise errors.InputError('--plan_peak_tflops and --plan_efficiency go together: the time '
                              'estimate is devices x peak x efficiency')
    if self.peak_tflops is not None and self.images_per_sec is not None:
      raise errors.InputError('give --plan_images_per_sec or --plan_peak_tflops with '
                              '--plan_efficiency, not both')

  def used_without_dry_run(self) -> None:
    """Raises errors.InputError when a --plan_* flag was given to a command that trains."""
    given = [f'--plan_{f.name}' for f in dataclasses.fields(self) if getattr(self, f.name)
             is not None]
    if given:
      raise errors.InputError(f'{given[0]} describes a plan: use it with --dry_run')


@dataclasses.dataclass(frozen=True)
class Plan:
  backend: str  # the platform planned for
  planned: bool  # True: a Target's cluster, planned from an abstract mesh
  num_devices: int
  num_processes: int
  mesh_data: int
  mesh_model: int
  mesh_note: str  # how mesh.model 'auto' was resolved ('' when explicit)
  dtype: str
  dtype_note: str
  num_threads: int  # decoder threads per host
  worker_count: int  # grain worker processes per host (0: the threads alone)
  threads_note: str
  feeding: resolution.Feeding  # projected input images/s per host against the step's need
  feed: feed_plan.FeedPlan  # the storage read and the loaders that keep up with the step
  global_batch: int
  batch_per_process: int  # images each process reads per step
  batch_per_device: int  # images each model replica's device sees per step
  data_note: str
  train_examples: int | None  # None: not known (dataset unreachable or still to prepare)
  val_examples: int | None
  steps_per_epoch: int | None
  total_steps: int | None
  train_examples_per_host_epoch: int | None
  param_count: int
  memory: footprint.Memory
  device_memory_gib: float | None  # Target.device_memory_gib
  flops_per_image: int  # training, per image
  epoch_flops: int | None  # the images of one epoch's steps
  images_per_sec: float | None  # whole job: given, or devices x peak x efficiency
  speed_note: str
  shards: list[placement.ShardInfo]
  whole_note: str  # why fc8 is whole on every device ('' when it is split)
  not_computed: tuple[str, ...]

  @property
  def param_bytes_per_device(self) -> int:
    return self.memory.params

  @property
  def device_memory(self) -> int | None:
    return None if self.device_memory_gib is None else int(self.device_memory_gib * GIB)

  @property
  def epoch_seconds(self) -> float | None:
    if self.images_per_sec is None or self.steps_per_epoch is None:
      return None
    return self.steps_per_epoch * self.global_batch / self.images_per_sec

  @property
  def run_seconds(self) -> float | None:
    if self.images_per_sec is None or self.total_steps is None:
      return None
    return self.total_steps * self.global_batch / self.images_per_sec


# ----------------------------------------------------------------------------- the plan


def _process_owners(data: int, model: int, processes: int) -> np.ndarray:
  """owners[i, j]: the process of mesh device (i, j) when each process holds consecutive ones.

  That is how a cluster's devices fill the mesh (make_mesh keeps a host's devices
  together); one process per GPU with model=2 puts a pair on two processes.
  """
  return np.arange(data * model).reshape(data, model) // (data * model // processes)


def _planned_batch_split(mesh_data: int, mesh_model: int, processes: int) -> int:
  """Slices each global batch is cut into for the processes (placement.data_shard's count)."""
  owners = _process_owners(mesh_data, mesh_model, processes)
  counts = set()
  for p in range(processes):
    try:
      counts.add(placement.data_shard_of(owners, p)[1])
    except errors.InputError:
      raise errors.InputError(
          f'--plan_processes={processes} puts {mesh_data * mesh_model // processes} '
          f'devices in each process, which cuts the model pairs of the mesh '
          f'data={mesh_data} x model={mesh_model} unevenly (a process holds whole '
          'pairs, or one device of one pair); choose another --plan_processes') from None
  return counts.pop()


def _read_dataset(config: ml_collections.ConfigDict, target: Target
                  ) -> tuple[Optional[input_pipeline.DatasetInfo], Optional[int], str]:
  """(info or None, train split size or None, what the plan says about the data)."""
  try:
    info = input_pipeline.load_info(config.data)
  except FileNotFoundError:
    if config.data.prepare_from:
      note = (f'{config.data.dir} will be prepared from {config.data.prepare_from!r} in '
              f'{config.data.storage} storage on the first run')
    else:
      note = (f'no prepared dataset at {config.data.dir} on this machine' if config.data.dir
              else 'config.data.dir is not set')
    if target.train_images is not None:
      return None, target.train_images, f'{note}; train split size from --plan_train_images'
    return None, None, note
  experiment.check_val_split(config, info)  # the run would refuse it: so does its plan
  return info, info.split_sizes['train'], f'{config.data.source} dataset at {config.data.dir}'


def _choice_notes(raw: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                  platform: str, cores_from: str) -> tuple[str, str]:
  """Where the compute dtype and the decoder threads came from, in words."""
  dtype_note = (f"model.dtype 'auto' on {platform}" if raw.model.dtype == 'auto'
                else 'config.model.dtype')
  workers = config.data.worker_count > 0
  if raw.data.num_threads == -1:
    threads_note = ('data.num_threads -1: one per worker process' if workers
                    else f'data.num_threads -1: one per core; {cores_from}')
  else:
    threads_note = 'config.data.num_threads'
  if raw.data.worker_count == -1 and resolution.raw_pixels(config.data):
    threads_note += '; data.worker_count -1: none, a raw dataset is read by threads'
  elif raw.data.worker_count == -1:
    threads_note += ("; data.worker_count -1: one per core, threads cannot keep up" if workers
                     else '; data.worker_count -1: none, threads keep up')
    if workers and raw.data.num_threads == -1:
      threads_note += f' ({cores_from})'
  return dtype_note, threads_note


@dataclasses.dataclass(frozen=True)
class _Topology:
  config: ml_collections.ConfigDict  # resolved for the platform and cores planned for
  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
  platform: str
  processes: int
  batch_slices: int  # placement.data_shard's count: slices of each batch over the processes
  cores_from: str  # where the decoder-thread count came from, in words
  feeding: resolution.Feeding  # the input projection data.worker_count -1 decided by


def _topology(raw: ml_collections.ConfigDict, target: Target) -> _Topology:
  """The resolved config and the mesh: of the visible devices, or of the target's."""
  if target.devices is None:
    cores = os.cpu_count() or 1
    config = resolution.load(raw)
    mesh = experiment.create_mesh(config)
    feed = resolution.feeding_for(raw, jax.default_backend(), cores, jax.device_count(),
                                  jax.process_count())
    return _Topology(config, mesh, jax.default_backend(), jax.process_count(),
                     placement.data_shard(mesh)[1], f"this machine's {cores} cores", feed)
  if target.host_cores is None:
    cores = os.cpu_count() or 1
    cores_from = f"this machine's {cores} cores, as no --plan_host_cores was given"
  else:
    cores, cores_from = target.host_cores, f'--plan_host_cores={target.host_cores}'
  processes = target.processes or 1
  config = resolution.load(raw, platform=target.platform, cpu_count=cores,
                           devices=target.devices, processes=processes)
  mesh = experiment.create_abstract_mesh(config, target.devices)
  slices = _planned_batch_split(mesh.shape['data'], mesh.shape['model'], processes)
  feed = resolution.feeding_for(raw, target.platform, cores, target.devices, processes)
  return _Topology(config, mesh, target.platform, processes, slices, cores_from, feed)


def _speed(target: Target, num_devices: int, flops_per_image: int
           ) -> tuple[float | None, str]:
  """Training images per second of the whole job, and where the figure came from."""
  if target.peak_tflops is None:
    return target.images_per_sec, '--plan_images_per_sec'
  flops_per_sec = num_devices * target.peak_tflops * 1e12 * target.efficiency
  return flops_per_sec / flops_per_image, (f'{num_devices} devices x {target.peak_tflops:g} '
                                           f'TFLOP/s x efficiency {target.efficiency:g}')


def _whole_note(config: ml_collections.ConfigDict, exp: experiment.Experiment) -> str:
  """Why fc8 is whole on every device, when the mesh's rules keep it whole ('' otherwise)."""
  sizes = dict(exp.mesh.shape)
  configured = footprint.output_splits(meshes.logical_rules(config), sizes)['classes']
  if footprint.output_splits(exp.rules, sizes)['classes'] == 1 and configured > 1:
    return (f'whole on every device: {exp.model.num_classes} classes do not split over '
            f'{configured} devices (docs/sharding.md)')
  return ''


def build_plan(config: ml_collections.ConfigDict, target: Target | None = None) -> Plan:
  """The plan of `config` on the visible devices, or on `target`'s.

  Raises errors.InputError for a bad config, mesh or target, and when the estimate
  exceeds target.device_memory_gib (naming the largest per-device batch that fits).
  """
  target = target or Target()
  target.check()
  top = _topology(config, target)
  raw, config, mesh = config, top.config, top.mesh
  data_axis, model_axis = mesh.shape['data'], mesh.shape['model']
  dtype_note, threads_note = _choice_notes(raw, config, top.platform, top.cores_from)

  info, train_n, data_note = _read_dataset(config, target)
  exp = experiment.setup(config, info, mesh=mesh)
  batch_per_device = config.batch_size // data_axis
  param_rows, memory = footprint.device_memory(exp, batch_per_device)
  flops_per_image = footprint.training_flops_per_image(exp.model, config.data.crop_size)
  images_per_sec, speed_note = _speed(target, mesh.size, flops_per_image)
  spe = steps = per_host = epoch_flops = None
  not_computed = []
  if train_n is not None:
    spe, steps = experiment.count_steps_for(config, train_n)
    per_host = train_n // top.batch_slices
    epoch_flops = spe * config.batch_size * flops_per_image
  else:
    not_computed += ['steps per epoch', 'total steps', 'train images per process',
                     'FLOPs per epoch']
  if images_per_sec is None:
    not_computed.append('time per epoch and per run (give --plan_images_per_sec, or '
                        '--plan_peak_tflops with --plan_efficiency)')
  elif spe is None:
    not_computed.append('time per epoch and per run')

  plan = Plan(
      backend=top.platform, planned=target.devices is not None, num_devices=mesh.size,
      num_processes=top.processes, mesh_data=data_axis, mesh_model=model_axis,
      mesh_note=meshes.mesh_shape(config.mesh, mesh.size, config.model).note,
      dtype=str(config.model.dtype), dtype_note=dtype_note, num_threads=config.data.num_threads,
      worker_count=config.data.worker_count,
      threads_note=threads_note, feeding=top.feeding,
      feed=feed_plan.plan_feed(config.data, top.feeding, global_batch=config.batch_size,
                               images_per_sec=images_per_sec, speed_note=speed_note,
                               cores=target.host_cores),
      global_batch=config.batch_size,
      batch_per_process=config.batch_size // top.batch_slices,
      batch_per_device=batch_per_device, data_note=data_note, train_examples=train_n,
      val_examples=None if info is None else info.split_sizes.get('val'),
      steps_per_epoch=spe, total_steps=steps, train_examples_per_host_epoch=per_host,
      param_count=sum(math.prod(r.shape) for r in param_rows), memory=memory,
      device_memory_gib=target.device_memory_gib, flops_per_image=flops_per_image,
      epoch_flops=epoch_flops, images_per_sec=images_per_sec, speed_note=speed_note,
      shards=param_rows, whole_note=_whole_note(config, exp), not_computed=tuple(not_computed))
  check_memory(plan)
  return plan


def check_memory(plan: Plan) -> None:
  """Raises errors.InputError when the estimate exceeds the device memory the user named."""
  if plan.device_memory is None or plan.memory.total <= plan.device_memory:
    return
  m = plan.memory
  largest = m.largest_batch(plan.device_memory)
  if largest:
    advice = (f'the largest per-device batch that fits is {largest} (config.batch_size='
              f'{largest * plan.mesh_data} on the data axis of {plan.mesh_data})')
  else:
    advice = ('not even one image per device fits: split the weights over more devices '
              '(config.mesh.model) or narrow the network (config.model.width)')
  raise errors.InputError(
      f'the plan needs about {_size(m.total)} per device (weights, gradients and optimizer '
      f'state {_size(m.params + m.gradients + m.opt_state)}, activations '
      f'{_size(m.activations)} at {plan.batch_per_device} images per device), more than '
      f'--plan_device_memory_gib={plan.device_memory_gib:g}; {advice}')


# ----------------------------------------------------------------------------- output


def _mib(n: int) -> str:
  return f'{n / 2**20:,.1f} MiB'


def _size(n: int) -> str:
  return f'{n / GIB:,.2f} GiB' if n >= GIB else _mib(n)


def _duration(seconds: float) -> str:
  return f'{progress.format_duration(seconds)} ({seconds:,.0f} s)'


def _memory_lines(plan: Plan) -> list[str]:
  """The parameter count and what one device holds, against the device memory if given."""
  m = plan.memory
  lines = [
      f'parameters: {plan.param_count:,}',
      'memory per device:',
      f'  params          {m.params:>16,} bytes ({_mib(m.params)})',
      f'  gradients       {m.gradients:>16,} bytes ({_mib(m.gradients)})',
      f'  optimizer state {m.opt_state:>16,} bytes ({_mib(m.opt_state)})',
      f'  activations     {m.activations:>16,} bytes ({_mib(m.activations)}; estimate: '
      f'{plan.batch_per_device} images per device x {m.activations_per_image:,} bytes, '
      f'{plan.dtype})',
      f'  total           {m.total:>16,} bytes ({_size(m.total)})',
  ]
  if plan.device_memory is not None:
    lines.append(f'  fits in --plan_device_memory_gib={plan.device_memory_gib:g}; the largest '
                 f'per-device batch that fits is {m.largest_batch(plan.device_memory)}')
  return lines


def format_plan(plan: Plan) -> str:
  lines = []
  if plan.planned:
    processes = f'{plan.num_processes} process{"es" if plan.num_processes > 1 else ""}'
    lines.append(f'plan for: {plan.num_devices} {plan.backend} device'
                 f'{"s" if plan.num_devices > 1 else ""} in {processes} (--plan_devices; an '
                 'abstract mesh, no devices used)')
  lines += [
      f'devices: {plan.num_devices} ({plan.backend}), processes: {plan.num_processes}, '
      f'mesh data={plan.mesh_data} x model={plan.mesh_model}, compute dtype {plan.dtype}',
  ]
  if plan.mesh_note:
    lines.append(f'  {plan.mesh_note}')
  lines += [
      f'  compute dtype {plan.dtype} ({plan.dtype_note}); parameters stay float32',
      f'  decoder threads per host: {plan.num_threads}, worker processes: {plan.worker_count} '
      f'({plan.threads_note})',
      f'  {plan.feeding.describe()}',
      *(f'  {line}' for line in plan.feed.describe()),
      f'batch: global {plan.global_batch}, per process {plan.batch_per_process}, '
      f'per device {plan.batch_per_device}',
      f'data: {plan.data_note}',
  ]
  if plan.steps_per_epoch is not None:
    val = '' if plan.val_examples is None else f', val {plan.val_examples} images'
    lines += [
        f'  train {plan.train_examples} images{val}',
        f'  steps per epoch {plan.steps_per_epoch}, total steps {plan.total_steps}',
        f'  each process reads {plan.train_examples_per_host_epoch} train images per epoch',
    ]
  lines += _memory_lines(plan)
  work = (f'work: {plan.flops_per_image:,} FLOP per training image (3 x 2 x the forward '
          'multiply-adds)')
  if plan.epoch_flops is not None:
    work += f', {plan.epoch_flops:,} FLOP per epoch ({plan.epoch_flops:.3g})'
  lines.append(work)
  if plan.epoch_seconds is not None:
    epochs = plan.total_steps / plan.steps_per_epoch
    lines.append(f'time: {plan.images_per_sec:,.0f} images/s ({plan.speed_note}): '
                 f'{_duration(plan.epoch_seconds)} per epoch, {_duration(plan.run_seconds)} for '
                 f'{epochs:g} epochs (training steps only, evaluation not counted)')
  if plan.not_computed:
    lines.append(f'not computed: {", ".join(plan.not_computed)}')
  lines.append('sharding (weight, global shape, mesh axes, per-device shard):')
  for r in plan.shards:
    note = f'  {plan.whole_note}' if plan.whole_note and "['fc8']" in r.path else ''
    lines.append(f'  {r.path:<20} {str(r.shape):<18} {str(tuple(r.spec)):<28} '
                 f'{r.shard_shape}{note}')
  return '\n'.join(lines)


def dry_run(config: ml_collections.ConfigDict, workdir: str, target: Target | None = None) -> Plan:
  """Prints the plan of a run in `workdir` and returns it; trains nothing, writes nothing.

  Refuses what the run would refuse before training: a dataset without validation
  images, a resume whose config changes what the run computes, a workdir that is not
  a folder, a lock path no run could take.
  """
  target = target or Target()
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    # The run would refuse it when it makes the workdir (workdir_files.prepare_workdir).
    raise errors.UserError(f'workdir {workdir!r} cannot be written: it exists and is not a '
                           'folder')
  plan = build_plan(config, target)
  # The config as the planned run resolves it: its platform decides model.dtype 'auto'.
  resolved = resolution.load(config, platform=target.platform, cpu_count=target.host_cores,
                             devices=target.devices, processes=target.processes)
  accepted = workdir_files.check_resume(workdir, resolved)
  resume = bool(checkpointing.finished_steps(workdir))
  holder = workdir_files.lock_status(workdir)  # refuses a lock path a run could not take
  print(format_plan(plan))
  state = f'resumes from step {checkpointing.finished_steps(workdir)[-1]}' if resume else 'new run'
  if accepted:
    state += '; changed fields it accepts: ' + ', '.join(c.field for c in accepted)
  if holder:
    state += f'; in use by a run: {holder}'
  print(f'workdir: {workdir} ({state})')
  return plan
