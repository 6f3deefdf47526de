"""Per-record transforms: one stored record to one training example or its eval views.

Module level and frozen dataclasses, so grain can pickle them into worker processes.
An example holds the uint8 crop, unmirrored, plus its parameters (crop offsets, flip,
lighting shift); `preprocess.normalize` mirrors it and turns it into model input inside
the jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import augment
from alexnet_jax.data import decoding

View = tuple[int, int, bool]  # (top, left, flip) of one eval crop


def stored_image(data: bytes | np.ndarray, image_size: int, resize: bool) -> np.ndarray:
  """The (S, S, 3) uint8 image a record stores; full-size images (resize) are resized
  and center-cropped to image_size exactly as prepare does. Pixels (the raw storage's
  records) are taken as they are: there is nothing to decode."""
  if isinstance(data, np.ndarray):
    image = decoding.resize_center_crop(data, image_size) if resize else data
  elif resize:
    return decoding.decode_and_resize(data, image_size)
  else:
    image = decoding.decode(data)
  if image.shape != (image_size, image_size, 3):
    raise errors.InputError(f'stored image is {image.shape}, expected '
                            f'({image_size}, {image_size}, 3)')
  return image


def eval_views(image_size: int, crop_size: int, crops: int) -> tuple[View, ...]:
  """The views evaluation cuts: 1 (the center crop) or 10 (the paper's)."""
  if crops == 1:
    return ((*augment.center_crop_offsets(image_size, crop_size), False),)
  if crops == 10:
    return tuple(augment.ten_crop_views(image_size, crop_size))
  raise ValueError(f'crops must be 1 (center) or 10 (the paper\'s views), got {crops}')


@dataclasses.dataclass(frozen=True, eq=False)
class TrainTransform:
  """Record -> one augmented training example (uint8 crop and its parameters)."""
  parse: Callable[[Any], tuple[bytes | np.ndarray, int]]
  resize: bool
  image_size: int
  crop_size: int
  flip: bool
  lighting_std: float
  eigvals: np.ndarray
  eigvecs: np.ndarray
  random_crop: bool = True  # False: the central crop, as evaluation cuts it

  def __call__(self, record: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    data, label = self.parse(record)
    image = stored_image(data, self.image_size, self.resize)
    if self.random_crop:
      top, left = augment.random_crop_offsets(rng, self.image_size, self.crop_size)
    else:
      top, left = augment.center_crop_offsets(self.image_size, self.crop_size)
    flip = self.flip and augment.random_flip(rng)
    return {
        'image': augment.crop_copy(image, top, left, self.crop_size),
        'crop': np.array([top, left], np.int32),
        'flip': np.bool_(flip),
        'lighting': augment.lighting_shift(rng, self.eigvals, self.eigvecs,
                                           self.lighting_std),
        'label': np.int32(label),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class EvalTransform:
  """Padded index -> the eval views of that record (or of a blank image past the end)."""
  records: Any
  parse: Callable[[Any], tuple[bytes | np.ndarray, int]]
  resize: bool
  num_records: int
  image_size: int
  crop_size: int
  views: tuple[View, ...]

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    real = index < self.num_records
    if real:
      data, label = self.parse(self.records[index])
      image = stored_image(data, self.image_size, self.resize)
    else:
      image, label = np.zeros((self.image_size, self.image_size, 3), np.uint8), 0
    return {
        'image': np.stack([augment.crop_copy(image, t, l, self.crop_size)
                           for t, l, _ in self.views]),
        'crop': np.array([(t, l) for t, l, _ in self.views], np.int32),
        'flip': np.array([f for _, _, f in self.views], bool),
        'lighting': np.zeros((len(self.views), 3), np.float32),
        'label': np.int32(label),
        'mask': np.bool_(real),
    }
