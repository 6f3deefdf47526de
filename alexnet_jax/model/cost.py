"""The network's size from its arithmetic: per-layer output shapes, parameters and
multiply-adds, and XLA's count of the compiled forward pass to check them against."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model.alexnet import CONV_LAYOUT, AlexNet, scaled_widths


@dataclasses.dataclass(frozen=True)
class LayerStats:
  name: str
  output_shape: tuple[int, ...]  # per image (H, W, C) or (C,)
  params: int
  macs: int  # multiply-adds per image, forward


def layer_table(model: AlexNet, input_size: int = 224) -> list[LayerStats]:
  """Per-layer output shape, parameter count and forward multiply-adds, from the
  layer arithmetic alone (no tracing). `count_flops` cross-checks it with XLA."""
  model.check((1, input_size, input_size, 3))
  convs, hidden = scaled_widths(model.width, model.conv_widths)
  sizes = model.spatial_sizes(input_size)
  rows = []
  c_in = 3
  for (name, (k, _, _, grouped)), c_out in zip(CONV_LAYOUT.items(), convs):
    g = model.towers if grouped else 1
    s = sizes[name]
    params = k * k * (c_in // g) * c_out + c_out
    macs = s * s * k * k * (c_in // g) * c_out
    rows.append(LayerStats(name, (s, s, c_out), params, macs))
    if name in ('conv1', 'conv2', 'conv5'):
      pool = {'conv1': 'pool1', 'conv2': 'pool2', 'conv5': 'pool5'}[name]
      rows.append(LayerStats(pool, (sizes[pool], sizes[pool], c_out), 0, 0))
    c_in = c_out
  f_in = sizes['pool5'] ** 2 * convs[-1]
  for name, f_out in (('fc6', hidden), ('fc7', hidden), ('fc8', model.num_classes)):
    rows.append(LayerStats(name, (f_out,), f_in * f_out + f_out, f_in * f_out))
    f_in = f_out
  return rows


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def count_flops(model: AlexNet, input_size: int = 224, batch: int = 1) -> float:
  """Forward FLOPs per image as XLA counts them for the compiled eval forward pass.

  XLA counts 2 FLOPs per multiply-add plus the elementwise work (ReLU, LRN, bias).
  """
  x = jax.ShapeDtypeStruct((batch, input_size, input_size, 3), jnp.float32)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))['params']
  fn = lambda p, im: model.apply({'params': p}, im, train=False)
  cost = jax.jit(fn).lower(params, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0]
  return float(cost['flops']) / batch
