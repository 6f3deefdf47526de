"""torchvision's `alexnet` state_dict (.pth) to a ForeignNet and back; needs torch.

torchvision names the layers by their index in `features` and `classifier` (the ReLUs,
pools and dropouts between them hold no weights); KEYS maps them to this project's names.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.weights import layout
from alexnet_jax.weights import optional

KEYS = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
        'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
        'fc7': 'classifier.4', 'fc8': 'classifier.6'}


def _load(path: str) -> dict:
  torch = optional.require('torch', 'reading a .pth file')
  try:
    # weights_only: a .pth is a pickle; only tensors and containers are unpickled.
    state = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise errors.MissingInputError(f'{path} does not exist') from None
  except Exception as e:  # pylint: disable=broad-exception-caught
    # torch fails in many ways on a file that is not a state_dict, each in its own words
    # (ALEXNET_JAX_TRACEBACK=1 shows them); to the user each means the same.
    raise errors.InputError(f'{path} is not a PyTorch file of tensors (a state_dict saved '
                            'with torch.save) that torch.load reads') from e
  if isinstance(state, dict) and 'state_dict' in state:  # a training checkpoint around it
    state = state['state_dict']
  if not isinstance(state, dict):
    raise errors.InputError(f'{path} holds a {type(state).__name__}, not a state_dict')
  # Saved from nn.DataParallel, every key starts with 'module.'.
  return {k.removeprefix('module.'): v for k, v in state.items()}


def read(path: str | os.PathLike[str]) -> layout.ForeignNet:
  """The ForeignNet of a torchvision alexnet state_dict saved with torch.save."""
  path = os.fspath(path)
  state = _load(path)
  missing = [f'{key}.{part}' for key in KEYS.values() for part in ('weight', 'bias')
             if f'{key}.{part}' not in state]
  if missing:
    raise errors.InputError(f'{path} is not a torchvision alexnet state_dict: it lacks '
                            f'{", ".join(missing[:4])}{", ..." if len(missing) > 4 else ""}')
  layers = {name: tuple(state[f'{key}.{part}'].detach().cpu().float().numpy()
                        for part in ('weight', 'bias')) for name, key in KEYS.items()}
  net = layout.ForeignNet(layout.TORCHVISION, layers, {n: 1 for n in layout.CONVS})
  layout.check_net(net)
  return net


def write(net: layout.ForeignNet, path: str | os.PathLike[str]) -> None:
  """Saves `net` as torchvision's alexnet state_dict (torch.save), keys in its order."""
  torch = optional.require('torch', 'writing a .pth file')
  state = collections.OrderedDict()
  for name, key in KEYS.items():
    weight, bias = net.layers[name]
    state[f'{key}.weight'] = torch.from_numpy(np.ascontiguousarray(weight))
    state[f'{key}.bias'] = torch.from_numpy(np.ascontiguousarray(bias))
  torch.save(state, os.fspath(path))
