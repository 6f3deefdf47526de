"""The network a config describes, layer by layer, without creating it.

  python -m alexnet_jax.summary --config=configs/imagenet.py [--config.FIELD=VALUE ...]

For each layer: output shape per image, parameter count, forward multiply-adds
and the mesh axes its weights are split over (their logical axis names mapped
through config.mesh.rules). Totals at the bottom, with what one device holds.
The parameters are traced with jax.eval_shape, so the paper's 61M-parameter
network is summarised in a second on a laptop, and the counts are those of the
arrays the model really creates (not a formula kept beside it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from alexnet_jax.core import cli
from alexnet_jax.config import printing
from alexnet_jax.config import resolution
from alexnet_jax.model import alexnet
from alexnet_jax.model import cost
from alexnet_jax.sharding import meshes

PartitionSpec = jax.sharding.PartitionSpec


@dataclasses.dataclass(frozen=True)
class WeightSharding:
  shape: tuple[int, ...]
  logical: tuple[str | None, ...]  # the model's axis names
  mesh: PartitionSpec  # through config.mesh.rules

  def describe(self) -> str:
    """'conv_out->model' for each split dimension, or 'replicated'."""
    split = [f'{name}->{axis if isinstance(axis, str) else "+".join(axis)}'
             for name, axis in zip(self.logical, self.mesh) if axis is not None]
    return ', '.join(split) or 'replicated'


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  name: str
  output_shape: tuple[int, ...]  # per image
  params: int
  macs: int  # forward multiply-adds per image
  groups: int  # towers a grouped conv is split into; 1 otherwise, 0 for pooling
  weights: Mapping[str, WeightSharding]  # 'kernel', 'bias' -> sharding; empty for pooling


def abstract_params(model: alexnet.AlexNet, input_size: int) -> Any:
  """The model's params as ShapeDtypeStructs inside their logical-axis boxes."""
  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def layer_groups(model: alexnet.AlexNet, name: str) -> int:
  if name not in alexnet.CONV_LAYOUT and not name.startswith('fc'):
    return 0
  grouped = name in alexnet.CONV_LAYOUT and alexnet.CONV_LAYOUT[name][3]
  return model.towers if grouped else 1


def summary_model_axis(config: ml_collections.ConfigDict) -> int | None:
  """The model axis the summary assumes: config.mesh.model, 2 for 'auto' (any even device
  count), None when it depends on the device count (-1)."""
  model_axis = config.mesh.model
  if model_axis == meshes.AUTO:
    return 2
  return model_axis if model_axis > 0 else None


def summarize(config: ml_collections.ConfigDict) -> list[LayerSummary]:
  """One row per layer (conv, pool, fc) of the network `config.model` builds.

  Weights are placed as on a mesh whose model axis is `summary_model_axis`: fc8
  is whole where the class count does not split over it. Raises errors.InputError
  for a model axis launch.py refuses for this network on any device count.
  """
  model = alexnet.from_config(config.model)
  rules = meshes.logical_rules(config)
  model_axis = summary_model_axis(config)
  if model_axis is not None and config.mesh.model != meshes.AUTO:
    # The check launch.py makes when it builds the mesh (meshes.create_mesh): a model
    # axis that cuts a tower or a layer's width is refused here too, whatever the devices.
    meshes.check_model_axis(config.model, model_axis)
  if model_axis is not None:
    rules = meshes.rules_for_sizes(rules, {'data': 1, 'model': model_axis}, model.num_classes)
  input_size = config.data.crop_size
  boxed = abstract_params(model, input_size)
  logical = nn.get_partition_spec(boxed)
  params = nn.unbox(boxed)
  rows = []
  for stats in cost.layer_table(model, input_size):
    weights = {}
    for pname, value in sorted(params.get(stats.name, {}).items()):
      names = tuple(logical[stats.name][pname])
      weights[pname] = WeightSharding(tuple(value.shape), names,
                                      nn.logical_to_mesh_axes(names, rules))
    count = cost.count_params(params.get(stats.name, {}))
    rows.append(LayerSummary(stats.name, stats.output_shape, count, stats.macs,
                             layer_groups(model, stats.name), weights))
  return rows


def per_device_params(rows: Sequence[LayerSummary], axis_sizes: Mapping[str, int]) -> int | None:
  """Parameters one device holds when every mesh axis has the given size (None: unknown)."""
  total = 0
  for row in rows:
    for w in row.weights.values():
      count = math.prod(w.shape)
      for axis in w.mesh:
        for name in ((axis,) if isinstance(axis, str) else axis or ()):
          size = axis_sizes.get(name, -1)
          if size < 1:
            return None
          count //= size
      total += count
  return total


def _shape(shape: Sequence[int]) -> str:
  return 'x'.join(str(d) for d in shape)


def format_summary(config: ml_collections.ConfigDict, rows: Sequence[LayerSummary]) -> str:
  """The table a person reads, with totals and a header naming the network."""
  m, size = config.model, config.data.crop_size
  lines = [
      f'AlexNet: {m.towers} tower(s), LRN {"on" if m.use_lrn else "off"}, width {m.width}, '
      f'{m.num_classes} classes, {m.dtype} compute; input {size}x{size}x3 '
      f'(conv1 padding {m.conv1_padding})',
      f'mesh: data={config.mesh.data}, model={config.mesh.model}; rules: '
      + ', '.join(f'{name}->{axis}' for name, axis in meshes.logical_rules(config)
                  if axis is not None),
      '',
  ]
  header = ('layer', 'output', 'towers', 'parameters', 'multiply-adds', 'kernel split',
            'bias split')
  table = [header]
  for r in rows:
    table.append((r.name, _shape(r.output_shape), str(r.groups) if r.groups else '',
                  f'{r.params:,}', f'{r.macs:,}',
                  r.weights['kernel'].describe() if 'kernel' in r.weights else '',
                  r.weights['bias'].describe() if 'bias' in r.weights else ''))
  total_params = sum(r.params for r in rows)
  total_macs = sum(r.macs for r in rows)
  table.append(('total', '', '', f'{total_params:,}', f'{total_macs:,}', '', ''))
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  right = {2, 3, 4}  # numbers align right
  for i, row in enumerate(table):
    if i == len(table) - 1:
      lines.append('  '.join('-' * w for w in widths).rstrip())
    cells = [c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))]
    lines.append('  '.join(cells).rstrip())
  lines.append('')
  lines.append(f'{total_params:,} parameters ({total_params * 4 / 2**20:.1f} MiB as float32), '
               f'{total_macs / 1e9:.3g} G multiply-adds per {size}x{size} image (forward)')
  model_axis = summary_model_axis(config)
  device = per_device_params(rows, {'data': config.mesh.data, 'model': model_axis or -1})
  if device is None:
    lines.append('per device: depends on the device count (a weight is split over an axis '
                 'of size -1)')
  else:
    auto = (f" ('auto' on an even device count; on an odd one, mesh.model=1 and all "
            f'{total_params:,})' if config.mesh.model == meshes.AUTO else '')
    lines.append(f'per device: {device:,} parameters ({device * 4 / 2**20:.1f} MiB), '
                 f'with mesh.model={model_axis}{auto}')
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file to summarise.', lock_config=True)
  flags.DEFINE_bool('print_config', False,
                    'Print the resolved config, each field with its comment, and exit.')
  flags.mark_flag_as_required('config')


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keeps JAX's backend probing off the table
  config = cli.config_from_flag('config')
  if FLAGS.print_config:
    return printing.print_config(config, FLAGS['config'].config_filename)
  cli.start_backend()
  config = resolution.load(config)  # e.g. model.dtype 'auto' -> this machine's choice
  print(format_summary(config, summarize(config)))


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
