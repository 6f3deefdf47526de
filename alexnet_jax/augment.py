"""Image ops of the paper's preprocessing and augmentation, as small pure functions.

Host side (numpy, uint8): decoding, the 256x256 central crop, crop offsets, flips and
the per-image PCA lighting shift. Every random op takes an explicit
`np.random.Generator` (grain hands one to each record), so a record's augmentation
depends only on the pipeline seed and the record's position in the stream.

Device side (jax, inside the jitted step): `normalize`, which turns the uint8 crops
into float model input. The host ships uint8 crops plus three small per-image
parameters (crop offsets, flip, lighting shift) because the float work is far cheaper
on the accelerator than in numpy, and uint8 batches are a quarter of the bytes.

Pixel scale of the model input, as in the paper and Caffe: 0-255 units minus the mean.
The PCA lighting shift is defined, as in the paper and SPEC, on pixels in [0, 1]:
`eigvecs @ (alpha * eigvals)` with the eigen-decomposition of the RGB covariance of
[0, 1] pixels and `alpha ~ N(0, lighting_std)` per component; `lighting_shift`
multiplies it by 255 so it can be added to 0-255 pixels.
"""

from __future__ import annotations

import io

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import simplejpeg


# ----------------------------------------------------------------------------------
# Decoding and the stored-image geometry.


def to_rgb(image: Image.Image) -> Image.Image:
  """Returns `image` as 8-bit RGB: grayscale, palette, CMYK and alpha images converted."""
  if image.mode == 'RGB':
    return image
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    # PIL's own conversion clips 16-bit and float values at 255; rescale instead.
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith('I;16') else max(values.max(), 1.0)
    gray = np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, 'L').convert('RGB')
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')  # Converting P -> RGB directly warns about it.
  # PIL reads Adobe (inverted) CMYK JPEGs correctly and drops alpha channels here.
  return image.convert('RGB')


def open_image(data: bytes, min_size: int = 0) -> Image.Image:
  """Fully decodes image bytes of any format PIL reads into an RGB PIL image.

  Args:
    data: encoded image (JPEG, PNG, ...; the format is sniffed, not taken from a name).
    min_size: if > 0 and the image is a JPEG, let libjpeg decode at a reduced scale
      (1/2, 1/4, 1/8) as long as the shorter side stays >= min_size: large photos
      decode several times faster and the DCT scaling is itself a clean low-pass.

  Raises:
    OSError / ValueError (PIL's errors) for truncated or unreadable data.
  """
  image = Image.open(io.BytesIO(data))
  if min_size > 0 and image.format == 'JPEG':
    w, h = image.size
    scale = min_size / min(w, h)
    if scale < 1:
      image.draft('RGB', (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
  image.load()  # Decode now so truncation errors surface here.
  return to_rgb(image)


def decode(data: bytes, min_size: int = 0) -> np.ndarray:
  """Decodes an image to uint8 (H, W, 3) RGB; libjpeg-turbo for JPEGs, PIL otherwise.

  `min_size` as in `open_image` (simplejpeg's reduced-scale decoding).
  """
  try:
    return simplejpeg.decode_jpeg(
        data, colorspace='RGB', min_height=min_size, min_width=min_size)
  except ValueError:
    # Not a JPEG (a PNG named .JPEG, ...) or a JPEG turbojpeg refuses: PIL reads more.
    return np.asarray(open_image(data, min_size))


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The paper's stored image: shorter side resized to `size`, central size x size crop.

  The central square of the source is cut first (integer offsets: at most half a
  pixel off-centre) and resampled once to size x size, which equals
  resize-then-crop without an intermediate image. Shrinking uses pixel-area
  averaging (anti-aliased; about twice as fast as PIL's bicubic on 500x375 photos,
  which matters when tfds images are resized every epoch); enlarging uses bicubic.

  Args:
    image: uint8 (H, W, 3) RGB, or (H, W) grayscale.
    size: side of the output.
  """
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  square = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(square)
  interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
  return cv2.resize(np.ascontiguousarray(square), (size, size),
                    interpolation=interpolation)


def decode_and_resize(data: bytes, size: int) -> np.ndarray:
  """Encoded image of any size -> the stored size x size RGB image (prepare and tfds)."""
  return resize_center_crop(decode(data, min_size=size), size)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """Encodes uint8 (H, W, 3) RGB as a baseline JPEG with 4:2:0 chroma (fast to decode)."""
  return simplejpeg.encode_jpeg(
      np.ascontiguousarray(image), quality=quality, colorspace='RGB',
      colorsubsampling='420')


# ----------------------------------------------------------------------------------
# Crops and flips (host, uint8).


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


def flip_lr(image: np.ndarray) -> np.ndarray:
  """Mirrors (H, W, C) left-right."""
  return image[:, ::-1]


def random_flip(rng: np.random.Generator) -> bool:
  """A fair coin for the horizontal flip."""
  return bool(rng.random() < 0.5)


def crop_and_flip(image: np.ndarray, top: int, left: int, size: int,
                  flip: bool) -> np.ndarray:
  """A contiguous copy of the crop, mirrored when `flip`."""
  view = crop(image, top, left, size)
  if flip:
    # OpenCV's SIMD flip copies ~20x faster than numpy's negative-stride copy.
    return cv2.flip(view, 1)
  return np.ascontiguousarray(view)


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


def channel_mean_image(mean_image: np.ndarray) -> np.ndarray:
  """Per-channel mean (3,) float32 of a per-pixel mean image (S, S, 3)."""
  return np.asarray(mean_image, np.float64).mean(axis=(0, 1)).astype(np.float32)


# ----------------------------------------------------------------------------------
# Device side.


def normalize(image: jax.Array, crop: jax.Array, flip: jax.Array, lighting: jax.Array,
              mean_image: jax.Array) -> jax.Array:
  """Model input from uint8 crops: image - (same crop/flip of the mean) + lighting.

  Runs inside the jitted step. Any leading batch dims (b,) or (b, views) work.

  Args:
    image: uint8 (..., c, c, 3), crops already cut and flipped on the host.
    crop: int (..., 2), (top, left) of each crop in the stored image.
    flip: bool (...), whether each crop was mirrored.
    lighting: float (..., 3), the PCA lighting shift in 0-255 units (zeros in eval).
    mean_image: float (S, S, 3) per-pixel mean of the training set, 0-255 units, or
      (3,) per-channel mean (then crop and flip do not matter).

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
    def mean_crop(offset, mirrored):
      window = jax.lax.dynamic_slice(mean_image, (offset[0], offset[1], 0), (c, c, 3))
      return jnp.where(mirrored, window[:, ::-1], window)

    means = jax.vmap(mean_crop)(jnp.reshape(crop, (-1, 2)), jnp.reshape(flip, (-1,)))
    x = x - jnp.reshape(means, lead + (c, c, 3))
  return x + jnp.asarray(lighting, jnp.float32)[..., None, None, :]

