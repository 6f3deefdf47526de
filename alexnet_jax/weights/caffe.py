"""Caffe's bvlc_alexnet read without Caffe: `.caffemodel`, deploy prototxt and mean file.

`read(path, prototxt=None, mean_file=None)` returns the network's weights as a
`layout.ForeignNet` of family 'caffe'. A `.caffemodel` is a binary `NetParameter` in
either of Caffe's formats: the new one (`layer`, LayerParameter, blob shapes as
`BlobShape`) or the V1 one (`layers`, V1LayerParameter, blob shapes as num, channels,
height, width), which is how bvlc_alexnet was released. The layers, their order and their
settings come from the deploy prototxt when one is given (as Caffe builds a net from it
and copies the trained blobs in by layer name), else from the caffemodel itself. Either
way they must be bvlc_alexnet's (docs/design.md, "Caffe files"); any other net is one
line naming the first layer that differs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.weights import layout
from alexnet_jax.weights import optional

# V1LayerParameter.LayerType -> the type string of the new format, for the types read.
_V1_TYPE_NAMES = {
    'CONVOLUTION': 'Convolution', 'RELU': 'ReLU', 'LRN': 'LRN', 'POOLING': 'Pooling',
    'INNER_PRODUCT': 'InnerProduct', 'DROPOUT': 'Dropout', 'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss', 'ACCURACY': 'Accuracy', 'SPLIT': 'Split',
    'SILENCE': 'Silence', 'DATA': 'Data', 'IMAGE_DATA': 'ImageData',
    'MEMORY_DATA': 'MemoryData', 'DUMMY_DATA': 'DummyData', 'HDF5_DATA': 'HDF5Data',
    'WINDOW_DATA': 'WindowData',
}
# Layers that feed data, score or pass their input through at test time: not part of the
# function from image to logits (dropout is the identity at test time).
_PASSIVE_TYPES = frozenset({
    'Input', 'Data', 'ImageData', 'MemoryData', 'DummyData', 'HDF5Data', 'WindowData',
    'Dropout', 'Softmax', 'SoftmaxWithLoss', 'Accuracy', 'Split', 'Silence',
})
# bvlc_alexnet's computing layers, in order: (type, name, settings). Conv settings are
# (outputs, kernel, stride, pad, groups); LRN (size, alpha, beta, k) with Caffe's alpha,
# which is divided by the size; pooling (kernel, stride); inner product (outputs). None
# takes any value: the widths, so that a narrower net of the same layout reads too (its
# weights' shapes must still chain). Parameter layers must carry these names, fc8 any
# name starting with 'fc8' (fine-tuned copies rename it).
_ALEXNET = (
    ('Convolution', 'conv1', (None, 11, 4, 0, 1)), ('ReLU', 'relu1', ()),
    ('LRN', 'norm1', (5, 1e-4, 0.75, 1.0)), ('Pooling', 'pool1', (3, 2)),
    ('Convolution', 'conv2', (None, 5, 1, 2, 2)), ('ReLU', 'relu2', ()),
    ('LRN', 'norm2', (5, 1e-4, 0.75, 1.0)), ('Pooling', 'pool2', (3, 2)),
    ('Convolution', 'conv3', (None, 3, 1, 1, 1)), ('ReLU', 'relu3', ()),
    ('Convolution', 'conv4', (None, 3, 1, 1, 2)), ('ReLU', 'relu4', ()),
    ('Convolution', 'conv5', (None, 3, 1, 1, 2)), ('ReLU', 'relu5', ()),
    ('Pooling', 'pool5', (3, 2)),
    ('InnerProduct', 'fc6', (None,)), ('ReLU', 'relu6', ()),
    ('InnerProduct', 'fc7', (None,)), ('ReLU', 'relu7', ()),
    ('InnerProduct', 'fc8', (None,)),
)
_PARAM_TYPES = ('Convolution', 'InnerProduct')
# pool5's map is 6x6 for a 227 input, Caffe's crop: fc6 reads 36 values per conv5 channel.
_POOL5_CELLS = 6 * 6
_SETTINGS_FIELD = {'Convolution': 'convolution_param', 'LRN': 'lrn_param',
                   'Pooling': 'pooling_param', 'InnerProduct': 'inner_product_param'}


@dataclasses.dataclass(frozen=True)
class _Layer:
  """One layer of either format: its name, new-format type and the raw message."""
  name: str
  type: str
  message: Any


def _message_class(name: str) -> Any:
  """A message class of the minimal Caffe schema; protobuf is imported on first use."""
  optional.require('google.protobuf', 'reading Caffe files')
  from alexnet_jax.weights import caffe_proto  # pylint: disable=g-import-not-at-top
  return caffe_proto.message_class(name)


def _checked_path(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise errors.MissingInputError(f'{what} {path} does not exist or is not a file')
  return path


def _read_bytes(path: str, what: str) -> bytes:
  with open(_checked_path(path, what), 'rb') as f:
    return f.read()


def _parse_binary(path: str, message_name: str, what: str) -> Any:
  pb_message = optional.require('google.protobuf.message', 'reading Caffe files')
  try:
    return _message_class(message_name).FromString(_read_bytes(path, what))
  except pb_message.DecodeError:
    raise errors.InputError(f'{what} {path} is not a Caffe {message_name}: its bytes do not '
                            'parse as binary protobuf') from None


def _parse_text(path: str) -> Any:
  text_format = optional.require('google.protobuf.text_format', 'reading a Caffe prototxt')
  text = _read_bytes(path, 'prototxt').decode('utf-8', errors='replace')
  try:
    return text_format.Parse(text, _message_class('NetParameter')(),
                             allow_unknown_field=True)
  except text_format.ParseError as e:
    raise errors.InputError(f'prototxt {path} is not a Caffe net in text format: {e}') from None


def _layers(net: Any, path: str) -> list[_Layer]:
  """The layers of a NetParameter in either format, as `_Layer`s."""
  if len(net.layer) and len(net.layers):
    raise errors.InputError(f'{path} holds layers in both the new and the V1 format; '
                            'Caffe refuses such a net too')
  if len(net.layer):
    return [_Layer(l.name, l.type, l) for l in net.layer]
  if any(l.HasField('layer') for l in net.layers):
    raise errors.InputError(f'{path} is in Caffe\'s V0 format; convert it with Caffe\'s '
                            'upgrade_net_proto_binary (or upgrade_net_proto_text) first')
  enum = _message_class('V1LayerParameter').LayerType
  return [_Layer(l.name, _V1_TYPE_NAMES.get(enum.Name(l.type), enum.Name(l.type)), l)
          for l in net.layers]


def _pair(repeated: Any, single_h: int, single_w: int, has_hw: bool, default: int) -> int:
  """One square value of a conv or pool setting given as a list or as _h/_w fields."""
  if has_hw:
    if single_h != single_w:
      return -1  # not square: matches no bvlc_alexnet setting
    return single_h
  values = list(repeated) if not isinstance(repeated, int) else [repeated]
  if not values:
    return default
  return values[0] if all(v == values[0] for v in values) else -1


def _conv_settings(p: Any) -> tuple:
  kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField('kernel_h'), 0)
  stride = _pair(p.stride, p.stride_h, p.stride_w, p.HasField('stride_h'), 1)
  pad = _pair(p.pad, p.pad_h, p.pad_w, p.HasField('pad_h'), 0)
  if any(d != 1 for d in p.dilation) or not p.bias_term:
    return ('dilated or without bias',)
  return (p.num_output, kernel, stride, pad, p.group)


def _pool_settings(p: Any) -> tuple:
  if p.pool != 0 or p.global_pooling:
    return ('not a max-pool',)
  if _pair(p.pad, p.pad_h, p.pad_w, p.HasField('pad_h'), 0) != 0:
    return ('padded',)
  kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField('kernel_h'), 0)
  return (kernel, _pair(p.stride, p.stride_h, p.stride_w, p.HasField('stride_h'), 1))


def _lrn_settings(p: Any) -> tuple:
  if p.norm_region != 0:
    return ('within channel',)
  return (p.local_size, p.alpha, p.beta, p.k)


def _settings(layer: _Layer) -> tuple | None:
  """The layer's settings in `_ALEXNET`'s form; None when its message carries none."""
  if layer.type == 'ReLU':
    return () if layer.message.relu_param.negative_slope == 0 else ('leaky',)
  field = _SETTINGS_FIELD[layer.type]
  if not layer.message.HasField(field):
    return None
  p = getattr(layer.message, field)
  if layer.type == 'Convolution':
    return _conv_settings(p)
  if layer.type == 'Pooling':
    return _pool_settings(p)
  if layer.type == 'LRN':
    return _lrn_settings(p)
  if p.axis != 1 or not p.bias_term:
    return ('not a plain inner product',)
  return (p.num_output,)


def _matches(found: tuple, expected: tuple) -> bool:
  """Settings equal, floats as float32 (Caffe stores them so), None matching any value."""
  if len(found) != len(expected):
    return False
  return all(e is None or (np.float32(f) == np.float32(e) if isinstance(e, float) else f == e)
             for f, e in zip(found, expected))


def _describe(layer_type: str, settings: tuple) -> str:
  names = {'Convolution': ('outputs', 'kernel', 'stride', 'pad', 'group'),
           'LRN': ('local_size', 'alpha', 'beta', 'k'), 'Pooling': ('kernel', 'stride'),
           'InnerProduct': ('outputs',)}.get(layer_type, ())
  if len(names) != len(settings):
    return ' '.join(str(s) for s in settings)
  return ' '.join(f'{n} {"any" if v is None else v:g}' if isinstance(v, float) else
                  f'{n} {"any" if v is None else v}' for n, v in zip(names, settings))


def _check_alexnet(layers: list[_Layer], where: str, have_prototxt: bool) -> list[_Layer]:
  """The computing layers of `layers` if they are bvlc_alexnet's; else one line saying why."""
  computing = [l for l in layers if l.type not in _PASSIVE_TYPES]
  for i, (kind, name, expected) in enumerate(_ALEXNET):
    if i >= len(computing):
      raise errors.InputError(f'{where} is not bvlc_alexnet: it ends after '
                              f'{len(computing)} computing layers, where bvlc_alexnet has '
                              f'{kind} {name!r}')
    layer = computing[i]
    named = layer.name.startswith(name) if name == 'fc8' else layer.name == name
    if layer.type != kind or (kind in _PARAM_TYPES and not named):
      raise errors.InputError(f'{where} is not bvlc_alexnet: computing layer {i + 1} is '
                              f'{layer.type} {layer.name!r}, where bvlc_alexnet has {kind} '
                              f'{name!r}')
    settings = _settings(layer)
    if settings is None:
      hint = '' if have_prototxt else '; give its deploy prototxt (--prototxt) as well'
      raise errors.InputError(f'{where} holds no settings for {kind} {layer.name!r}{hint}')
    if not _matches(settings, expected):
      raise errors.InputError(f'{where} is not bvlc_alexnet: {kind} {layer.name!r} has '
                              f'{_describe(kind, settings)}, bvlc_alexnet '
                              f'{_describe(kind, expected)}')
  if len(computing) > len(_ALEXNET):
    extra = computing[len(_ALEXNET)]
    raise errors.InputError(f'{where} is not bvlc_alexnet: it has {extra.type} '
                            f'{extra.name!r} after fc8')
  return computing


def _blob_array(blob: Any, what: str) -> np.ndarray:
  """A BlobProto's values as float32, in the shape it records."""
  if blob.HasField('shape'):
    shape = tuple(int(d) for d in blob.shape.dim)
  else:
    shape = (blob.num, blob.channels, blob.height, blob.width)
  chunks, dtype = (blob.data, '<f4') if blob.data else (blob.double_data, '<f8')
  # One chunk, as Caffe writes it, is read in place (read-only); a split packed field is joined.
  raw = chunks[0] if len(chunks) == 1 else b''.join(chunks)
  if len(raw) % np.dtype(dtype).itemsize:
    raise errors.InputError(f'{what} is cut: {len(raw)} bytes of {dtype[1:]} values')
  values = np.frombuffer(raw, dtype).astype(np.float32, copy=False)
  if values.size != math.prod(shape):
    raise errors.InputError(f'{what} holds {values.size} values where its shape {shape} '
                            f'needs {math.prod(shape)}')
  return values.reshape(shape)


def _weights(layer: _Layer, shape: tuple[int, ...], transpose: bool,
             where: str) -> tuple[np.ndarray, np.ndarray]:
  """(weight, bias) of a conv (O, I/groups, kh, kw) or inner product (out, in) layer."""
  blobs = layer.message.blobs
  if len(blobs) != 2:
    raise errors.InputError(f'{where}: layer {layer.name!r} holds {len(blobs)} blobs, not '
                            'its weights and biases (2)')
  weight = _blob_array(blobs[0], f'{where}: the weights of {layer.name!r}')
  bias = _blob_array(blobs[1], f'{where}: the biases of {layer.name!r}').reshape(-1)
  if len(shape) == 2:
    # V1 blobs are 4-d, (1, 1, out, in); a transposed inner product stores (in, out).
    weight = weight.reshape(weight.shape[-2:]) if weight.ndim > 2 else weight
    weight = weight.T if transpose else weight
  if tuple(weight.shape) != shape or bias.shape != shape[:1]:
    raise errors.InputError(f'{where}: layer {layer.name!r} has weights {tuple(weight.shape)} '
                            f'and biases {tuple(bias.shape)}; its settings and the layers '
                            f'before it make them {shape} and {shape[:1]}')
  return np.ascontiguousarray(weight), bias


def _expected_shapes(computing: list[_Layer], where: str) -> dict[str, tuple[int, ...]]:
  """The weight shape of each parameter layer, chained from the layers' settings."""
  shapes, inputs = {}, 3
  for layer in (l for l in computing if l.type in _PARAM_TYPES):
    settings = _settings(layer)
    outputs = settings[0]
    if layer.type == 'Convolution':
      groups = settings[4]
      if inputs % groups or outputs % groups:
        raise errors.InputError(f'{where}: {layer.name!r} splits {inputs} inputs and '
                                f'{outputs} outputs into {groups} groups')
      shapes[layer.name] = (outputs, inputs // groups, settings[1], settings[1])
    else:
      cells = _POOL5_CELLS if layer.name == 'fc6' else 1  # fc6 reads conv5's pooled map
      shapes[layer.name] = (outputs, inputs * cells)
    inputs = outputs
  return shapes


def read_mean_file(path: str) -> np.ndarray:
  """A Caffe mean image as Caffe stores it: (3, H, W), BGR, 0-255, float32.

  From a binary BlobProto of shape (1, 3, H, W) (`imagenet_mean.binaryproto`, as
  Caffe's compute_image_mean writes it) or a .npy of shape (3, H, W) (Caffe's python
  `ilsvrc_2012_mean.npy`).
  """
  if path.endswith('.npy'):
    try:
      mean = np.load(_checked_path(path, 'mean file'), allow_pickle=False)
    except ValueError as e:
      raise errors.InputError(f'mean file {path} is not a .npy array: {e}') from None
  else:
    blob = _parse_binary(path, 'BlobProto', 'mean file')
    mean = _blob_array(blob, f'mean file {path}')
  mean = mean[0] if mean.ndim == 4 and mean.shape[0] == 1 else mean
  if mean.ndim != 3 or mean.shape[0] != 3 or min(mean.shape[1:]) < 1:
    raise errors.InputError(f'mean file {path} holds an array of shape {tuple(mean.shape)}, '
                            'not one 3-channel image (3, H, W) or (1, 3, H, W)')
  return np.ascontiguousarray(mean, np.float32)


def _structure(path: str, prototxt: str | None) -> tuple[list[_Layer], list[_Layer]]:
  """(the caffemodel's layers, the layers that define the net: the prototxt's if given)."""
  model = _layers(_parse_binary(path, 'NetParameter', 'caffemodel'), path)
  if not model:
    raise errors.InputError(f'{path} holds no layers: it is not a Caffe .caffemodel')
  if prototxt is None:
    return model, model
  defined = _layers(_parse_text(prototxt), prototxt)
  if not defined:
    raise errors.InputError(f'prototxt {prototxt} holds no layers')
  return model, defined


def read(path: str, prototxt: str | None = None,
         mean_file: str | None = None) -> layout.ForeignNet:
  """bvlc_alexnet's weights from a `.caffemodel` (V1 or new format), Caffe's OIHW layout.

  Args:
    path: the `.caffemodel`.
    prototxt: its deploy (or train_val) prototxt; the net's layers and settings are taken
      from it, the weights from `path` by layer name. Needed only when the caffemodel
      lacks the settings.
    mean_file: a Caffe mean file (`imagenet_mean.binaryproto`): the mean image the run
      then subtracts instead of the per-channel mean.
  """
  model, defined = _structure(path, prototxt)
  computing = _check_alexnet(defined, prototxt or path, prototxt is not None)
  by_name = {layer.name: layer for layer in model}
  shapes = _expected_shapes(computing, prototxt or path)
  layers, groups = {}, {}
  for layer in (l for l in computing if l.type in _PARAM_TYPES):
    if layer.name not in by_name:
      raise errors.InputError(f'{path} holds no weights for layer {layer.name!r} of '
                              f'{prototxt}')
    key = 'fc8' if layer.name.startswith('fc8') else layer.name
    transpose = layer.type == 'InnerProduct' and layer.message.inner_product_param.transpose
    layers[key] = _weights(by_name[layer.name], shapes[layer.name], transpose, path)
    if layer.type == 'Convolution':
      groups[key] = _settings(layer)[4]
  mean = read_mean_file(mean_file) if mean_file else None
  return layout.ForeignNet(family='caffe', layers=layers, groups=groups, mean_bgr_image=mean)
