"""Weights in PyTorch's and Caffe's layout, and their exact mapping to this project's network.

  net = torchvision_io.read('alexnet-owt-7be5be79.pth')   # a ForeignNet
  config = layout.config_for(net, num_classes=1000)      # the run config those weights need
  params = layout.to_flax(net, config)                   # this project's parameter pytree
  net2 = layout.from_flax(params, config)                # and back, bitwise

A ForeignNet holds each layer as PyTorch and Caffe store it: conv weights (O, I/groups,
kh, kw), fc weights (out, in), fc6's inputs flattened in (C, H, W) order. The mapping to
this project's HWIO and (in, out) kernels is a permutation of elements only (transposes,
fc6's row order, conv1's input channel order), so to_flax and from_flax are exact
inverses. docs/design.md, "Imported weights", lists every difference handled here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.configs import imagenet
from alexnet_jax.core import errors
from alexnet_jax.model import alexnet

CAFFE, TORCHVISION = 'caffe', 'torchvision'
FAMILIES = (CAFFE, TORCHVISION)
CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FCS = ('fc6', 'fc7', 'fc8')
LAYERS = CONVS + FCS

# Caffe's bvlc_alexnet at test time: BGR 0-255 pixels minus these per-channel means
# (its deploy model's ilsvrc_2012_mean.npy, averaged per channel), 227 crops, conv1
# unpadded, LRN with k=1 and alpha=1e-4 divided by the window of 5.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
CAFFE_LRN_K = 1.0
CAFFE_LRN_ALPHA = 1e-4 / 5  # the paper's form: Caffe divides its alpha by local_size
# torchvision's ImageNet preprocessing of 0-1 RGB pixels: (x - mean) / std.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
TORCHVISION_WIDTHS = (64, 192, 384, 256, 256)


@dataclasses.dataclass(frozen=True)
class ForeignNet:
  """An AlexNet's weights in the PyTorch/Caffe convention.

  family: 'caffe' (two towers, LRN, 227 crops, conv1 unpadded, BGR 0-255 input minus
    a mean) or 'torchvision' (one tower 64-192-384-256-256, no LRN, 224 crops, RGB
    0-1 input normalised by mean and std).
  layers: 'conv1'..'conv5', 'fc6', 'fc7', 'fc8' -> (weight, bias), float32. Conv weight
    (O, I/groups, kh, kw); fc weight (out, in), fc6's `in` flattening (C, H, W).
  groups: conv name -> groups (Caffe's conv2, conv4, conv5: 2).
  mean_bgr_image: a Caffe mean file's image (3, H, W), BGR 0-255, if one was given.
  """
  family: str
  layers: dict[str, tuple[np.ndarray, np.ndarray]]
  groups: dict[str, int]
  mean_bgr_image: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class RunWeights:
  """What a run needs besides its weights' origin: a full config, this project's params
  pytree and the RGB 0-255 mean image (S, S, 3) of its preprocessing."""
  config: ml_collections.ConfigDict
  params: dict[str, Any]
  mean_image: np.ndarray


def as_run(net: ForeignNet | RunWeights, num_classes: int | None = None) -> RunWeights:
  """RunWeights of a reader's result: a ForeignNet gets config_for's config and its mean."""
  if isinstance(net, RunWeights):
    return net
  config = config_for(net, num_classes)
  return RunWeights(config, to_flax(net, config), mean_image_for(net, config.data.image_size))


def family_of(config: ml_collections.ConfigDict) -> str:
  """The layout a run's weights export to: torchvision's for one tower without LRN, else
  Caffe's (whose conv1 reads BGR)."""
  model = config.model
  return TORCHVISION if model.towers == 1 and not model.use_lrn else CAFFE


def _groups_for(towers: int) -> dict[str, int]:
  grouped = ('conv2', 'conv4', 'conv5')
  return {name: (towers if name in grouped else 1) for name in CONVS}


def check_net(net: ForeignNet) -> None:
  """Raises errors.InputError naming the first layer that is missing or of a wrong form."""
  if net.family not in FAMILIES:
    raise errors.InputError(f'unknown weights family {net.family!r}; expected one of {FAMILIES}')
  missing = [name for name in LAYERS if name not in net.layers]
  if missing:
    raise errors.InputError(f'the weights lack layers {missing} (an AlexNet has {list(LAYERS)})')
  for name in LAYERS:
    weight, bias = net.layers[name]
    rank = 4 if name in CONVS else 2
    if weight.ndim != rank or bias.shape != (weight.shape[0],):
      raise errors.InputError(
          f'{name}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are not an '
          f'{"(O, I, kh, kw)" if rank == 4 else "(out, in)"} weight and its (O,) bias')
  if set(net.groups.values()) - {1, 2} or net.groups.get('conv1', 1) != 1 or (
      net.groups.get('conv3', 1) != 1):
    raise errors.InputError(f'groups {net.groups}: this network groups only conv2, conv4 and '
                            'conv5, into 1 or 2 towers')
  towers = {net.groups.get(n, 1) for n in ('conv2', 'conv4', 'conv5')}
  if len(towers) != 1:
    raise errors.InputError(f'groups {net.groups}: conv2, conv4 and conv5 must have the same '
                            'number of towers')


def _towers(net: ForeignNet) -> int:
  return net.groups.get('conv2', 1)


def config_for(net: ForeignNet, num_classes: int | None = None) -> ml_collections.ConfigDict:
  """A full run config (configs/imagenet.py's, changed where the weights need it) for `net`.

  The network's widths, towers, LRN and conv1 padding come from the weights; the
  input from the family: Caffe's BGR 0-255 minus a mean (the channel order is
  handled in conv1's weights, so the run reads RGB like every run), torchvision's
  (x/255 - mean) / std, written as 0-255 pixels minus 255 x mean divided by 255 x std.
  The mean itself lives in the run's dataset description (run_writer).
  """
  check_net(net)
  convs = tuple(int(net.layers[name][0].shape[0]) for name in CONVS)
  hidden = int(net.layers['fc6'][0].shape[0])
  classes = int(net.layers['fc8'][0].shape[0]) if num_classes is None else num_classes
  if hidden != int(net.layers['fc7'][0].shape[0]) or hidden != int(net.layers['fc8'][0].shape[1]):
    raise errors.InputError(f'fc6, fc7 and fc8 widths {hidden}, {net.layers["fc7"][0].shape}, '
                            f'{net.layers["fc8"][0].shape} do not chain')
  config = imagenet.get_config()
  m = config.model
  m.num_classes = classes
  m.towers = _towers(net)
  m.width = hidden / 4096
  m.conv_widths = tuple(int(round(c / m.width)) for c in convs)
  # For layers trained afresh from here (fine-tuning): Caffe's own init, and for
  # torchvision the paper's, whose fc8 (N(0, 0.01^2), bias 0) is torchvision's.
  m.init_scheme = 'caffe' if net.family == CAFFE else 'paper'
  m.input_scale = 1.0
  if net.family == CAFFE:
    m.use_lrn, m.lrn_k, m.lrn_alpha = True, CAFFE_LRN_K, CAFFE_LRN_ALPHA
    m.conv1_padding = 0
    config.data.crop_size = 227
    config.data.mean = 'pixel' if net.mean_bgr_image is not None else 'channel'
  else:
    m.use_lrn = False
    m.conv1_padding = 2
    m.input_std = tuple(255.0 * s for s in TORCHVISION_STD_RGB)
    config.data.crop_size = 224
    config.data.mean = 'channel'
  config.data.image_size = 256
  config.final_eval_crops = 1  # both sources publish their centre-crop accuracy
  config.model.dtype = 'float32'  # as the published accuracies were measured
  return config


def mean_image_for(net: ForeignNet, image_size: int = 256) -> np.ndarray:
  """The run's RGB mean image (S, S, 3), 0-255 units, float32, for the net's family.

  A Caffe mean file's image is flipped to RGB and HWC; without one, the per-channel
  mean fills the image (then data.mean='channel' reads it back exactly).
  """
  if net.mean_bgr_image is not None:
    mean = np.asarray(net.mean_bgr_image, np.float32)
    if mean.shape != (3, image_size, image_size):
      raise errors.InputError(f'the mean image has shape {mean.shape}, expected '
                              f'(3, {image_size}, {image_size}) (BGR, as Caffe stores it)')
    return np.ascontiguousarray(mean[::-1].transpose(1, 2, 0))
  if net.family == CAFFE:
    rgb = np.asarray(CAFFE_MEAN_BGR[::-1], np.float32)
  else:
    rgb = np.asarray([255.0 * m for m in TORCHVISION_MEAN_RGB], np.float32)
  return np.broadcast_to(rgb, (image_size, image_size, 3)).copy()


def _fc6_side(in_features: int, channels: int) -> int:
  side = math.isqrt(in_features // channels)
  if side * side * channels != in_features:
    raise errors.InputError(f'fc6 has {in_features} inputs, not a square map of conv5\'s '
                            f'{channels} channels')
  return side


def to_flax(net: ForeignNet, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """This project's params pytree {'conv1': {'kernel', 'bias'}, ...} of `net`.

  OIHW -> HWIO; Caffe's conv1 input channels reversed (BGR -> RGB); fc weights
  transposed to (in, out) with fc6's rows moved from (C, H, W) to (H, W, C) order.
  Grouped convs keep their layout: both frameworks and this network put tower t's
  outputs at [t*O/g, (t+1)*O/g) and read its inputs from [t*I/g, (t+1)*I/g).
  """
  check_net(net)
  params = {}
  for name in CONVS:
    weight, bias = (np.asarray(a, np.float32) for a in net.layers[name])
    if name == 'conv1' and net.family == CAFFE:
      weight = weight[:, ::-1]  # Caffe's input is BGR, this network's RGB
    params[name] = {'kernel': np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
                    'bias': bias.copy()}
  channels = params['conv5']['kernel'].shape[-1]
  for name in FCS:
    weight, bias = (np.asarray(a, np.float32) for a in net.layers[name])
    if name == 'fc6':
      side = _fc6_side(weight.shape[1], channels)
      weight = weight.reshape(-1, channels, side, side).transpose(0, 2, 3, 1)
      weight = weight.reshape(weight.shape[0], -1)  # inputs now (H, W, C), as the model flattens
    params[name] = {'kernel': np.ascontiguousarray(weight.T), 'bias': bias.copy()}
  _check_fits(params, config)
  return params


def from_flax(params: Any, config: ml_collections.ConfigDict) -> ForeignNet:
  """The ForeignNet of a run's params: to_flax's exact inverse, family from family_of."""
  family = family_of(config)
  params = {name: {k: np.asarray(v, np.float32) for k, v in params[name].items()}
            for name in LAYERS}
  layers = {}
  for name in CONVS:
    weight = params[name]['kernel'].transpose(3, 2, 0, 1)
    if name == 'conv1' and family == CAFFE:
      weight = weight[:, ::-1]
    layers[name] = (np.ascontiguousarray(weight), params[name]['bias'].copy())
  channels = params['conv5']['kernel'].shape[-1]
  for name in FCS:
    weight = params[name]['kernel'].T
    if name == 'fc6':
      side = _fc6_side(weight.shape[1], channels)
      weight = weight.reshape(-1, side, side, channels).transpose(0, 3, 1, 2)
      weight = weight.reshape(weight.shape[0], -1)
    layers[name] = (np.ascontiguousarray(weight), params[name]['bias'].copy())
  return ForeignNet(family, layers, _groups_for(config.model.towers))


def _check_fits(params: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Raises errors.InputError naming the first layer whose shape the config's network lacks."""
  model = alexnet.from_config(dict(config.model.to_dict(), dtype='float32'))
  crop = config.data.crop_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, crop, crop, 3)))
  expected = nn.unbox(shapes)['params']
  for name in LAYERS:
    for part in ('kernel', 'bias'):
      want, got = tuple(expected[name][part].shape), tuple(params[name][part].shape)
      if want != got:
        raise errors.InputError(f'{name} {part} has shape {got}; the network of this config '
                                f'needs {want}')
