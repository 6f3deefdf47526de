"""Devices: the paper's two-GPU split as a `jax.sharding` mesh, plus data parallelism.

The mesh has two axes. `model` plays the paper's two GPUs: with `model=2`,
device m holds tower m of the grouped layers (conv2, conv4, conv5), half of
the kernels of conv1 and conv3, and half of the neurons of fc6, fc7 and fc8
(every layer's output channels or neurons are split; fc8 only when the class
count splits, else it is whole on every device). `data` repeats that pair
over the remaining devices, each pair taking its own slice of the batch.
`config.mesh.model='auto'` is 2 on an even device count, else 1.

The model names the axes of its weights (`conv_out`, `fc_out`, `classes`, ...);
the rules table in `config.mesh.rules` maps those names onto the mesh axes
(`rules_for_sizes` adapts it to a mesh); placement.py turns the pair into
shardings. `experiment.setup` uses this module in the order a run needs it:

  mesh = create_mesh(config.mesh, model_config=config.model)
  rules = rules_for_sizes(logical_rules(config), mesh.shape, num_classes)
  step = jax.jit(bind_mesh(train_step, mesh, rules), ...)   # grouped convs stay tower-local

A mesh can be abstract (`create_abstract_mesh`): shapes and shardings without
devices, for the dry run's plan of a cluster.

docs/sharding.md shows which device holds what and where devices communicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

from alexnet_jax.core import errors
from alexnet_jax.model import alexnet

MESH_AXES = ('data', 'model')
# Every logical axis name the model puts on a weight or activation; the rules
# table must place each one (on a mesh axis or on None, i.e. replicated).
MODEL_LOGICAL_AXES = tuple(dict.fromkeys(
    alexnet.CONV_KERNEL_AXES + alexnet.FC_KERNEL_AXES + (alexnet.CLASSES_AXIS,)
    + tuple(a for a in alexnet.CONV_ACTIVATION_AXES if a is not None)))

Rules = tuple[tuple[str, Any], ...]


# ----------------------------------------------------------------------------- mesh


AUTO = 'auto'  # config.mesh.model: the program chooses (auto_model_axis)


@dataclasses.dataclass(frozen=True)
class MeshShape:
  data: int
  model: int
  note: str  # how config.mesh.model 'auto' was resolved; '' for explicit sizes


def check_mesh_config(mesh_config: Any) -> None:
  """Raises errors.InputError unless config.mesh.data and .model are sizes the mesh can take."""
  data, model = mesh_config.get('data'), mesh_config.get('model')
  if not _is_size(data):
    raise errors.InputError(f'config.mesh.data must be a positive integer or -1, got {data!r}')
  if not (_is_size(model) or model == AUTO):
    raise errors.InputError(f"config.mesh.model must be 'auto', a positive integer or -1, got "
                            f'{model!r}')
  if data == -1 and model == -1:
    raise errors.InputError('config.mesh.data and config.mesh.model cannot both be -1')


def _is_size(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)


def auto_model_axis(num_devices: int, model_config: Any = None) -> tuple[int, str]:
  """config.mesh.model 'auto' over `num_devices`: (size, why), for the log and the dry run.

  The paper's split (2) wherever the devices pair up and the network splits in
  two; else 1 (data parallelism only). On one device the two-tower network is
  still the same network: its grouped convs run on that device.
  """
  if num_devices == 1:
    return 1, "config.mesh.model 'auto' chose 1: 1 device holds both towers"
  if num_devices % 2:
    return 1, (f"config.mesh.model 'auto' chose 1: {num_devices} devices, an odd count, "
               'cannot pair up; each holds both towers')
  if model_config is not None:
    try:
      check_model_axis(model_config, 2)
    except errors.InputError as e:
      return 1, f"config.mesh.model 'auto' chose 1: the network does not split in two ({e})"
  return 2, (f"config.mesh.model 'auto' chose 2: {num_devices} devices, an even count, hold "
             'the two towers in pairs')


def mesh_shape(mesh_config: Any, num_devices: int, model_config: Any = None) -> MeshShape:
  """(data, model) sizes from `config.mesh`; a -1 takes the devices the other axis leaves.

  model 'auto' with data -1: `auto_model_axis`; with a fixed data size it takes
  the devices data leaves, as -1 does. Explicit sizes are taken as given.
  """
  check_mesh_config(mesh_config)
  data, model = mesh_config.get('data'), mesh_config.get('model')
  note = ''
  if model == AUTO:
    if data == -1:
      model, note = auto_model_axis(num_devices, model_config)
    else:
      model, note = -1, f"config.mesh.model 'auto' takes the devices config.mesh.data={data} leaves"
  sizes = {'data': data, 'model': model}
  if -1 in (data, model):
    fixed_axis = 'model' if data == -1 else 'data'
    fixed = sizes[fixed_axis]
    if num_devices % fixed:
      raise errors.InputError(f'{num_devices} devices cannot be split by config.mesh.{fixed_axis}='
                              f'{fixed}; choose a size dividing {num_devices}')
    data, model = (num_devices // fixed, fixed) if data == -1 else (fixed, num_devices // fixed)
  if data * model != num_devices:
    raise errors.InputError(f'config.mesh.data={data} x config.mesh.model={model} needs '
                            f'{data * model} devices, but {num_devices} are visible; set '
                            f'config.mesh.data=-1 to use all of them')
  return MeshShape(data, model, note)


def check_model_axis(model_config: Any, model_axis: int) -> None:
  """Raises ValueError unless a `model` axis of this size splits the network cleanly.

  Each device must hold whole towers (else a grouped layer would need its
  neighbour's channels), and every split width must divide evenly. The class
  count need not: fc8 is kept whole where it does not split (rules_for_sizes).
  """
  towers = model_config.get('towers', 2)
  if model_axis > 1 and towers > 1 and towers % model_axis:
    raise errors.InputError(
        f'config.mesh.model={model_axis} does not divide config.model.towers={towers}: each '
        f'device must hold whole towers (use model=1 or {towers})')
  convs, hidden = alexnet.scaled_widths(model_config.get('width', 1.0),
                                          model_config.get('conv_widths', None))
  widths = [(f'{name} width', c) for name, c in zip(alexnet.CONV_LAYOUT, convs)]
  widths.append(('fc6/fc7 width', hidden))
  for what, size in widths:
    if size % model_axis:
      raise errors.InputError(f'{what} {size} is not divisible by config.mesh.model={model_axis} '
                              f'(width multiplier {model_config.get("width", 1.0)})')


def _make_shape(mesh_config: Any, num_devices: int, model_config: Any) -> MeshShape:
  shape = mesh_shape(mesh_config, num_devices, model_config)
  if model_config is not None:
    check_model_axis(model_config, shape.model)
  if shape.note:
    logging.info('%s.', shape.note)
  return shape


def create_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None, *,
                model_config: Any = None) -> Mesh:
  """The ('data', 'model') mesh that `config.mesh` asks for, over `devices` (all by default).

  Both axes are `AxisType.Auto`: the model is written without device code, so
  XLA's partitioner places the activations from the shardings of the weights
  and the batch. Explicit axes would make every op state its output sharding,
  which Linen modules and optax do not do.
  With `model_config` (config.model) the model split is checked too, and
  mesh.model 'auto' avoids a split the network cannot take.
  Raises ValueError before anything compiles.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = _make_shape(mesh_config, len(devices), model_config)
  # make_mesh orders devices by the physical topology (TPU rings, hosts), so each
  # model pair sits on the fastest links; the model axis is the minor one.
  return jax.make_mesh((shape.data, shape.model), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def create_abstract_mesh(mesh_config: Any, num_devices: int, *,
                         model_config: Any = None) -> AbstractMesh:
  """The mesh `create_mesh` would make over `num_devices` devices, without any devices.

  Shardings, shapes and the model's tower-local layers all work from an abstract
  mesh, so a login node plans a cluster's job (the dry run) with what it has.
  """
  shape = _make_shape(mesh_config, num_devices, model_config)
  return AbstractMesh((shape.data, shape.model), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def rules_for_sizes(rules: Rules, axis_sizes: Mapping[str, int], num_classes: int) -> Rules:
  """The rules a mesh of `axis_sizes` uses: `classes` split only where it divides evenly.

  Every other logical axis must divide its mesh axis (check_model_axis). fc8's
  output (`classes`) is the one the dataset decides; where num_classes does not
  divide its mesh axes, fc8 stays whole on every device (docs/sharding.md, "Any
  class count"): same parameters, same checkpoints, any class count.
  """
  def size(axes: Any) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(axis_sizes[a] for a in names)

  return tuple((name, None if name == alexnet.CLASSES_AXIS and num_classes % size(axes)
                else axes) for name, axes in rules)


def logical_rules(config: Any) -> Rules:
  """`config.mesh.rules` as flax logical-axis rules, checked against the mesh and model."""
  given = config.mesh.get('rules', ())
  if not isinstance(given, (tuple, list)) or not all(isinstance(r, (tuple, list)) for r in given):
    raise errors.InputError(f'config.mesh.rules must be a tuple of (logical name, mesh axis or '
                            f'None) pairs, got {given!r}')
  rules = tuple(tuple(rule) for rule in given)
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise errors.InputError(
          f'config.mesh.rules entries must be (logical name, mesh axis or None), '
          f'got {rule!r}')
    mesh_axes = (rule[1],) if isinstance(rule[1], str) or rule[1] is None else tuple(rule[1])
    unknown = [a for a in mesh_axes if a is not None and a not in MESH_AXES]
    if unknown:
      raise errors.InputError(
          f'config.mesh.rules maps {rule[0]!r} to unknown mesh axis {unknown[0]!r}; '
          f'mesh axes are {MESH_AXES}')
  named = {rule[0] for rule in rules}
  if alexnet.CLASSES_AXIS not in named:
    # Tables written before fc8's outputs had a name of their own (stored runs'
    # config.json) called them fc_out; they keep that placement.
    rules += tuple((alexnet.CLASSES_AXIS, axes) for name, axes in rules if name == 'fc_out')
    named = {rule[0] for rule in rules}
  missing = [a for a in MODEL_LOGICAL_AXES if a not in named]
  if missing:
    raise errors.InputError(
        f'config.mesh.rules does not place the logical axes {missing}; give each '
        f'a mesh axis or None')
  return rules


@contextlib.contextmanager
def use_mesh(mesh: Mesh | AbstractMesh, rules: Rules) -> Iterator[None]:
  """Code in this context, jitted or not, sees the mesh and the logical rules.

  A jitted function must be traced (first call, `.lower`) inside it, or be
  wrapped by `bind_mesh`: that is what lets the grouped convs run tower-local
  (model.tower_shard_specs). Without it the step is still correct, but XLA
  gathers every grouped layer onto each device. Eager `nn.unbox` of boxed
  params fails in here (it adds sharding constraints): unbox outside.
  An AbstractMesh (a planned target) serves shape computations only.
  """
  context = (jax.sharding.use_abstract_mesh(mesh) if isinstance(mesh, AbstractMesh)
             else jax.set_mesh(mesh))
  with context, nn.logical_axis_rules(rules):
    yield


def bind_mesh(fn: Callable[..., Any], mesh: Mesh, rules: Rules) -> Callable[..., Any]:
  """`fn` traced under the mesh's axes and the logical rules, wherever it is called: for jax.jit.

    step = jax.jit(bind_mesh(train_step, mesh, rules), in_shardings=..., out_shardings=...)
  """
  @functools.wraps(fn)
  def bound(*args, **kwargs):
    # jax.set_mesh is refused inside jit; the abstract mesh is what tracing needs.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)

  # The name jit gives the program (profiles show `jit_train_step`), also for a partial.
  bound.__name__ = getattr(fn, '__name__', getattr(getattr(fn, 'func', None), '__name__',
                                                    'bound'))
  return bound
