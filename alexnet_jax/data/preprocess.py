"""On the device, inside the jitted step: uint8 crops to float model input.

The host ships uint8 crops, unmirrored, plus three small per-image parameters (crop
offsets, flip, lighting shift; see `augment`) because the float work is far cheaper on the
accelerator than in numpy, and uint8 batches are a quarter of the bytes. Pixel
scale of the model input, as in the paper and Caffe: 0-255 units minus the mean
(docs/design.md, "Preprocessing").

Imports only jax and numpy, so the step module that uses it needs no image codec.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def channel_mean_image(mean_image: np.ndarray) -> np.ndarray:
  """Per-channel mean (3,) float32 of a per-pixel mean image (S, S, 3)."""
  return np.asarray(mean_image, np.float64).mean(axis=(0, 1)).astype(np.float32)


def normalize(image: jax.Array, crop: jax.Array, flip: jax.Array, lighting: jax.Array,
              mean_image: jax.Array) -> jax.Array:
  """Model input from uint8 crops: mirror(image - the same crop of the mean) + lighting.

  Runs inside the jitted step. Any leading batch dims (b,) or (b, views) work. The
  host ships crops unmirrored and the flip happens here, where it fuses into the
  subtraction at no cost, instead of a strided copy per image on the host.

  Args:
    image: uint8 (..., c, c, 3), crops cut on the host, never mirrored there.
    crop: int (..., 2), (top, left) of each crop in the stored image.
    flip: bool (...), whether to mirror each crop left-right.
    lighting: float (..., 3), the PCA lighting shift in 0-255 units (zeros in eval).
    mean_image: float (S, S, 3) per-pixel mean of the training set, 0-255 units, or
      (3,) per-channel mean (then the crop offsets do not matter).

  Returns:
    float32 (..., c, c, 3) in 0-255 units minus the mean.
  """
  c = image.shape[-2]
  lead = image.shape[:-3]
  x = image.astype(jnp.float32)
  mean_image = jnp.asarray(mean_image, jnp.float32)
  if mean_image.ndim == 1:
    x = x - mean_image
  else:
    def mean_crop(offset):
      # The start indices must share a dtype: a literal 0 is int64 under JAX_ENABLE_X64=1.
      start = (offset[0], offset[1], jnp.zeros_like(offset[0]))
      return jax.lax.dynamic_slice(mean_image, start, (c, c, 3))

    means = jax.vmap(mean_crop)(jnp.reshape(crop, (-1, 2)))
    x = x - jnp.reshape(means, lead + (c, c, 3))
  # Mirroring the difference mirrors the crop and its mean window alike.
  x = jnp.where(jnp.asarray(flip, bool)[..., None, None, None], x[..., ::-1, :], x)
  return x + jnp.asarray(lighting, jnp.float32)[..., None, None, :]
