"""What one train step costs a device, from the layer arithmetic and the state's shapes.

The bytes a device holds (weights, gradients, optimizer state and an estimate of
the activations kept for the backward pass) and the FLOPs of one training image.
The dry run reports them and checks them against the memory of the devices it
plans for; nothing is compiled or allocated.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from alexnet_jax.model import alexnet
from alexnet_jax.model import cost
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.learning import experiment

# A training image costs its forward pass three times (forward, and the two matmuls of the
# backward: input and weight gradients), at 2 FLOPs per multiply-add.
FLOPS_PER_TRAINING_MAC = 3 * 2


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes one device holds during a train step (activations estimated, see activation_bytes)."""
  params: int
  gradients: int
  opt_state: int
  activations: int  # at the configured per-device batch
  activations_per_image: int  # per image of the per-device batch

  @property
  def total(self) -> int:
    return self.params + self.gradients + self.opt_state + self.activations

  def largest_batch(self, limit: int) -> int:
    """The largest per-device batch whose estimate fits in `limit` bytes (0: none does)."""
    room = limit - (self.params + self.gradients + self.opt_state)
    return max(0, room // self.activations_per_image)


def output_splits(rules: meshes.Rules, axis_sizes: dict[str, int]) -> dict[str, int]:
  """Devices each layer kind's outputs are split over: 'conv', 'fc' (fc6, fc7), 'classes'."""
  axes_of = dict(rules)

  def size(name: str) -> int:
    axes = axes_of.get(name)
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(axis_sizes[a] for a in names)

  return {'conv': size('conv_out'), 'fc': size('fc_out'), 'classes': size(alexnet.CLASSES_AXIS)}


def activation_bytes(model: alexnet.AlexNet, crop: int, batch_per_device: int,
                     splits: dict[str, int]) -> int:
  """Rough bytes of the activations one device keeps for the backward pass.

  Counts each layer output once for the forward value and once for its gradient
  (conv, ReLU/LRN outputs and pools; fc outputs and dropout masks), in the compute
  dtype, over the per-device batch; a layer split over n devices holds 1/n
  (`output_splits`: fc8 may be whole). XLA fuses some of these away, so the true
  peak is usually lower.
  """
  itemsize = jnp.dtype(model.dtype).itemsize
  per_image = crop * crop * 3  # the normalised input
  for row in cost.layer_table(model, crop):
    n = math.prod(row.output_shape)
    copies = 2 if row.name in ('conv1', 'conv2') and model.use_lrn else 1  # pre- and post-LRN
    copies += 1 if row.name in ('fc6', 'fc7') else 0  # dropout output
    kind = 'classes' if row.name == 'fc8' else 'fc' if row.name.startswith('fc') else 'conv'
    per_image += n * copies // splits[kind]
  return 2 * per_image * batch_per_device * itemsize


def training_flops_per_image(model: alexnet.AlexNet, crop: int) -> int:
  """FLOPs of one training image: 3 x 2 x the forward multiply-adds of model.layer_table."""
  return FLOPS_PER_TRAINING_MAC * sum(row.macs for row in cost.layer_table(model, crop))


def device_memory(exp: experiment.Experiment, batch_per_device: int
            ) -> tuple[list[placement.ShardInfo], Memory]:
  """The weights' shard table and the bytes one device holds at this per-device batch."""
  shapes, shardings = exp.state_shapes, exp.state_shardings
  param_rows = placement.sharding_plan(shapes.params, shardings.params)
  param_bytes = sum(r.shard_bytes for r in param_rows)
  crop = exp.config.data.crop_size
  splits = output_splits(exp.rules, dict(exp.mesh.shape))
  return param_rows, Memory(
      params=param_bytes, gradients=param_bytes,
      opt_state=placement.bytes_per_device(shapes.opt_state, shardings.opt_state),
      activations=activation_bytes(exp.model, crop, batch_per_device, splits),
      activations_per_image=activation_bytes(exp.model, crop, 1, splits))
