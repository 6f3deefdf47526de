"""Host image codecs: encoded bytes <-> uint8 RGB arrays, and the stored-image geometry.

Everything that needs PIL, OpenCV or libjpeg-turbo (simplejpeg) lives here, so the
per-record augmentation in `augment` stays plain numpy. prepare writes images with
`decode_and_resize` + `encode_jpeg`; the input pipeline and predict read them back
with `decode` (and `decode_and_resize` for full-size tfds JPEGs), so a stored image
is the same whichever path produced it.

Photos from phones and cameras often store their pixels sideways and say so in an
EXIF orientation tag that viewers obey. Every decode here obeys it too (the
pixels come out as a viewer shows them), so prepare, predict and the tfds path
see the same upright image; `decode_with_orientation` also says whether it turned one.
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


# The EXIF tag that says how the stored pixels must be turned to show the photo upright.
EXIF_ORIENTATION_TAG = 0x0112
UPRIGHT = 1
# A JPEG's EXIF block (APP1, at most 64 KiB) comes before the image data and starts so.
_JPEG_EXIF_MARK, _JPEG_EXIF_WINDOW = b'Exif\x00\x00', 0x10000 + 64


def exif_orientation(image: Image.Image) -> int:
  """The EXIF orientation of an opened PIL image: 1 (upright, or no tag) .. 8."""
  try:
    value = int(image.getexif().get(EXIF_ORIENTATION_TAG, UPRIGHT))
  except Exception:  # pylint: disable=broad-exception-caught
    return UPRIGHT  # A damaged EXIF block says nothing about the pixels, which decode.
  return value if 1 <= value <= 8 else UPRIGHT


def _jpeg_orientation(data: bytes) -> int:
  """The EXIF orientation of JPEG bytes, reading only the header."""
  if _JPEG_EXIF_MARK not in data[:_JPEG_EXIF_WINDOW]:
    return UPRIGHT  # the stored records and most photos: no EXIF to parse
  try:
    return exif_orientation(Image.open(io.BytesIO(data)))
  except Exception:  # pylint: disable=broad-exception-caught
    return UPRIGHT


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
  """(H, W, ...) pixels stored with EXIF `orientation`, turned as a viewer shows them.

  2: mirrored; 3: rotated 180; 4: upside-down mirror; 5: transposed; 6: turned
  90 degrees clockwise to show; 7: transverse; 8: turned 90 counter-clockwise.
  """
  if orientation == 2:
    pixels = pixels[:, ::-1]
  elif orientation == 3:
    pixels = pixels[::-1, ::-1]
  elif orientation == 4:
    pixels = pixels[::-1]
  elif orientation == 5:
    pixels = pixels.swapaxes(0, 1)
  elif orientation == 6:
    pixels = np.rot90(pixels, k=-1)
  elif orientation == 7:
    pixels = pixels[::-1, ::-1].swapaxes(0, 1)
  elif orientation == 8:
    pixels = np.rot90(pixels, k=1)
  else:
    return pixels
  return np.ascontiguousarray(pixels)


def _open(data: bytes, min_size: int = 0) -> tuple[Image.Image, int]:
  """Fully decodes image bytes of any format PIL reads: (RGB PIL image, EXIF orientation).

  The pixels are as stored; the orientation says how to turn them upright.

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
  return to_rgb(image), exif_orientation(image)


def open_image(data: bytes, min_size: int = 0) -> Image.Image:
  """Fully decodes image bytes of any format PIL reads into an upright RGB PIL image.

  `min_size` as in `_open`. Raises PIL's errors (OSError / ValueError) for
  truncated or unreadable data.
  """
  image, orientation = _open(data, min_size)
  return Image.fromarray(apply_orientation(np.asarray(image), orientation))


def decode_with_orientation(data: bytes, min_size: int = 0) -> tuple[np.ndarray, int]:
  """`decode`, also returning the EXIF orientation it applied (1: none, the image was upright)."""
  try:
    pixels = simplejpeg.decode_jpeg(
        data, colorspace='RGB', min_height=min_size, min_width=min_size)
    orientation = _jpeg_orientation(data)
  except ValueError:
    # Not a JPEG (a PNG named .JPEG, ...) or a JPEG turbojpeg refuses: PIL reads more.
    image, orientation = _open(data, min_size)
    pixels = np.asarray(image)
  return apply_orientation(pixels, orientation), orientation


def decode(data: bytes, min_size: int = 0) -> np.ndarray:
  """Decodes an image to uint8 (H, W, 3) RGB, upright; libjpeg-turbo for JPEGs, PIL otherwise.

  `min_size` as in `open_image` (simplejpeg's reduced-scale decoding). An EXIF
  orientation tag is obeyed (see the module docstring).
  """
  return decode_with_orientation(data, min_size)[0]


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
