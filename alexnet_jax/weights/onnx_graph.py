"""An ONNX AlexNet's layers, in order, from its graph: what onnx_io reads and writes.

`layers_of(model)` follows the data path from the graph's image input through its
nodes and returns one `Op` per layer: Conv (weights, bias, kernel, stride, pad, group),
Relu, LRN (size, alpha, beta, bias), MaxPool (kernel, stride), Flatten (also a Reshape
to rows) and Gemm (weights as (out, in), bias). Nodes that change nothing at test time
(Dropout, Identity, a 1x1 average pool of stride 1, which is what torchvision's
adaptive pool is at 224) are dropped, and a final Softmax is left off, so the last op
gives the logits. Nodes off the data path (shape arithmetic feeding a Reshape) are
ignored; any other node on it is refused in one line.

`match(ops, expected, where)` compares that list with a layout written as `Op`s
without weights, and says in one line where they first differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from alexnet_jax.core import errors

# Ops that are the identity at test time.
_PASS_THROUGH = frozenset({'Dropout', 'Identity'})
_FINAL = frozenset({'Softmax', 'LogSoftmax'})


@dataclasses.dataclass(frozen=True)
class Op:
  """One layer: its kind, its settings (name -> int or float) and weights, if any.

  Conv settings: out, kernel, stride, pad, group; LRN: size, alpha, beta, bias (ONNX's
  alpha, which is divided by size, as Caffe's and PyTorch's); MaxPool: kernel,
  stride, and end_pad (padding at the bottom and right only, < stride: Caffe's rounding
  up of pooled sizes, which a 227 input never reaches); Gemm: out, in.
  """
  kind: str
  settings: tuple[tuple[str, Any], ...] = ()
  weight: np.ndarray | None = None
  bias: np.ndarray | None = None

  def get(self, name: str, default: Any = None) -> Any:
    return dict(self.settings).get(name, default)


def op(kind: str, **settings: Any) -> Op:
  """An Op without weights, for a layout to match against."""
  return Op(kind, tuple(settings.items()))


def _attrs(node: Any, onnx: Any) -> dict[str, Any]:
  return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _square(values: Sequence[int], what: str, where: str, default: int) -> int:
  values = list(values) or [default]
  if any(v != values[0] for v in values):
    raise errors.InputError(f'{where}: {what} {values} is not the same on every side, as '
                            'in every AlexNet')
  return int(values[0])


def _conv(node: Any, a: dict[str, Any], values: dict[str, np.ndarray], where: str) -> Op:
  weight = values.get(node.input[1])
  if weight is None or weight.ndim != 4:
    raise errors.InputError(f'{where}: Conv {node.name!r} has no 4-d weight initializer')
  bias = (values.get(node.input[2]) if len(node.input) > 2 and node.input[2]
          else np.zeros(weight.shape[0], np.float32))
  if bias is None:
    raise errors.InputError(f'{where}: Conv {node.name!r} has no bias initializer')
  if any(d != 1 for d in a.get('dilations', [])) or a.get('auto_pad', b'NOTSET') not in (
      b'NOTSET', 'NOTSET'):
    raise errors.InputError(f'{where}: Conv {node.name!r} is dilated or auto-padded')
  kernel = _square(a.get('kernel_shape', weight.shape[2:]), 'kernel', where, 1)
  settings = dict(out=int(weight.shape[0]), kernel=kernel,
                  stride=_square(a.get('strides', []), 'stride', where, 1),
                  pad=_square(a.get('pads', []), 'padding', where, 0),
                  group=int(a.get('group', 1)))
  return Op('Conv', tuple(settings.items()), np.asarray(weight, np.float32),
            np.asarray(bias, np.float32).reshape(-1))


def _max_pool(a: dict[str, Any], where: str) -> Op:
  kernel = _square(a.get('kernel_shape', []), 'pool kernel', where, 1)
  stride = _square(a.get('strides', []), 'pool stride', where, 1)
  pads = list(a.get('pads', [0, 0, 0, 0]))
  if pads[:2] != [0, 0] or pads[2] != pads[3] or a.get('dilations', [1, 1]) != [1, 1]:
    raise errors.InputError(f'{where}: MaxPool pads {pads} are not an AlexNet\'s')
  # ceil_mode and padding at the far edges both round the pooled size up, as Caffe does.
  end_pad = max(pads[2], stride - 1 if a.get('ceil_mode', 0) else 0)
  return op('MaxPool', kernel=kernel, stride=stride, end_pad=end_pad)


def _gemm(node: Any, a: dict[str, Any], values: dict[str, np.ndarray], where: str) -> Op:
  weight = values.get(node.input[1])
  bias = values.get(node.input[2]) if len(node.input) > 2 else None
  if weight is None or weight.ndim != 2 or bias is None:
    raise errors.InputError(f'{where}: Gemm {node.name!r} has no weight and bias initializers')
  if a.get('transA', 0) or a.get('alpha', 1.0) != 1.0 or a.get('beta', 1.0) != 1.0:
    raise errors.InputError(f'{where}: Gemm {node.name!r} scales or transposes its input')
  weight = np.asarray(weight, np.float32)
  weight = weight if a.get('transB', 0) else weight.T  # to (out, in)
  return Op('Gemm', (('out', int(weight.shape[0])), ('in', int(weight.shape[1]))),
            np.ascontiguousarray(weight), np.asarray(bias, np.float32).reshape(-1))


def _layer(node: Any, values: dict[str, np.ndarray], where: str, onnx: Any) -> Op | None:
  """The Op of one node on the data path; None for a node that is the identity."""
  a = _attrs(node, onnx)
  kind = node.op_type
  if kind in _PASS_THROUGH:
    return None
  if kind == 'AveragePool' and _square(a.get('kernel_shape', []), 'kernel', where, 1) == 1 and (
      _square(a.get('strides', []), 'stride', where, 1) == 1 and not any(a.get('pads', []))):
    return None
  if kind == 'Conv':
    return _conv(node, a, values, where)
  if kind == 'Relu':
    return op('Relu')
  if kind == 'LRN':
    return op('LRN', size=int(a['size']), alpha=float(a.get('alpha', 1e-4)),
              beta=float(a.get('beta', 0.75)), bias=float(a.get('bias', 1.0)))
  if kind == 'MaxPool':
    return _max_pool(a, where)
  if kind in ('Flatten', 'Reshape'):
    if kind == 'Flatten' and a.get('axis', 1) != 1:
      raise errors.InputError(f'{where}: Flatten {node.name!r} keeps more than the batch axis')
    return op('Flatten')
  if kind == 'Gemm':
    return _gemm(node, a, values, where)
  raise errors.InputError(f'{where}: node {node.name or kind!r} ({kind}) is not a layer of an '
                          'AlexNet this importer reads (Conv, Relu, LRN, MaxPool, Flatten or '
                          'Reshape, Gemm, Dropout)')


def _values(graph: Any, onnx: Any) -> dict[str, np.ndarray]:
  """Initializers and Constant outputs by name."""
  values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:
    if node.op_type == 'Constant' and node.attribute and node.attribute[0].name == 'value':
      values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
  return values


def layers_of(model: Any, where: str, onnx: Any) -> list[Op]:
  """The model's layers along its data path, from its image input to its logits."""
  graph = model.graph
  values = _values(graph, onnx)
  inputs = [i.name for i in graph.input if i.name not in values]
  if len(inputs) != 1:
    raise errors.InputError(f'{where}: the graph has {len(inputs)} inputs besides its '
                            'weights; an AlexNet has one, the image batch')
  data, ops, final = {inputs[0]}, [], False
  for node in graph.node:
    on_path = [name for name in node.input if name in data]
    if not on_path:
      continue  # shape arithmetic or a constant
    if final:
      raise errors.InputError(f'{where}: node {node.name or node.op_type!r} follows the '
                              'softmax; an AlexNet ends there')
    if len(on_path) > 1 or node.input[0] not in data:
      raise errors.InputError(f'{where}: node {node.name or node.op_type!r} joins two paths; '
                              'an AlexNet is a chain of layers')
    data.update(node.output[:1])
    if node.op_type in _FINAL:
      final = True
      continue
    layer = _layer(node, values, where, onnx)
    if layer is not None:
      ops.append(layer)
  return ops


def _same(found: Any, expected: Any) -> bool:
  if expected is None:
    return True
  if isinstance(expected, float):
    return np.float32(found) == np.float32(expected)
  return found == expected


def _text(o: Op) -> str:
  settings = ' '.join(f'{k} {"any" if v is None else f"{v:g}" if isinstance(v, float) else v}'
                      for k, v in o.settings)
  return f'{o.kind} ({settings})' if settings else o.kind


def match(ops: Sequence[Op], expected: Sequence[Op], where: str, layout_name: str) -> None:
  """Raises errors.InputError at the first layer where `ops` differs from `expected`.

  An expected setting of None matches any value; a MaxPool's end_pad may be at most
  its stride minus one.
  """
  for i, want in enumerate(expected):
    if i >= len(ops):
      raise errors.InputError(f'{where}: not {layout_name}: the graph ends after {len(ops)} '
                              f'layers, where {layout_name} has {_text(want)}')
    got = ops[i]
    same = got.kind == want.kind and all(
        _same(got.get(k), v) for k, v in want.settings if k != 'end_pad')
    if same and got.kind == 'MaxPool':
      same = got.get('end_pad') <= (want.get('end_pad') if want.get('end_pad') is not None
                                    else got.get('stride') - 1)
    if not same:
      raise errors.InputError(f'{where}: not {layout_name}: layer {i + 1} is {_text(got)}, '
                              f'where {layout_name} has {_text(want)}')
  if len(ops) > len(expected):
    raise errors.InputError(f'{where}: not {layout_name}: it has {_text(ops[len(expected)])} '
                            'after the last layer')
