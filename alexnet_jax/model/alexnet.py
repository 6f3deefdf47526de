"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as a Flax Linen module.

The network is applied as a pure function of its parameters:

  model = AlexNet()
  variables = model.init({'params': key}, images)            # NHWC images
  logits = model.apply({'params': params}, images, train=False)
  logits = model.apply({'params': params}, images, train=True,
                       rngs={'dropout': key})

`towers=2` is the paper's two-GPU network: conv2, conv4 and conv5 connect only
within a tower (half of the input channels feed half of the output channels);
conv1, conv3 and the fully connected layers see everything. Every weight carries
logical axis names (`conv_out`, `fc_out`, `classes`, ...); `alexnet_jax.sharding.meshes` maps them
onto a device mesh, so this file names no devices or mesh axes. Under such a mesh
the grouped convs run tower-local on each device (`tower_shard_specs`).
The parameter-free LRN and max-pool layers, with their hand-written gradients,
are in `alexnet_jax.model.layers`.

Precision (docs/design.md, "Numerics under bfloat16"). Parameters are float32 under
any `dtype`. With dtype='bfloat16':
- conv1 is float32 throughout: its input (pixels minus the mean, plus the lighting
  shift) and kernel stay float32, the convolution runs at Precision.HIGHEST (no
  TF32 or bfloat16 passes on any backend) and the bias is added in float32; only its
  output is rounded to bfloat16.
- conv2-conv5 take bfloat16 inputs and kernels and give bfloat16 outputs.
- fc6, fc7 and fc8 round their inputs and kernels to bfloat16 (8 significant bits),
  sum the products in float32 and add the float32 bias in float32. fc6 and fc7 then
  round to bfloat16; fc8 does not: the logits are float32 sums that were never rounded
  to bfloat16. Their difference from a float32 network's logits comes from the
  bfloat16 operands (fc8's inputs and kernel and every layer before), not from a last
  rounding to steps of 2^-8 to 2^-7 of their magnitude (0.0625 for logits of 8-16).
With dtype='float32' every layer takes float32; conv1 runs at Precision.HIGHEST there
too, the others at JAX's default precision (which lets recent NVIDIA GPUs use TF32 and
TPUs bfloat16 passes).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.core import errors
# Called by name in AlexNet.__call__, so benchmarks/train_step.py can swap in other forms.
from alexnet_jax.model.layers import POOL_STRIDE, POOL_WINDOW, local_response_norm, max_pool

Array = jax.Array
Initializer = Callable[..., Array]

# The paper's layer widths at width=1.0.
CONV_FEATURES = (96, 256, 384, 384, 256)
FC_FEATURES = 4096
# conv name -> (kernel size, stride, padding or None for conv1, grouped in the two-tower net)
CONV_LAYOUT = {
    'conv1': (11, 4, None, False),
    'conv2': (5, 1, 2, True),
    'conv3': (3, 1, 1, False),
    'conv4': (3, 1, 1, True),
    'conv5': (3, 1, 1, True),
}
# Convs computed in float32 at full precision under any compute dtype: conv1, so that
# its input (pixels minus the mean, plus the lighting shift) is not rounded to bfloat16
# (docs/design.md, "Numerics under bfloat16").
FULL_PRECISION_CONVS = ('conv1',)
# The compute dtypes the network runs in (its LRN and softmax work in float32 inside);
# an integer or float64 type would fail, or silently compute in float32, after set-up.
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
GROUP_IMPLS = ('split', 'feature_group')

# Logical axis names of the weights; the sharding rules table maps them to mesh axes.
CONV_KERNEL_AXES = ('conv_h', 'conv_w', 'conv_in', 'conv_out')
CONV_BIAS_AXES = ('conv_out',)
FC_KERNEL_AXES = ('fc_in', 'fc_out')
FC_BIAS_AXES = ('fc_out',)
# fc8's outputs have a name of their own: any class count must work, and a count the
# model axis does not divide keeps fc8 whole (sharding.rules_for_sizes, docs/sharding.md).
CLASSES_AXIS = 'classes'
# Logical names of a conv activation (NHWC): images on `batch`, feature maps on `conv_out`.
CONV_ACTIVATION_AXES = ('batch', None, None, 'conv_out')


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def _pool_out(size: int, window: int, stride: int) -> int:
  return (size - window) // stride + 1


def spatial_sizes(input_size: int, conv1_padding: int, pool_size: int = POOL_WINDOW,
                  pool_stride: int = POOL_STRIDE) -> dict[str, int]:
  """Spatial side after each layer (square inputs), from the layer arithmetic."""
  pool = lambda size: _pool_out(size, pool_size, pool_stride)
  s = {}
  s['conv1'] = _conv_out(input_size, 11, 4, conv1_padding)
  s['pool1'] = pool(s['conv1'])
  s['conv2'] = s['pool1']
  s['pool2'] = pool(s['conv2'])
  s['conv3'] = s['conv4'] = s['conv5'] = s['pool2']
  s['pool5'] = pool(s['conv5'])
  return s


def _normal(std: float) -> Initializer:
  return nn.initializers.normal(stddev=std)


_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')  # the paper's biases of 1
# init scheme -> layer name -> (kernel initializer, bias value); see layer_init.
_INITS: dict[str, Callable[[str], tuple[Initializer, float]]] = {
    'paper': lambda name: (_normal(0.01), 1.0 if name in _BIAS_ONE else 0.0),
    'caffe': lambda name: (_normal(0.005 if name in ('fc6', 'fc7') else 0.01),
                           0.1 if name in _BIAS_ONE else 0.0),
    'he': lambda name: (nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'), 0.0),
}
INIT_SCHEMES = tuple(_INITS)


def layer_init(scheme: str, name: str) -> tuple[Initializer, float]:
  """(kernel initializer, bias value) of one layer under an init scheme.

  paper: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7 (to give
    the ReLUs positive inputs early on), 0 in conv1, conv3, fc8.
  caffe: the bvlc_alexnet reproduction, which found the paper's biases of 1 gave a
    flat loss: std 0.005 in fc6/fc7, biases 0.1 where the paper has 1.
  he: N(0, 2/fan_in) weights (He et al., 2015), zero biases.
  `scheme` is one of INIT_SCHEMES: check_fields refuses any other before a layer is built.
  """
  return _INITS[scheme](name)


def _axes_size(mesh: jax.sharding.AbstractMesh, axes: Any) -> int:
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[name] for name in names)


def tower_shard_specs(batch: int, groups: int) -> tuple[
    jax.sharding.PartitionSpec, jax.sharding.PartitionSpec, int] | None:
  """How a grouped conv divides over the ambient mesh, or None to run it whole.

  Under `jax.set_mesh(...)` and `nn.logical_axis_rules(...)` that put `conv_out`
  on a mesh axis whose size divides `groups`, each device holds whole towers of
  the activation and of the kernel. Returns (activation spec, kernel spec,
  towers per device); the mesh axis names come from the rules, not from here.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if groups == 1 or mesh.empty or not nn.get_logical_axis_rules():
    return None
  act = list(nn.logical_to_mesh_axes(CONV_ACTIVATION_AXES))
  tower_devices = _axes_size(mesh, act[-1])
  if tower_devices == 1 or groups % tower_devices:
    return None
  if batch % _axes_size(mesh, act[0]):
    act[0] = None  # e.g. init on a batch of one: replicate the images instead of failing
  kernel = nn.logical_to_mesh_axes(CONV_KERNEL_AXES)
  return jax.sharding.PartitionSpec(*act), kernel, groups // tower_devices


class Conv(nn.Module):
  """A convolution with `groups` towers and one HWIO kernel (I = in / groups).

  Output channels are ordered tower-major, so tower t owns output channels
  [t * out/groups, (t+1) * out/groups): sharding `conv_out` over two devices
  puts exactly one tower on each.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  groups: int = 1
  kernel_init: Initializer = _normal(0.01)
  bias_value: float = 0.0
  dtype: Any = jnp.float32
  group_impl: str = 'split'
  # True for conv1: input, kernel, sum and bias in float32 at full precision whatever
  # `dtype` is, and only the output cast to `dtype` (docs/design.md, "Numerics under
  # bfloat16"). The output before that cast is sown as ('intermediates', 'float32').
  full_precision: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    shape = (self.kernel_size, self.kernel_size, in_features // self.groups, self.features)
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, CONV_KERNEL_AXES),
                        shape, jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(
        nn.initializers.constant(self.bias_value), CONV_BIAS_AXES), (self.features,), jnp.float32)
    compute = jnp.float32 if self.full_precision else self.dtype
    # HIGHEST: without it a float32 conv may still round its operands, to TF32 (10
    # significant bits) on NVIDIA GPUs or to bfloat16 on TPUs.
    precision = jax.lax.Precision.HIGHEST if self.full_precision else None
    x = x.astype(compute)
    kernel = kernel.astype(compute)
    conv = lambda inp, ker, groups: jax.lax.conv_general_dilated(
        inp, ker, (self.stride, self.stride), [(self.padding, self.padding)] * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
        precision=precision)

    def grouped(inp: Array, ker: Array, groups: int) -> Array:
      if groups == 1:
        return conv(inp, ker, 1)
      if self.group_impl == 'feature_group':
        return conv(inp, ker, groups)
      # One plain conv per tower: about 3x faster than feature_group_count on
      # XLA:CPU (docs/design.md, "XLA:CPU measurements").
      xs = jnp.split(inp, groups, axis=-1)
      ks = jnp.split(ker, groups, axis=-1)
      return jnp.concatenate([conv(xi, ki, 1) for xi, ki in zip(xs, ks)], axis=-1)

    specs = tower_shard_specs(x.shape[0], self.groups)
    if specs is None:
      y = grouped(x, kernel, self.groups)
    else:
      # Each device convolves only the towers it holds, as each of the paper's
      # GPUs did. Left to itself, XLA's partitioner gathers a grouped conv's
      # input and kernel onto every device (tests/test_sharding.py shows both).
      act_spec, kernel_spec, local_groups = specs
      y = jax.shard_map(lambda xi, ki: grouped(xi, ki, local_groups),
                        in_specs=(act_spec, kernel_spec), out_specs=act_spec)(x, kernel)
    y = y + bias.astype(compute)
    if self.full_precision:
      self.sow('intermediates', 'float32', y)
    return y.astype(self.dtype)


class Dense(nn.Module):
  """A fully connected layer with logically named (in, out) kernel.

  Inputs and kernel are cast to `dtype`; the products are summed in float32 and the
  float32 bias is added to that sum, so the one rounding to `dtype` (if any) comes
  last. `output_dtype` float32 (fc8) skips it.
  """
  features: int
  kernel_init: Initializer = _normal(0.01)
  bias_value: float = 0.0
  dtype: Any = jnp.float32
  out_axis: str = FC_KERNEL_AXES[1]  # logical name of the outputs: fc_out, or classes for fc8
  output_dtype: Any = None  # None: `dtype`

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.with_logical_partitioning(
        self.kernel_init, (FC_KERNEL_AXES[0], self.out_axis)), (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(
        nn.initializers.constant(self.bias_value), (self.out_axis,)), (self.features,),
                      jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return (y + bias).astype(self.dtype if self.output_dtype is None else self.output_dtype)


def scaled_widths(width: float, conv_widths: Sequence[int] | None = None
                  ) -> tuple[tuple[int, ...], int]:
  """Conv widths and hidden fc width at a width multiplier (check_fields checks both).

  conv_widths: the five conv widths at width 1.0; None is the paper's CONV_FEATURES.
  """
  base = CONV_FEATURES if conv_widths is None else tuple(conv_widths)
  convs = tuple(max(1, int(round(c * width))) for c in base)
  return convs, max(1, int(round(FC_FEATURES * width)))


# Widest layer a config may ask for: past it the weights alone outgrow any device's memory,
# and the widths' arithmetic leaves the integers XLA's shapes hold.
MAX_LAYER_WIDTH = 2 ** 16


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _compute_dtype_name(dtype: Any) -> str | None:
  try:
    return jnp.dtype(dtype).name
  except (TypeError, ValueError):
    return None


def check_fields(net: 'AlexNet') -> None:
  """Raises errors.InputError naming the first field of `net` with an impossible value.

  The one check of every config.model field: resolution.validate reaches it through
  `from_config`, a network built without a config through `AlexNet.check`; the
  functions below the network (layer_init, scaled_widths, layers.max_pool) trust it.
  """
  if net.init_scheme not in INIT_SCHEMES:
    raise errors.InputError(
        f'unknown init scheme {net.init_scheme!r}; expected one of {INIT_SCHEMES}')
  if net.group_impl not in GROUP_IMPLS:
    raise errors.InputError(f'unknown group_impl {net.group_impl!r}; expected one of {GROUP_IMPLS}')
  if net.towers not in (1, 2):
    raise errors.InputError(f'towers must be 1 or 2, got {net.towers}')
  if net.num_classes < 1:
    raise errors.InputError(f'num_classes must be >= 1, got {net.num_classes}')
  if not 0.0 <= net.dropout_rate < 1.0:
    raise errors.InputError(f'dropout_rate must be in [0, 1), got {net.dropout_rate}')
  if not net.input_scale > 0:
    raise errors.InputError(f'input_scale must be > 0, got {net.input_scale}')
  if net.conv1_padding < 0:
    raise errors.InputError(f'conv1_padding must be >= 0, got {net.conv1_padding}')
  if _compute_dtype_name(net.dtype) not in COMPUTE_DTYPES:
    # 'auto' is the config's, resolved to one of these before a network is built.
    raise errors.InputError(f"config.model.dtype must be 'auto' or one of {COMPUTE_DTYPES}, "
                            f'got {net.dtype!r}')
  for name in ('pool_size', 'pool_stride'):
    if not _positive_int(getattr(net, name)):
      raise errors.InputError(
          f'config.model.{name} must be a positive integer, got {getattr(net, name)!r}')
  if not net.width > 0:
    raise errors.InputError(f'model width multiplier must be > 0, got {net.width}')
  widths = net.conv_widths
  if widths is not None and not (isinstance(widths, (tuple, list)) and len(widths) == 5
                                 and all(_positive_int(c) for c in widths)):
    raise errors.InputError('config.model.conv_widths must be None or five positive integers '
                            f'(conv1-conv5), got {widths!r}')
  if not math.isfinite(net.width) or max(
      (*(widths or CONV_FEATURES), FC_FEATURES)) * net.width > MAX_LAYER_WIDTH:
    raise errors.InputError(
        f'config.model.width {net.width} with conv_widths {widths} makes a layer wider than '
        f'{MAX_LAYER_WIDTH:,} channels (width 16 already holds about 15 G parameters)')
  _check_lrn_and_std(net)
  for name, c in zip(CONV_LAYOUT, scaled_widths(net.width, widths)[0]):
    if c % net.towers:
      raise errors.InputError(
          f'{name} width {c} (width multiplier {net.width}) is not divisible by '
          f'towers={net.towers}; choose a width giving even conv widths')


def _positive_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def _check_lrn_and_std(net: 'AlexNet') -> None:
  if not _positive_number(net.lrn_k):
    raise errors.InputError(f'config.model.lrn_k must be a number > 0, got {net.lrn_k!r}')
  if not (_positive_number(net.lrn_alpha) or net.lrn_alpha == 0):
    raise errors.InputError(f'config.model.lrn_alpha must be a number >= 0, got {net.lrn_alpha!r}')
  std = net.input_std
  if std is not None and not (isinstance(std, (tuple, list)) and len(std) == 3
                              and all(_positive_number(s) for s in std)):
    raise errors.InputError('config.model.input_std must be None or three numbers > 0 '
                            f'(R, G, B, 0-255 units), got {std!r}')


class AlexNet(nn.Module):
  """The paper's network; see the module docstring and docs/design.md, "The network"."""
  num_classes: int = 1000
  towers: int = 2
  use_lrn: bool = True
  dropout_rate: float = 0.5
  conv1_padding: int = 2
  width: float = 1.0
  dtype: Any = jnp.float32
  init_scheme: str = 'paper'
  group_impl: str = 'split'
  # Multiplies the input (pixels minus mean, 0-255 units). 1.0 is the paper's raw
  # scale, which its N(0, 0.01^2) init was chosen for; He init assumes inputs of
  # unit variance, i.e. about 1/64 here (pixel deviations have a std of ~50-80).
  input_scale: float = 1.0
  # Max-pooling window and stride: 3 and 2 overlap (the paper, section 3.4); 2 and 2 do not.
  pool_size: int = POOL_WINDOW
  pool_stride: int = POOL_STRIDE
  # The five conv widths at width 1.0 (a tuple); None: the paper's CONV_FEATURES. The
  # one-tower comparison net of section 3.2 halves conv1-conv4: (48, 128, 192, 192, 256).
  conv_widths: tuple[int, ...] | None = None
  # LRN constant k and alpha in the paper's form (alpha not divided by the window of 5):
  # the paper's k=2, alpha=1e-4; Caffe's bvlc_alexnet k=1 and alpha 1e-4/5 = 2e-5 here.
  lrn_k: float = 2.0
  lrn_alpha: float = 1e-4
  # Per-channel (R, G, B) divisor of the input after input_scale, in 0-255 units; None:
  # none. torchvision's std (0.229, 0.224, 0.225) of 0-1 pixels is 255 times that here.
  input_std: tuple[float, ...] | None = None

  def check(self, input_shape: Sequence[int] | None = None) -> None:
    """Raises ValueError for a bad field (check_fields) or input shape, before any compile."""
    check_fields(self)
    if input_shape is None:
      return
    if len(input_shape) != 4:
      raise ValueError(f'images must be NHWC (rank 4), got shape {tuple(input_shape)}')
    if input_shape[-1] != 3:
      raise ValueError(f'images must have 3 (RGB) channels last, got shape {tuple(input_shape)}')
    h, w = input_shape[1], input_shape[2]
    for side in (h, w):
      if self.spatial_sizes(side)['pool5'] < 1:
        raise errors.InputError(
            f'input {h}x{w} is too small: pool5 would be empty (need at least '
            f'{min_input_size(self.conv1_padding, self.pool_size, self.pool_stride)}'
            ' pixels per side)')

  def spatial_sizes(self, input_size: int) -> dict[str, int]:
    """`spatial_sizes` of this network's conv1 padding and pooling."""
    return spatial_sizes(input_size, self.conv1_padding, self.pool_size, self.pool_stride)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    self.check(x.shape)
    dtype = jnp.dtype(self.dtype)
    convs, hidden = scaled_widths(self.width, self.conv_widths)
    if self.input_scale != 1.0:
      x = x * self.input_scale
    if self.input_std is not None:
      x = x / jnp.asarray(self.input_std, jnp.float32)

    def conv(name: str, features: int, inp: Array) -> Array:
      ksize, stride, pad, grouped = CONV_LAYOUT[name]
      pad = self.conv1_padding if pad is None else pad
      groups = self.towers if grouped else 1
      # variance_scaling reads fan-in from the HWIO kernel, i.e. per tower.
      kinit, bias = layer_init(self.init_scheme, name)
      return Conv(features, ksize, stride, pad, groups, kinit, bias, dtype,
                  self.group_impl, full_precision=name in FULL_PRECISION_CONVS, name=name)(inp)

    def dense(name: str, features: int, inp: Array, out_axis: str = FC_KERNEL_AXES[1],
              output_dtype: Any = None) -> Array:
      kinit, bias = layer_init(self.init_scheme, name)
      return Dense(features, kinit, bias, dtype, out_axis, output_dtype, name=name)(inp)

    def sown(name: str, value: Array) -> Array:
      # LRN, pooling and dropout are functions, not modules, so `capture_intermediates`
      # does not see them; sown under names, the tests can check each against the paper.
      # A no-op unless the caller makes 'intermediates' mutable.
      self.sow('intermediates', name, value)
      return value

    x = nn.relu(conv('conv1', convs[0], x))
    lrn = functools.partial(local_response_norm, k=self.lrn_k, alpha=self.lrn_alpha)
    if self.use_lrn:
      x = sown('lrn1', lrn(x))
    x = sown('pool1', max_pool(x, self.pool_size, self.pool_stride))
    x = nn.relu(conv('conv2', convs[1], x))
    if self.use_lrn:
      x = sown('lrn2', lrn(x))
    x = sown('pool2', max_pool(x, self.pool_size, self.pool_stride))
    x = nn.relu(conv('conv3', convs[2], x))
    x = nn.relu(conv('conv4', convs[3], x))
    x = nn.relu(conv('conv5', convs[4], x))
    x = sown('pool5', max_pool(x, self.pool_size, self.pool_stride))
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order, as stored in fc6's kernel rows
    x = nn.relu(dense('fc6', hidden, x))
    x = sown('dropout6', nn.Dropout(self.dropout_rate, deterministic=not train)(x))
    x = nn.relu(dense('fc7', hidden, x))
    x = sown('dropout7', nn.Dropout(self.dropout_rate, deterministic=not train)(x))
    # Logits in float32, never rounded to `dtype`: the softmax and its loss are computed
    # at full precision, and the top-k errors see no ties that rounding made
    # (docs/design.md, "Numerics under bfloat16").
    return dense('fc8', self.num_classes, x, CLASSES_AXIS, jnp.float32)


def min_input_size(conv1_padding: int, pool_size: int = POOL_WINDOW,
                   pool_stride: int = POOL_STRIDE) -> int:
  """Smallest square input side with a non-empty pool5."""
  side = 11
  while spatial_sizes(side, conv1_padding, pool_size, pool_stride)['pool5'] < 1:
    side += 1
  return side


def from_config(model_config: Any) -> AlexNet:
  """An AlexNet from `config.model` (ml_collections ConfigDict or a mapping)."""
  fields = {f.name for f in dataclasses.fields(AlexNet) if f.name not in ('parent', 'name')}
  values = dict(model_config)
  for name in ('conv_widths', 'input_std'):
    if isinstance(values.get(name), list):  # a config read back from JSON
      values[name] = tuple(values[name])
  unknown = sorted(set(values) - fields)
  if unknown:
    raise errors.InputError(f'unknown config.model fields {unknown}; known: {sorted(fields)}')
  model = AlexNet(**values)
  model.check()
  return model
