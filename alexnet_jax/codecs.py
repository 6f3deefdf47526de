"""Host image codecs: encoded bytes <-> uint8 RGB arrays, and the stored-image geometry.

Everything that needs PIL, OpenCV or libjpeg-turbo (simplejpeg) lives here, so the
per-record augmentation in `augment` stays plain numpy. prepare writes images with
`decode_and_resize` + `encode_jpeg`; the input pipeline and predict read them back
with `decode` (and `decode_and_resize` for full-size tfds JPEGs), so a stored image
is the same whichever path produced it.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
import simplejpeg


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
