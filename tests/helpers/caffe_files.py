"""Caffe files written by the tests: bvlc_alexnet caffemodels, prototxts and mean files.

The bytes come from a protobuf wire-format encoder written here from the protobuf
encoding rules and Caffe's field numbers, independent of the importer's runtime schema,
so a wrong field number or type there fails the tests instead of cancelling out.
A net is described layer by layer (`alexnet_spec`), so tests can change one thing (a
CaffeNet order, another LRN, a missing group) and check the importer's refusal; the
weights come from the test (tests/helpers/torch_alexnet.py's CaffeAlexNet).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Sequence

import numpy as np

# V1LayerParameter.LayerType numbers (caffe.proto).
V1_TYPES = {'Convolution': 4, 'Data': 5, 'Dropout': 6, 'InnerProduct': 14, 'LRN': 15,
            'Pooling': 17, 'ReLU': 18, 'Softmax': 20, 'SoftmaxWithLoss': 21, 'Accuracy': 1}
# Field numbers of each layer-settings message inside a layer: (new format, V1 format).
SETTINGS_FIELDS = {'Convolution': (106, 10), 'InnerProduct': (117, 17), 'LRN': (118, 18),
                   'Pooling': (121, 19)}
BVLC_WIDTHS, BVLC_HIDDEN = (96, 256, 384, 384, 256), 4096


def alexnet_spec(widths: Sequence[int] = BVLC_WIDTHS, hidden: int = BVLC_HIDDEN,
                 classes: int = 1000) -> list[tuple[str, str, dict]]:
  """bvlc_alexnet's layers as its deploy.prototxt has them: (name, type, settings), at any
  widths. Conv settings: num_output, kernel_size, stride, pad, group; LRN: local_size,
  alpha, beta; pooling: pool, kernel_size, stride."""
  c1, c2, c3, c4, c5 = widths
  lrn = dict(local_size=5, alpha=1e-4, beta=0.75)
  pool = dict(pool=0, kernel_size=3, stride=2)
  return [
      ('conv1', 'Convolution', dict(num_output=c1, kernel_size=11, stride=4)),
      ('relu1', 'ReLU', {}), ('norm1', 'LRN', dict(lrn)), ('pool1', 'Pooling', dict(pool)),
      ('conv2', 'Convolution', dict(num_output=c2, pad=2, kernel_size=5, group=2)),
      ('relu2', 'ReLU', {}), ('norm2', 'LRN', dict(lrn)), ('pool2', 'Pooling', dict(pool)),
      ('conv3', 'Convolution', dict(num_output=c3, pad=1, kernel_size=3)),
      ('relu3', 'ReLU', {}),
      ('conv4', 'Convolution', dict(num_output=c4, pad=1, kernel_size=3, group=2)),
      ('relu4', 'ReLU', {}),
      ('conv5', 'Convolution', dict(num_output=c5, pad=1, kernel_size=3, group=2)),
      ('relu5', 'ReLU', {}), ('pool5', 'Pooling', dict(pool)),
      ('fc6', 'InnerProduct', dict(num_output=hidden)), ('relu6', 'ReLU', {}),
      ('drop6', 'Dropout', {}),
      ('fc7', 'InnerProduct', dict(num_output=hidden)), ('relu7', 'ReLU', {}),
      ('drop7', 'Dropout', {}),
      ('fc8', 'InnerProduct', dict(num_output=classes)),
  ]


# Keys of every settings message field: name -> (field number, wire kind).
_SETTING_FIELDS = {
    'Convolution': {'num_output': (1, 'uint'), 'pad': (3, 'uint'), 'kernel_size': (4, 'uint'),
                    'group': (5, 'uint'), 'stride': (6, 'uint')},
    'InnerProduct': {'num_output': (1, 'uint'), 'transpose': (6, 'uint')},
    'LRN': {'local_size': (1, 'uint'), 'alpha': (2, 'float'), 'beta': (3, 'float'),
            'k': (5, 'float')},
    'Pooling': {'pool': (1, 'uint'), 'kernel_size': (2, 'uint'), 'stride': (3, 'uint')},
}


def varint(value: int) -> bytes:
  """Base-128 varint, little-endian groups of 7 bits (negative values as 64-bit two's
  complement, as protobuf writes int64)."""
  value &= (1 << 64) - 1
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def field_uint(number: int, value: int) -> bytes:
  return varint(number << 3 | 0) + varint(value)


def field_float(number: int, value: float) -> bytes:
  return varint(number << 3 | 5) + struct.pack('<f', value)


def field_bytes(number: int, payload: bytes) -> bytes:
  return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_string(number: int, text: str) -> bytes:
  return field_bytes(number, text.encode('utf-8'))


def blob(values: np.ndarray, v1: bool) -> bytes:
  """A BlobProto: packed float32 data (field 5) and the shape, as BlobShape (field 7,
  packed int64 dims) or in V1 style as num/channels/height/width (fields 1-4)."""
  data = field_bytes(5, np.ascontiguousarray(values, '<f4').tobytes())
  if v1:
    dims = (1,) * (4 - values.ndim) + values.shape
    return b''.join(field_uint(n, d) for n, d in zip((1, 2, 3, 4), dims)) + data
  shape = field_bytes(1, b''.join(varint(d) for d in values.shape))
  return field_bytes(7, shape) + data


def settings_message(layer_type: str, settings: dict) -> bytes:
  out = b''
  for key, value in settings.items():
    number, kind = _SETTING_FIELDS[layer_type][key]
    out += field_float(number, value) if kind == 'float' else field_uint(number, int(value))
  return out


@dataclasses.dataclass
class Layer:
  name: str
  type: str
  settings: dict
  blobs: Sequence[np.ndarray] = ()
  bottom: str = ''
  top: str = ''


def layer_bytes(layer: Layer, v1: bool, with_settings: bool = True) -> bytes:
  """One LayerParameter (new format) or V1LayerParameter, with a `param` spec (field 6 in
  the new format) and an unknown-to-the-importer field, as real files have."""
  if v1:
    out = (field_string(4, layer.name) + field_uint(5, V1_TYPES[layer.type]) +
           field_string(2, layer.bottom) + field_string(3, layer.top) +
           field_float(7, 1.0))  # blobs_lr
    blob_field = 6
  else:
    out = (field_string(1, layer.name) + field_string(2, layer.type) +
           field_string(3, layer.bottom) + field_string(4, layer.top) +
           field_bytes(6, field_float(3, 1.0)))  # param { lr_mult: 1 }
    blob_field = 7
  if with_settings and layer.type in SETTINGS_FIELDS:
    number = SETTINGS_FIELDS[layer.type][1 if v1 else 0]
    out += field_bytes(number, settings_message(layer.type, layer.settings))
  for values in layer.blobs:
    out += field_bytes(blob_field, blob(values, v1))
  return out


def data_layer(v1: bool) -> bytes:
  """A train_val data layer, with a transform_param (mean file, crop) the importer skips."""
  transform = field_string(4, 'imagenet_mean.binaryproto') + field_uint(3, 227)
  if v1:
    return (field_string(4, 'data') + field_uint(5, V1_TYPES['Data']) + field_string(3, 'data') +
            field_bytes(36, transform))
  return (field_string(1, 'data') + field_string(2, 'Data') + field_string(4, 'data') +
          field_bytes(100, transform))


def alexnet_layers(weights: dict | None, spec: Sequence[tuple[str, str, dict]]) -> list[Layer]:
  """The net `spec` as `Layer`s, chained bottom to top, `weights` on its parameter layers."""
  out, bottom = [], 'data'
  for name, layer_type, settings in spec:
    blobs = weights[name] if weights and name in weights else ()
    top = bottom if layer_type in ('ReLU', 'Dropout') else name  # in place, as Caffe does
    out.append(Layer(name, layer_type, dict(settings), blobs, bottom, top))
    bottom = top
  return out


def caffemodel_bytes(layers: Sequence[Layer], v1: bool, with_settings: bool = True,
                     with_data_layer: bool = True) -> bytes:
  """A NetParameter: name (1), then the layers as `layers` (2, V1) or `layer` (100)."""
  parts = [field_string(1, 'AlexNet')]
  if with_data_layer:
    parts.append(field_bytes(2 if v1 else 100, data_layer(v1)))
  parts += [field_bytes(2 if v1 else 100, layer_bytes(layer, v1, with_settings))
            for layer in layers]
  return b''.join(parts)


def prototxt_text(layers: Sequence[Layer], v1: bool = False) -> str:
  """A deploy prototxt in protobuf text format, with Caffe's `input:` header and the
  fillers and param specs the importer skips."""
  lines = ['name: "AlexNet"', 'input: "data"', 'input_shape { dim: 10 dim: 3 dim: 227 dim: 227 }']
  for layer in layers:
    type_text = f'type: {_V1_WORDS[layer.type]}' if v1 else f'type: "{layer.type}"'
    lines.append(f'{"layers" if v1 else "layer"} {{')
    lines += [f'  name: "{layer.name}"', f'  {type_text}', f'  bottom: "{layer.bottom}"',
              f'  top: "{layer.top}"']
    if layer.type in SETTINGS_FIELDS:
      lines.append(f'  {_PARAM_NAMES[layer.type]} {{')
      for key, value in layer.settings.items():
        text = ('MAX' if value == 0 else 'AVE') if key == 'pool' else repr(value)
        lines.append(f'    {key}: {text}')
      lines.append('    weight_filler { type: "gaussian" std: 0.01 }')
      lines.append('  }')
    lines.append('}')
  return '\n'.join(lines) + '\n'


_V1_WORDS = {'Convolution': 'CONVOLUTION', 'Data': 'DATA', 'Dropout': 'DROPOUT',
             'InnerProduct': 'INNER_PRODUCT', 'LRN': 'LRN', 'Pooling': 'POOLING',
             'ReLU': 'RELU', 'Softmax': 'SOFTMAX', 'SoftmaxWithLoss': 'SOFTMAX_LOSS',
             'Accuracy': 'ACCURACY'}
_PARAM_NAMES = {'Convolution': 'convolution_param', 'InnerProduct': 'inner_product_param',
                'LRN': 'lrn_param', 'Pooling': 'pooling_param'}


def mean_file_bytes(mean_chw: np.ndarray, v1_shape: bool = True) -> bytes:
  """A Caffe mean file: one BlobProto of shape (1, 3, H, W), as compute_image_mean writes."""
  return blob(mean_chw[None], v1=v1_shape)
