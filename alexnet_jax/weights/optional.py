"""Optional packages of the importers and exporters: imported on use, one line when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from alexnet_jax.core import errors

# module -> the pip requirement that provides it (the versions the tests ran with).
PINS = {
    'torch': 'torch==2.13.0',
    'safetensors': 'safetensors==0.8.0',
    'onnx': 'onnx==1.23.2',
    'onnxruntime': 'onnxruntime==1.31.1',
    'google.protobuf': 'protobuf==7.36.2',
}


def require(module: str, purpose: str) -> ModuleType:
  """The module, or errors.MissingInputError: '<purpose> needs <pkg>: pip install <pin>'."""
  try:
    return importlib.import_module(module)
  except ImportError:
    pin = PINS.get(module) or PINS.get(module.split('.')[0], module)
    raise errors.MissingInputError(
        f'{purpose} needs the {pin.split("==")[0]} package, which is not installed: '
        f'pip install {pin}') from None
