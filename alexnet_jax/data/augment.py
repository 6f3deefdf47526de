"""Image ops of the paper's augmentation, as small pure functions.

Host side (numpy, uint8): crop offsets, crops, the flip coin and the per-image PCA
lighting shift (decoding and the stored-image geometry are in `decoding`). Every random op takes
an explicit `np.random.Generator` (grain hands one to each record), so a record's
augmentation depends only on the pipeline seed and the record's position in the
stream.

The device side (mean subtraction, the flip, lighting added, inside the jitted step) is
`preprocess.normalize`; the host ships it unmirrored uint8 crops plus these parameters.

Pixel scale of the model input, as in the paper and Caffe: 0-255 units minus the mean.
The PCA lighting shift is defined, as in the paper, on pixels in [0, 1]:
`eigvecs @ (alpha * eigvals)` with the eigen-decomposition of the RGB covariance of
[0, 1] pixels and `alpha ~ N(0, lighting_std)` per component (docs/design.md,
"Augmentation"); `lighting_shift` multiplies it by 255 so it can be added to 0-255
pixels.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------
# Crops and the flip coin (host, uint8).


def random_crop_offsets(
    rng: np.random.Generator, image_size: int, crop_size: int) -> tuple[int, int]:
  """(top, left), each uniform over the image_size - crop_size + 1 positions of its axis."""
  top, left = rng.integers(0, image_size - crop_size + 1, size=2)
  return int(top), int(left)


def center_crop_offsets(image_size: int, crop_size: int) -> tuple[int, int]:
  """(top, left) of the central crop (rounded towards the top-left when odd)."""
  offset = (image_size - crop_size) // 2
  return offset, offset


def ten_crop_views(image_size: int, crop_size: int) -> list[tuple[int, int, bool]]:
  """The paper's 10 test views as (top, left, flip).

  Order: top-left, top-right, bottom-left, bottom-right, center, then the same five
  flipped horizontally.
  """
  far = image_size - crop_size
  center = center_crop_offsets(image_size, crop_size)
  positions = [(0, 0), (0, far), (far, 0), (far, far), center]
  return [(t, l, False) for t, l in positions] + [(t, l, True) for t, l in positions]


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """The size x size window of `image` (H, W, C) at (top, left); a view, not a copy."""
  if not (0 <= top <= image.shape[0] - size and 0 <= left <= image.shape[1] - size):
    raise ValueError(
        f'crop {size}x{size} at ({top}, {left}) is outside a {image.shape[:2]} image')
  return image[top:top + size, left:left + size]


def random_flip(rng: np.random.Generator) -> bool:
  """A fair coin for the horizontal flip."""
  return bool(rng.random() < 0.5)


def crop_copy(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """A contiguous copy of the crop, never mirrored: `preprocess.normalize` mirrors it on
  the device where `flip` says so (docs/design.md, "Augmentation")."""
  return np.ascontiguousarray(crop(image, top, left, size))


# ----------------------------------------------------------------------------------
# PCA lighting (the paper's "altering the intensities of the RGB channels").


def lighting_shift(rng: np.random.Generator, eigvals: np.ndarray, eigvecs: np.ndarray,
                   std: float) -> np.ndarray:
  """The per-image RGB shift of PCA lighting, float32 (3,), in 0-255 pixel units.

  `eigvals` (3,) and `eigvecs` (3, 3, columns = components) describe the covariance
  of [0, 1] pixels; the shift `eigvecs @ (alpha * eigvals)` is in those units and is
  scaled by 255 for 0-255 pixels. std == 0 turns lighting off (zeros, no rng draw).
  """
  if std == 0:
    return np.zeros(3, np.float32)
  alpha = rng.normal(0.0, std, size=3)
  return (255.0 * (np.asarray(eigvecs, np.float64) @ (alpha * np.asarray(eigvals))))\
      .astype(np.float32)
