"""AlexNets in ONNX: any file of Caffe's or torchvision's layout read, any run written.

  net = onnx_io.read('bvlcalexnet-12.onnx')        # a layout.ForeignNet ('caffe')
  onnx_io.write_run(run, 'alexnet.onnx')           # a FinishedRun, any config
  onnx_io.read('alexnet.onnx')                     # its layout.RunWeights, bit for bit

Reading takes the layers from the graph (onnx_graph), not from initializer names, so
the ONNX model zoo's bvlc_alexnet, a torchvision `alexnet` exported by
`torch.onnx.export` and this project's own exports all read. A graph with LRN must be
bvlc_alexnet's layout, one without torchvision's; another network is one line naming
the first layer that differs. Both layouts' weights are then handled as Caffe's and
torchvision's own files are (layout.to_flax): the zoo's graph takes BGR input like
Caffe's.

Writing needs no other format: the graph is the run's network as this project computes
it (Conv, Relu, LRN, MaxPool, Flatten, Gemm; opset 13) on the run's own model input,
(N, 3, crop, crop) RGB, float32, already preprocessed: 0-255 pixels minus the run's
mean, times model.input_scale, divided by model.input_std where set. Its output is the
logits; a softmax gives the probabilities. The model's doc string says this input for
the run, and its metadata holds the run's config and mean image, from which `read`
rebuilds the run exactly. docs/design.md, "ONNX files".
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import ml_collections
import numpy as np

from alexnet_jax.config import known_fields
from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.model import alexnet
from alexnet_jax.weights import caffe
from alexnet_jax.weights import layout
from alexnet_jax.weights import onnx_graph
from alexnet_jax.weights import optional

FORMAT = 'alexnet_jax.onnx/1'
OPSET = 13
# The IR version of opset 13 (onnx.helper.VERSION_TABLE). make_model would stamp the onnx
# package's newest, which an onnxruntime older than that package refuses to load.
IR_VERSION = 7
# metadata_props keys of a file write_run made.
META_FORMAT, META_CONFIG, META_MEAN, META_MEAN_SHAPE = (
    'alexnet_jax.format', 'alexnet_jax.config', 'alexnet_jax.mean_image',
    'alexnet_jax.mean_image_shape')
INPUT, OUTPUT = 'image', 'logits'
LRN_SIZE = 5  # the window of this network's LRN (model/layers.py)
CAFFE_LAYOUT, TORCHVISION_LAYOUT = "bvlc_alexnet's layout", "torchvision's alexnet"


def expected_layers(convs: tuple[int, ...] | None, towers: int, conv1_pad: int,
                    lrn: tuple[float, float] | None, pool: tuple[int, int],
                    end_pad: int | None, hidden: int | None,
                    classes: int | None) -> list[onnx_graph.Op]:
  """An AlexNet's layers as onnx_graph Ops: conv widths, towers, conv1's padding, LRN
  (ONNX alpha, bias) or None, pooling (kernel, stride) and its allowed end padding (None:
  up to stride - 1), fc width and class count. None widths take any value (the
  weights' shapes are checked against the network they configure, layout.to_flax)."""
  o = onnx_graph.op
  ops = []
  for i, (name, (kernel, stride, pad, grouped)) in enumerate(alexnet.CONV_LAYOUT.items()):
    ops += [o('Conv', out=convs[i] if convs else None, kernel=kernel, stride=stride,
              pad=conv1_pad if pad is None else pad, group=towers if grouped else 1),
            o('Relu')]
    if name in ('conv1', 'conv2') and lrn is not None:
      ops.append(o('LRN', size=LRN_SIZE, alpha=lrn[0], beta=0.75, bias=lrn[1]))
    if name in ('conv1', 'conv2', 'conv5'):
      ops.append(o('MaxPool', kernel=pool[0], stride=pool[1], end_pad=end_pad))
  ops.append(o('Flatten'))
  for out in (hidden, hidden, classes):
    ops += [o('Gemm', out=out), o('Relu')]
  return ops[:-1]  # no ReLU after fc8


def _family_layers(family: str) -> list[onnx_graph.Op]:
  if family == layout.CAFFE:
    return expected_layers(None, 2, 0, (layout.CAFFE_LRN_ALPHA * LRN_SIZE, layout.CAFFE_LRN_K),
                           (3, 2), None, None, None)
  return expected_layers(None, 1, 2, None, (3, 2), None, None, None)


def config_layers(config: ml_collections.ConfigDict) -> list[onnx_graph.Op]:
  """The layers of the network a run config builds, as its ONNX export holds them."""
  m = config.model
  convs, hidden = alexnet.scaled_widths(m.width, m.get('conv_widths'))
  lrn = (m.lrn_alpha * LRN_SIZE, m.lrn_k) if m.use_lrn else None
  return expected_layers(convs, m.towers, m.conv1_padding, lrn, (m.pool_size, m.pool_stride),
                         0, hidden, m.num_classes)


def _weights_of(ops: list[onnx_graph.Op]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """conv1..fc8 -> (weight, bias), in the order the graph computes them."""
  weighted = [o for o in ops if o.weight is not None]
  return {name: (o.weight, o.bias) for name, o in zip(layout.LAYERS, weighted)}


def _groups_of(ops: list[onnx_graph.Op]) -> dict[str, int]:
  convs = [o for o in ops if o.kind == 'Conv']
  return {name: int(o.get('group')) for name, o in zip(layout.CONVS, convs)}


def _load(path: str, onnx: Any) -> Any:
  if not os.path.isfile(path):
    raise errors.MissingInputError(f'ONNX file {path} does not exist or is not a file')
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  try:
    return onnx.load(path)
  except message.DecodeError:
    raise errors.InputError(f'{path} is not an ONNX model: its bytes do not parse as '
                            'binary protobuf') from None
  except OSError as e:  # external data named by the model but not beside it
    raise errors.InputError(f'{path}: its external data cannot be read: '
                            f'{errors.first_line(e, 200)}') from None


def read(path: str, mean_file: str | None = None) -> layout.ForeignNet | layout.RunWeights:
  """An ONNX AlexNet's weights: a run's own export as its RunWeights, any other file of
  Caffe's or torchvision's layout as a ForeignNet of that family.

  mean_file: for Caffe's layout, a Caffe mean file (binaryproto or .npy, BGR) whose
  image the run subtracts instead of the per-channel mean.
  """
  onnx = optional.require('onnx', 'reading an ONNX file')
  model = _load(path, onnx)
  ops = onnx_graph.layers_of(model, path, onnx)
  meta = {p.key: p.value for p in model.metadata_props}
  if meta.get(META_FORMAT) == FORMAT:
    if mean_file:
      raise errors.InputError(f'{path} is a run exported by alexnet_jax, which holds its own '
                              'mean image; drop --mean_file')
    return _run_weights(ops, meta, path)
  family = layout.CAFFE if any(o.kind == 'LRN' for o in ops) else layout.TORCHVISION
  onnx_graph.match(ops, _family_layers(family), path,
                   CAFFE_LAYOUT if family == layout.CAFFE else TORCHVISION_LAYOUT)
  if mean_file and family != layout.CAFFE:
    raise errors.InputError(f'{path} holds torchvision\'s layout, whose input is normalised '
                            'by torchvision\'s mean and std; a Caffe --mean_file does not apply')
  mean = caffe.read_mean_file(mean_file) if mean_file else None
  return layout.ForeignNet(family, _weights_of(ops), _groups_of(ops), mean_bgr_image=mean)


def _run_weights(ops: list[onnx_graph.Op], meta: dict[str, str],
                 path: str) -> layout.RunWeights:
  """The run a write_run file holds: its config and mean from the metadata, its weights
  from the graph, which must be the network of that config."""
  try:
    stored = json.loads(meta[META_CONFIG])
    shape = tuple(json.loads(meta[META_MEAN_SHAPE]))
    mean = np.frombuffer(base64.b64decode(meta[META_MEAN]), '<f4').reshape(shape)
  except (KeyError, ValueError, TypeError) as e:
    raise errors.InputError(f'{path}: its alexnet_jax metadata is damaged '
                            f'({errors.first_line(e, 100)}); export the run again') from None
  known_fields.check(stored, where=path, fix='export it again from its run')
  config = ml_collections.ConfigDict(stored)
  onnx_graph.match(ops, config_layers(config), path, 'the network of its stored config')
  family = layout.family_of(config)
  layers = _weights_of(ops)
  if family == layout.CAFFE:  # the graph's conv1 reads RGB; a Caffe-family net's reads BGR
    weight, bias = layers['conv1']
    layers['conv1'] = (np.ascontiguousarray(weight[:, ::-1]), bias)
  net = layout.ForeignNet(family, layers, _groups_of(ops))
  return layout.RunWeights(config, layout.to_flax(net, config),
                           np.ascontiguousarray(mean.astype(np.float32)))


def _node_inputs(onnx: Any, name: str, weight: np.ndarray, bias: np.ndarray,
                 initializers: list[Any]) -> list[str]:
  initializers += [onnx.numpy_helper.from_array(np.ascontiguousarray(weight, np.float32),
                                                f'{name}.weight'),
                   onnx.numpy_helper.from_array(np.ascontiguousarray(bias, np.float32),
                                                f'{name}.bias')]
  return [f'{name}.weight', f'{name}.bias']


def _nodes(onnx: Any, ops: list[onnx_graph.Op], layers: dict[str, tuple[np.ndarray, np.ndarray]]
           ) -> tuple[list[Any], list[Any]]:
  """The graph's nodes and initializers: `ops` in order, weights from `layers`."""
  make = onnx.helper.make_node
  nodes, initializers, names = [], [], iter(layout.LAYERS)
  current = INPUT
  for i, o in enumerate(ops):
    out = OUTPUT if i == len(ops) - 1 else f'{o.kind.lower()}_{i}'
    if o.kind == 'Conv':
      name = next(names)
      k, s, p = o.get('kernel'), o.get('stride'), o.get('pad')
      nodes.append(make('Conv', [current] + _node_inputs(onnx, name, *layers[name], initializers),
                        [out], name=name, kernel_shape=[k, k], strides=[s, s],
                        pads=[p, p, p, p], group=o.get('group')))
    elif o.kind == 'Gemm':
      name = next(names)
      nodes.append(make('Gemm', [current] + _node_inputs(onnx, name, *layers[name], initializers),
                        [out], name=name, transB=1))
    elif o.kind == 'LRN':
      nodes.append(make('LRN', [current], [out], name=out, size=o.get('size'),
                        alpha=o.get('alpha'), beta=o.get('beta'), bias=o.get('bias')))
    elif o.kind == 'MaxPool':
      k, s = o.get('kernel'), o.get('stride')
      nodes.append(make('MaxPool', [current], [out], name=out, kernel_shape=[k, k],
                        strides=[s, s]))
    else:  # Relu, Flatten
      nodes.append(make(o.kind, [current], [out], name=out))
    current = out
  return nodes, initializers


def _input_text(config: ml_collections.ConfigDict, mean_image: np.ndarray) -> str:
  m, crop = config.model, config.data.crop_size
  mean = ('the per-channel mean ' + ', '.join(f'{v:.3f}' for v in mean_image.mean(axis=(0, 1)))
          if config.data.mean == 'channel' else
          f'the per-pixel mean image (metadata {META_MEAN}, RGB, cut like the crop)')
  text = f'{INPUT}: (N, 3, {crop}, {crop}) RGB crops of 0-255 pixels minus {mean}'
  if m.input_scale != 1.0:
    text += f', times {m.input_scale}'
  if m.get('input_std') is not None:
    text += ', divided per channel by ' + ', '.join(f'{s:.3f}' for s in m.input_std)
  return text + f'. {OUTPUT}: (N, {m.num_classes}) logits; a softmax gives the probabilities.'


def model_of_run(config: ml_collections.ConfigDict, params: Any, mean_image: np.ndarray) -> Any:
  """The ONNX ModelProto of a run: its network on its preprocessed input, config and mean
  image in the metadata."""
  onnx = optional.require('onnx', 'writing an ONNX file')
  helper = onnx.helper
  net = layout.from_flax(params, config)
  layers = dict(net.layers)
  if net.family == layout.CAFFE:  # keep the run's own RGB conv1
    weight, bias = layers['conv1']
    layers['conv1'] = (np.ascontiguousarray(weight[:, ::-1]), bias)
  nodes, initializers = _nodes(onnx, config_layers(config), layers)
  crop, classes = config.data.crop_size, config.model.num_classes
  graph = helper.make_graph(
      nodes, 'alexnet', [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT,
                                                       ['N', 3, crop, crop])],
      [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ['N', classes])],
      initializer=initializers)
  mean = np.ascontiguousarray(np.asarray(mean_image, '<f4'))
  model = helper.make_model(graph, producer_name='alexnet_jax',
                            opset_imports=[helper.make_opsetid('', OPSET)],
                            ir_version=IR_VERSION, doc_string=_input_text(config, mean))
  helper.set_model_props(model, {
      META_FORMAT: FORMAT, META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
      META_MEAN: base64.b64encode(mean.tobytes()).decode('ascii'),
      META_MEAN_SHAPE: json.dumps(list(mean.shape))})
  onnx.checker.check_model(model)
  return model


def write_run(run: Any, path: str) -> None:
  """Writes a FinishedRun (evaluation.finished_run) to `path` as ONNX, atomically."""
  model = model_of_run(run.config, run.params, run.info.mean_image)
  fileio.atomic_write(path, lambda f: f.write(model.SerializeToString()), mode='wb')
