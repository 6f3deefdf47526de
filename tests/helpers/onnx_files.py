"""ONNX AlexNets made by the tests, and onnxruntime's outputs for them.

`zoo_style_caffe` builds, with onnx.helper and independently of the importer's writer,
a graph of bvlc_alexnet's layout the way the ONNX model zoo's copy holds it (names
`conv1_w_0`, ..., a MaxPool padded at its far edges as Caffe's rounding-up needs at a
224 input, a Reshape fed by a shape initializer, Dropout nodes and a final Softmax),
with the logits `fc8_1` as a second output. `torch_export` is torch.onnx.export's own
file of a PyTorch network (TorchScript exporter, which needs no other package).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np


def _init(onnx, name: str, value: np.ndarray):
  return onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)


def zoo_style_caffe(layers: dict[str, tuple[np.ndarray, np.ndarray]], path: str, *,
                    side: int = 227, lrn_bias: float = 1.0, extra_node: str | None = None) -> str:
  """Writes bvlc_alexnet's layout with `layers` (Caffe's (O, I/g, kh, kw), (out, in)).

  side: the declared input side (the zoo declares 224). lrn_bias: the LRN's k.
  extra_node: an op type inserted after conv5's ReLU (to test a refusal).
  """
  import onnx  # pylint: disable=g-import-not-at-top
  make = onnx.helper.make_node
  inits, nodes, x = [], [], 'data_0'

  def add(op, inputs, name, **attrs):
    nonlocal x
    nodes.append(make(op, [x] + inputs, [f'{name}_1'], name=name, **attrs))
    x = f'{name}_1'

  def weighted(name):
    weight, bias = layers[name]
    inits.extend([_init(onnx, f'{name}_w_0', weight), _init(onnx, f'{name}_b_0', bias)])
    return [f'{name}_w_0', f'{name}_b_0']

  convs = {'conv1': (11, 4, 0, 1), 'conv2': (5, 1, 2, 2), 'conv3': (3, 1, 1, 1),
           'conv4': (3, 1, 1, 2), 'conv5': (3, 1, 1, 2)}
  for i, (name, (k, s, p, g)) in enumerate(convs.items(), 1):
    add('Conv', weighted(name), name, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g)
    add('Relu', [], f'relu{i}')
    if i in (1, 2):
      add('LRN', [], f'norm{i}', size=5, alpha=1e-4, beta=0.75, bias=lrn_bias)
    if i == 5 and extra_node:
      add(extra_node, [], 'extra')
    if i in (1, 2, 5):
      add('MaxPool', [], f'pool{i}', kernel_shape=[3, 3], strides=[2, 2],
          pads=[0, 0, 1, 1] if i == 1 else [0, 0, 0, 0])
  inits.append(_init(onnx, 'OC2_DUMMY_1', np.array([1, -1], np.int64)))
  nodes.append(make('Reshape', [x, 'OC2_DUMMY_1'], ['OC2_DUMMY_0'], name='flatten'))
  x = 'OC2_DUMMY_0'
  for name in ('fc6', 'fc7', 'fc8'):
    add('Gemm', weighted(name), name, transB=1)
    if name != 'fc8':
      add('Relu', [], f'relu{name[2]}')
      add('Dropout', [], f'drop{name[2]}')
  add('Softmax', [], 'prob', axis=1)
  classes = layers['fc8'][0].shape[0]
  graph = onnx.helper.make_graph(
      nodes, 'bvlc_alexnet',
      [onnx.helper.make_tensor_value_info('data_0', onnx.TensorProto.FLOAT, [1, 3, side, side])],
      [onnx.helper.make_tensor_value_info('prob_1', onnx.TensorProto.FLOAT, [1, classes]),
       onnx.helper.make_tensor_value_info('fc8_1', onnx.TensorProto.FLOAT, [1, classes])],
      initializer=inits)
  model = onnx.helper.make_model(graph, producer_name='onnx-caffe2',
                                 opset_imports=[onnx.helper.make_opsetid('', 13)],
                                 ir_version=7)  # opset 13's, which onnxruntime reads
  onnx.save(model, path)
  return path


def torch_export(net, path: str, side: int = 224) -> str:
  """torch.onnx.export's file of `net` (eval mode), batch axis dynamic."""
  import torch  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    torch.onnx.export(net.eval(), torch.zeros(1, 3, side, side), buffer, dynamo=False,
                      input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'N'}, 'logits': {0: 'N'}})
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def run(path: str, x: np.ndarray, output: str | None = None) -> np.ndarray:
  """onnxruntime's output `output` (default: the first) of the file at `path` for input x,
  one image at a time (the zoo-style graph has a batch of one)."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # the zoo-style file declares one input size, we feed 227
  session = onnxruntime.InferenceSession(os.fspath(path), options,
                                         providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  outputs = [output] if output else None
  return np.concatenate([session.run(outputs, {name: x[i:i + 1].astype(np.float32)})[0]
                         for i in range(len(x))])
