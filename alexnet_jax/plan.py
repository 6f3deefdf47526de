"""The run plan behind `launch.py --dry_run`: what a job will do, before it burns accelerator hours.

Resolves the config for the visible devices, builds the mesh, derives every
weight's sharding, and reports the batch split, the steps, the data each host
reads and a per-device memory estimate. Nothing is compiled or allocated: the
state exists only as shapes (`jax.eval_shape`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config_lib
from alexnet_jax import experiment
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import sharding
from alexnet_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  backend: str
  num_devices: int
  num_processes: int
  mesh_data: int
  mesh_model: int
  dtype: str
  global_batch: int
  batch_per_process: int  # images each process reads per step
  batch_per_device: int  # images each model replica's device sees per step
  train_examples: int | None  # None: the dataset is still to be prepared
  val_examples: int | None
  steps_per_epoch: int | None
  total_steps: int | None
  train_examples_per_host_epoch: int | None
  param_count: int
  param_bytes_per_device: int
  opt_state_bytes_per_device: int
  activation_bytes_per_device: int  # estimate, see activation_bytes
  shards: list[sharding.ShardInfo]
  data_note: str

  @property
  def total_bytes_per_device(self) -> int:
    return (self.param_bytes_per_device * 2 + self.opt_state_bytes_per_device  # params + grads
            + self.activation_bytes_per_device)


def activation_bytes(model: model_lib.AlexNet, crop: int, batch_per_device: int,
                     model_axis: int) -> int:
  """Rough bytes of the activations one device keeps for the backward pass.

  Counts each layer output once for the forward value and once for its gradient
  (conv, ReLU/LRN outputs and pools; fc outputs and dropout masks), in the compute
  dtype, over the per-device batch; layers split on the model axis hold 1/model.
  XLA fuses some of these away, so the true peak is usually lower.
  """
  itemsize = jnp.dtype(model_lib.resolve_dtype(model.dtype)).itemsize
  per_image = crop * crop * 3  # the normalised input
  for row in model_lib.layer_table(model, crop):
    n = math.prod(row.output_shape)
    copies = 2 if row.name in ('conv1', 'conv2') and model.use_lrn else 1  # pre- and post-LRN
    copies += 1 if row.name in ('fc6', 'fc7') else 0  # dropout output
    per_image += n * copies // model_axis
  return 2 * per_image * batch_per_device * itemsize


def build_plan(config: ml_collections.ConfigDict) -> Plan:
  """The plan of `config` on the visible devices. Raises ValueError for a bad config/mesh."""
  config = config_lib.load(config)
  mesh = experiment.create_mesh(config)
  _, shard_count = sharding.data_shard(mesh)
  try:
    info = input_pipeline.load_info(config.data)
  except FileNotFoundError:
    if not config.data.prepare_from:
      raise
    info = None
  if info is None:
    data_note = (f'{config.data.dir} will be prepared from {config.data.prepare_from!r} '
                 'on the first run')
    train_n = val_n = spe = steps = per_host = None
  else:
    experiment.check_val_split(config, info)  # the run would refuse it: so does its plan
    data_note = f'{config.data.source} dataset at {config.data.dir}'
    train_n, val_n = info.split_sizes['train'], info.split_sizes.get('val')
    spe, steps = experiment.count_steps(config, info)
    per_host = train_n // shard_count
  exp = experiment.setup(config, info, mesh=mesh)
  shapes, shardings = exp.state_shapes, exp.state_shardings
  param_rows = sharding.sharding_plan(shapes.params, shardings.params)
  data, model_axis = mesh.shape['data'], mesh.shape['model']
  return Plan(
      backend=jax.default_backend(), num_devices=mesh.size, num_processes=jax.process_count(),
      mesh_data=data, mesh_model=model_axis, dtype=str(config.model.dtype),
      global_batch=config.batch_size, batch_per_process=config.batch_size // shard_count,
      batch_per_device=config.batch_size // data,
      train_examples=train_n, val_examples=val_n, steps_per_epoch=spe, total_steps=steps,
      train_examples_per_host_epoch=per_host,
      param_count=sum(math.prod(r.shape) for r in param_rows),
      param_bytes_per_device=sum(r.shard_bytes for r in param_rows),
      opt_state_bytes_per_device=sharding.bytes_per_device(shapes.opt_state, shardings.opt_state),
      activation_bytes_per_device=activation_bytes(
          exp.model, config.data.crop_size, config.batch_size // data, model_axis),
      shards=param_rows, data_note=data_note)


def _mib(n: int) -> str:
  return f'{n / 2**20:,.1f} MiB'


def format_plan(plan: Plan) -> str:
  lines = [
      f'devices: {plan.num_devices} ({plan.backend}), processes: {plan.num_processes}, '
      f'mesh data={plan.mesh_data} x model={plan.mesh_model}, compute dtype {plan.dtype}',
      f'batch: global {plan.global_batch}, per process {plan.batch_per_process}, '
      f'per device {plan.batch_per_device}',
      f'data: {plan.data_note}',
  ]
  if plan.steps_per_epoch is not None:
    lines += [
        f'  train {plan.train_examples} images, val {plan.val_examples} images',
        f'  steps per epoch {plan.steps_per_epoch}, total steps {plan.total_steps}',
        f'  each process reads {plan.train_examples_per_host_epoch} train images per epoch',
    ]
  lines += [
      f'parameters: {plan.param_count:,}',
      'memory per device:',
      f'  params          {plan.param_bytes_per_device:>14,} bytes ({_mib(plan.param_bytes_per_device)})',
      f'  gradients       {plan.param_bytes_per_device:>14,} bytes',
      f'  optimizer state {plan.opt_state_bytes_per_device:>14,} bytes',
      f'  activations     {plan.activation_bytes_per_device:>14,} bytes (estimate)',
      f'  total           {plan.total_bytes_per_device:>14,} bytes '
      f'({_mib(plan.total_bytes_per_device)})',
      'sharding (weight, global shape, mesh axes, per-device shard):',
  ]
  for r in plan.shards:
    lines.append(f'  {r.path:<24} {str(r.shape):<22} {str(tuple(r.spec)):<22} {r.shard_shape}')
  return '\n'.join(lines)


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> Plan:
  """Prints the plan of a run in `workdir` and returns it; trains nothing, writes nothing.

  Refuses what the run would refuse before training: a dataset without validation
  images, a resume whose config changes what the run computes.
  """
  plan = build_plan(config)
  accepted = workdir_lib.check_resume(workdir, config_lib.load(config))
  resume = bool(checkpoint_lib.finished_steps(workdir))
  print(format_plan(plan))
  state = f'resumes from step {checkpoint_lib.finished_steps(workdir)[-1]}' if resume else 'new run'
  if accepted:
    state += '; changed fields it accepts: ' + ', '.join(c.field for c in accepted)
  holder = workdir_lib.lock_status(workdir)
  if holder:
    state += f'; in use by a run: {holder}'
  print(f'workdir: {workdir} ({state})')
  return plan
