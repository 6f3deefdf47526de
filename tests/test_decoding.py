"""Host image codecs: decoding any input to RGB, and the stored-image geometry."""

import io

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
from PIL import ImageOps

from alexnet_jax.data import decoding
from tests.helpers.images import encode


class DecodeTest(absltest.TestCase):

  def test_png_named_anything_decodes_exactly(self):
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decoding.decode(encode(image, 'PNG')), image)

  def test_jpeg_grayscale_and_cmyk_become_rgb(self):
    gray = np.full((16, 16), 77, np.uint8)
    out = decoding.decode(encode(gray, 'JPEG', quality=95))
    self.assertEqual(out.shape, (16, 16, 3))
    np.testing.assert_allclose(out, 77, atol=1)
    rgb = np.zeros((16, 16, 3), np.uint8) + np.uint8([200, 40, 120])
    out = decoding.decode(encode(rgb, 'JPEG', mode='CMYK', quality=95))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [200, 40, 120], atol=4)

  def test_sixteen_bit_png_is_rescaled(self):
    gray16 = np.full((8, 8), 32768, np.uint16)
    out = decoding.decode(encode(gray16, 'PNG'))
    np.testing.assert_allclose(out, 128, atol=1)

  def test_truncated_jpeg_raises(self):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode(image, 'JPEG', quality=90)
    with self.assertRaises(OSError):
      decoding.decode(data[:len(data) // 2])

  def test_resize_center_crop_keeps_the_central_square(self):
    # A tall image of three stacked squares: only the middle one survives.
    tall = np.zeros((60, 20, 3), np.uint8)
    tall[:20] = (255, 0, 0)
    tall[20:40] = (0, 255, 0)
    tall[40:] = (0, 0, 255)
    out = decoding.resize_center_crop(tall, 10)
    self.assertEqual(out.shape, (10, 10, 3))
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to([0, 255, 0], (6, 6, 3)))
    wide = np.ascontiguousarray(tall.transpose(1, 0, 2))
    np.testing.assert_array_equal(decoding.resize_center_crop(wide, 10)[2:-2, 2:-2],
                                  np.broadcast_to([0, 255, 0], (6, 6, 3)))

  def test_resize_is_antialiased(self):
    # A 1-pixel checkerboard shrunk 4x must become flat grey, not a moire pattern.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = decoding.resize_center_crop(np.stack([board] * 3, -1), 16)
    np.testing.assert_allclose(out, 127.5, atol=3)

  def test_upsampling_small_images(self):
    small = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = decoding.decode_and_resize(encode(small, 'PNG'), 32)
    self.assertEqual(out.shape, (32, 32, 3))
    # Block averages of a smooth 4x enlargement stay near the source pixels.
    blocks = out.reshape(8, 4, 8, 4, 3).mean((1, 3))
    self.assertLess(np.abs(blocks - small).mean(), 25)


def _with_orientation(image: np.ndarray, fmt: str, orientation: int) -> bytes:
  """`image` encoded with an EXIF orientation tag, as a camera stores a turned photo."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encode(image, fmt, exif=exif.tobytes(), **({'quality': 95} if fmt == 'JPEG' else {}))


class OrientationTest(parameterized.TestCase):
  """Every EXIF orientation is obeyed as Pillow's own ImageOps.exif_transpose obeys it."""

  # A 6x10 image with a distinct colour per pixel: any wrong turn or mirror shows.
  IMAGE = np.random.default_rng(3).integers(0, 256, (6, 10, 3), dtype=np.uint8)

  @parameterized.parameters(*range(1, 9))
  def test_png_pixels_are_turned_upright(self, orientation):
    data = _with_orientation(self.IMAGE, 'PNG', orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert('RGB'))
    pixels, applied = decoding.decode_with_orientation(data)
    self.assertEqual(applied, orientation)
    np.testing.assert_array_equal(pixels, expected)
    if orientation in (5, 6, 7, 8):
      self.assertEqual(pixels.shape, (10, 6, 3))

  @parameterized.parameters(*range(1, 9))
  def test_jpeg_fast_path_agrees_with_pillow(self, orientation):
    big = np.repeat(np.repeat(self.IMAGE, 8, axis=0), 8, axis=1)  # 48x80: JPEG blocks
    data = _with_orientation(big, 'JPEG', orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert('RGB'))
    pixels, applied = decoding.decode_with_orientation(data)
    self.assertEqual(applied, orientation)
    np.testing.assert_allclose(pixels.astype(int), expected.astype(int), atol=2)
    np.testing.assert_array_equal(decoding.decode(data), pixels)

  def test_stored_images_have_no_tag_and_decode_as_they_are(self):
    data = decoding.encode_jpeg(np.ascontiguousarray(self.IMAGE), 95)
    self.assertNotIn(b'Exif', data)
    self.assertEqual(decoding.decode_with_orientation(data)[1], decoding.UPRIGHT)


if __name__ == '__main__':
  absltest.main()
