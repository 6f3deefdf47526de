"""The few messages of Caffe's `caffe.proto` that a bvlc_alexnet file uses, compiled at run time.

A `.caffemodel` is a binary `NetParameter`, a deploy prototxt is the same message in
protobuf's text format and a mean file is a binary `BlobProto`. The schema below keeps
only the fields the importer reads, with Caffe's field numbers and defaults; the
protobuf parsers skip every other field, so no Caffe install or generated `caffe_pb2`
is needed. Why protobuf and not a hand-written reader: docs/design.md, "Caffe files".

Blob values are declared as `repeated bytes`, not `repeated float`: Caffe writes them
packed, and a packed float field is, on the wire, a length-delimited run of little-endian
float32 values, which is exactly how a bytes field is encoded. numpy then reads the 37
million values of fc6 in place instead of through one Python float each.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    'int32': _F.TYPE_INT32, 'int64': _F.TYPE_INT64, 'uint32': _F.TYPE_UINT32,
    'float': _F.TYPE_FLOAT, 'bool': _F.TYPE_BOOL, 'string': _F.TYPE_STRING,
    'bytes': _F.TYPE_BYTES,
}

# V1LayerParameter.LayerType, whole: a prototxt in the V1 format names its layer types by
# these words, and the text parser refuses a word its enum lacks.
V1_LAYER_TYPES = {
    'NONE': 0, 'ABSVAL': 35, 'ACCURACY': 1, 'ARGMAX': 30, 'BNLL': 2, 'CONCAT': 3,
    'CONTRASTIVE_LOSS': 37, 'CONVOLUTION': 4, 'DATA': 5, 'DECONVOLUTION': 39, 'DROPOUT': 6,
    'DUMMY_DATA': 32, 'EUCLIDEAN_LOSS': 7, 'ELTWISE': 25, 'EXP': 38, 'FLATTEN': 8,
    'HDF5_DATA': 9, 'HDF5_OUTPUT': 10, 'HINGE_LOSS': 28, 'IM2COL': 11, 'IMAGE_DATA': 12,
    'INFOGAIN_LOSS': 13, 'INNER_PRODUCT': 14, 'LRN': 15, 'MEMORY_DATA': 29,
    'MULTINOMIAL_LOGISTIC_LOSS': 16, 'MVN': 34, 'POOLING': 17, 'POWER': 26, 'RELU': 18,
    'SIGMOID': 19, 'SIGMOID_CROSS_ENTROPY_LOSS': 27, 'SILENCE': 36, 'SOFTMAX': 20,
    'SOFTMAX_LOSS': 21, 'SPLIT': 22, 'SLICE': 33, 'TANH': 23, 'WINDOW_DATA': 24,
    'THRESHOLD': 31,
}

# message -> fields (name, number, type, repeated, default); a type that is not a
# scalar names a message or enum of this schema. Numbers and defaults are caffe.proto's.
_MESSAGES: dict[str, list[tuple[str, int, str, bool, str | None]]] = {
    'BlobShape': [('dim', 1, 'int64', True, None)],
    'BlobProto': [
        ('shape', 7, 'BlobShape', False, None),
        ('data', 5, 'bytes', True, None),         # packed float32 on the wire
        ('double_data', 8, 'bytes', True, None),  # packed float64 on the wire
        ('num', 1, 'int64', False, None), ('channels', 2, 'int64', False, None),
        ('height', 3, 'int64', False, None), ('width', 4, 'int64', False, None),
    ],
    'ConvolutionParameter': [
        ('num_output', 1, 'uint32', False, None), ('bias_term', 2, 'bool', False, 'true'),
        ('pad', 3, 'uint32', True, None), ('kernel_size', 4, 'uint32', True, None),
        ('group', 5, 'uint32', False, '1'), ('stride', 6, 'uint32', True, None),
        ('pad_h', 9, 'uint32', False, None), ('pad_w', 10, 'uint32', False, None),
        ('kernel_h', 11, 'uint32', False, None), ('kernel_w', 12, 'uint32', False, None),
        ('stride_h', 13, 'uint32', False, None), ('stride_w', 14, 'uint32', False, None),
        ('dilation', 18, 'uint32', True, None),
    ],
    'PoolingParameter': [
        ('pool', 1, 'PoolMethod', False, 'MAX'), ('kernel_size', 2, 'uint32', False, None),
        ('stride', 3, 'uint32', False, '1'), ('pad', 4, 'uint32', False, '0'),
        ('kernel_h', 5, 'uint32', False, None), ('kernel_w', 6, 'uint32', False, None),
        ('stride_h', 7, 'uint32', False, None), ('stride_w', 8, 'uint32', False, None),
        ('pad_h', 9, 'uint32', False, None), ('pad_w', 10, 'uint32', False, None),
        ('global_pooling', 12, 'bool', False, 'false'),
    ],
    'LRNParameter': [
        ('local_size', 1, 'uint32', False, '5'), ('alpha', 2, 'float', False, '1'),
        ('beta', 3, 'float', False, '0.75'), ('norm_region', 4, 'NormRegion', False,
                                               'ACROSS_CHANNELS'),
        ('k', 5, 'float', False, '1'),
    ],
    'InnerProductParameter': [
        ('num_output', 1, 'uint32', False, None), ('bias_term', 2, 'bool', False, 'true'),
        ('axis', 5, 'int32', False, '1'), ('transpose', 6, 'bool', False, 'false'),
    ],
    'ReLUParameter': [('negative_slope', 1, 'float', False, '0')],
    'LayerParameter': [
        ('name', 1, 'string', False, None), ('type', 2, 'string', False, None),
        ('bottom', 3, 'string', True, None), ('top', 4, 'string', True, None),
        ('blobs', 7, 'BlobProto', True, None),
        ('convolution_param', 106, 'ConvolutionParameter', False, None),
        ('inner_product_param', 117, 'InnerProductParameter', False, None),
        ('lrn_param', 118, 'LRNParameter', False, None),
        ('pooling_param', 121, 'PoolingParameter', False, None),
        ('relu_param', 123, 'ReLUParameter', False, None),
    ],
    'V1LayerParameter': [
        ('bottom', 2, 'string', True, None), ('top', 3, 'string', True, None),
        ('name', 4, 'string', False, None), ('type', 5, 'LayerType', False, None),
        ('blobs', 6, 'BlobProto', True, None),
        ('convolution_param', 10, 'ConvolutionParameter', False, None),
        ('inner_product_param', 17, 'InnerProductParameter', False, None),
        ('lrn_param', 18, 'LRNParameter', False, None),
        ('pooling_param', 19, 'PoolingParameter', False, None),
        ('relu_param', 30, 'ReLUParameter', False, None),
        # The V0 layer nested in a V1 one: only its presence is read, to refuse the format.
        ('layer', 1, 'bytes', False, None),
    ],
    'NetParameter': [
        ('name', 1, 'string', False, None),
        ('layers', 2, 'V1LayerParameter', True, None),
        ('layer', 100, 'LayerParameter', True, None),
    ],
}
# enum -> (the message it is nested in, values)
_ENUMS = {
    'PoolMethod': ('PoolingParameter', {'MAX': 0, 'AVE': 1, 'STOCHASTIC': 2}),
    'NormRegion': ('LRNParameter', {'ACROSS_CHANNELS': 0, 'WITHIN_CHANNEL': 1}),
    'LayerType': ('V1LayerParameter', V1_LAYER_TYPES),
}


def _field(spec: tuple[str, int, str, bool, str | None]) -> _F:
  name, number, kind, repeated, default = spec
  field = _F(name=name, number=number,
             label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
  if kind in _SCALARS:
    field.type = _SCALARS[kind]
  elif kind in _ENUMS:
    field.type = _F.TYPE_ENUM
    field.type_name = f'.caffe.{_ENUMS[kind][0]}.{kind}'
  else:
    field.type = _F.TYPE_MESSAGE
    field.type_name = f'.caffe.{kind}'
  if default is not None:
    field.default_value = default
  return field


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
  proto = descriptor_pb2.FileDescriptorProto(
      name='alexnet_jax_caffe_subset.proto', package='caffe', syntax='proto2')
  for name, fields in _MESSAGES.items():
    message = proto.message_type.add(name=name)
    message.field.extend(_field(spec) for spec in fields)
    for enum_name, (owner, values) in _ENUMS.items():
      if owner == name:
        enum = message.enum_type.add(name=enum_name)
        for value_name, number in sorted(values.items(), key=lambda item: item[1]):
          enum.value.add(name=value_name, number=number)
  return proto


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
  # A pool of its own, so a real `caffe_pb2` loaded in the same process (its package is
  # also `caffe`) cannot clash with this schema.
  pool = descriptor_pool.DescriptorPool()
  pool.Add(_file_descriptor())
  return pool


def message_class(name: str) -> Any:
  """The message class `name` ('NetParameter', 'BlobProto', ...) of the minimal schema."""
  return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f'caffe.{name}'))
