"""Each augmentation op alone, against a numpy formula written out here."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from alexnet_jax.data import augment
from alexnet_jax.data import preprocess


def _random_eigen(rng):
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  return np.float32([0.2, 0.02, 0.005]), q.astype(np.float32)


class CropTest(parameterized.TestCase):

  def test_random_offsets_in_bounds_and_uniform(self):
    rng = np.random.default_rng(0)
    size, crop = 12, 9  # 4 positions per axis, 16 in all.
    offsets = np.array([augment.random_crop_offsets(rng, size, crop)
                        for _ in range(16000)])
    self.assertGreaterEqual(offsets.min(), 0)
    self.assertLessEqual(offsets.max(), size - crop)
    counts = np.zeros((4, 4))
    np.add.at(counts, (offsets[:, 0], offsets[:, 1]), 1)
    # 1000 expected per cell; a binomial sd is ~31, so +-15% is > 4 sd.
    np.testing.assert_allclose(counts, 1000, rtol=0.15)
    # Top and left are drawn independently: top-left and bottom-right corners occur.
    self.assertGreater(counts[0, 3] * counts[3, 0], 0)

  def test_crop_size_equal_to_image_has_one_position(self):
    rng = np.random.default_rng(1)
    self.assertEqual(augment.random_crop_offsets(rng, 8, 8), (0, 0))

  def test_crop_is_the_window(self):
    image = np.arange(10 * 12 * 3, dtype=np.int32).reshape(10, 12, 3)
    window = augment.crop(image, 2, 5, 4)
    for y in range(4):
      for x in range(4):
        np.testing.assert_array_equal(window[y, x], image[2 + y, 5 + x])
    with self.assertRaisesRegex(ValueError, 'outside'):
      augment.crop(image, 7, 0, 4)

  def test_crop_copy_is_contiguous_and_unmirrored(self):
    image = np.random.default_rng(3).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    out = augment.crop_copy(image, 1, 3, 5)
    self.assertTrue(out.flags['C_CONTIGUOUS'])
    self.assertFalse(np.shares_memory(out, image))
    np.testing.assert_array_equal(out, image[1:6, 3:8])

  def test_flip_is_a_fair_coin(self):
    rng = np.random.default_rng(4)
    flips = [augment.random_flip(rng) for _ in range(4000)]
    self.assertAlmostEqual(np.mean(flips), 0.5, delta=0.04)

  def test_center_and_ten_crop_positions(self):
    self.assertEqual(augment.center_crop_offsets(256, 224), (16, 16))
    self.assertEqual(augment.center_crop_offsets(256, 227), (14, 14))
    views = augment.ten_crop_views(256, 224)
    positions = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
    self.assertEqual(views, [(t, l, False) for t, l in positions]
                     + [(t, l, True) for t, l in positions])


class LightingTest(absltest.TestCase):

  def test_shift_is_eigvecs_times_alpha_eigvals(self):
    eigvals, eigvecs = _random_eigen(np.random.default_rng(0))
    shift = augment.lighting_shift(np.random.default_rng(7), eigvals, eigvecs, 0.1)
    alpha = np.random.default_rng(7).normal(0.0, 0.1, size=3)
    expected = np.zeros(3)
    for channel in range(3):
      for k in range(3):
        expected[channel] += eigvecs[channel, k] * alpha[k] * eigvals[k]
    self.assertEqual(shift.dtype, np.float32)
    np.testing.assert_allclose(shift, 255 * expected, rtol=1e-5)

  def test_zero_std_is_off(self):
    eigvals, eigvecs = _random_eigen(np.random.default_rng(0))
    np.testing.assert_array_equal(
        augment.lighting_shift(np.random.default_rng(0), eigvals, eigvecs, 0.0),
        np.zeros(3))

  def test_alpha_distribution(self):
    eigvals, eigvecs = _random_eigen(np.random.default_rng(1))
    rng = np.random.default_rng(2)
    shifts = np.array([augment.lighting_shift(rng, eigvals, eigvecs, 0.1)
                       for _ in range(3000)])
    alphas = (shifts / 255) @ eigvecs / eigvals  # eigvecs is orthonormal.
    np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.1)
    np.testing.assert_allclose(alphas.mean(0), 0.0, atol=0.01)

  def test_lighting_on_pixels_in_unit_scale(self):
    # The paper: every pixel of the [0, 1] image gets eigvecs @ (alpha * eigvals) added.
    rng = np.random.default_rng(3)
    eigvals, eigvecs = _random_eigen(rng)
    image = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    alphas = rng.normal(0, 0.1, (4, 3))
    shifts = np.float32([255 * eigvecs @ (a * eigvals) for a in alphas])
    out = np.asarray(preprocess.normalize(
        image, np.zeros((4, 2), np.int32), np.zeros(4, bool), shifts,
        np.zeros(3, np.float32)))
    for b in range(4):
      for y in range(6):
        for x in range(6):
          unit = image[b, y, x] / 255.0 + eigvecs @ (alphas[b] * eigvals)
          np.testing.assert_allclose(out[b, y, x], 255 * unit, rtol=1e-5, atol=1e-3)


class NormalizeTest(parameterized.TestCase):

  def _numpy_normalize(self, image, crop, flip, lighting, mean_image):
    c = image.shape[-2]
    out = np.empty(image.shape, np.float64)
    for idx in np.ndindex(*image.shape[:-3]):
      top, left = crop[idx]
      # The host ships the crop unmirrored; the model sees it and its mean mirrored.
      view = image[idx].astype(np.float64) - mean_image[top:top + c, left:left + c]
      if flip[idx]:
        view = view[:, ::-1]
      out[idx] = view + lighting[idx]
    return out

  @parameterized.parameters(((5,),), ((3, 4),))
  def test_matches_numpy(self, lead):
    rng = np.random.default_rng(0)
    size, c = 10, 7
    image = rng.integers(0, 256, lead + (c, c, 3), dtype=np.uint8)
    crop = rng.integers(0, size - c + 1, lead + (2,)).astype(np.int32)
    flip = rng.random(lead) < 0.5
    lighting = rng.normal(0, 5, lead + (3,)).astype(np.float32)
    mean_image = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    out = jax.jit(preprocess.normalize)(image, crop, flip, lighting, mean_image)
    self.assertEqual(out.dtype, np.float32)
    np.testing.assert_allclose(
        out, self._numpy_normalize(image, crop, flip, lighting, mean_image),
        rtol=1e-6, atol=1e-4)

  def test_channel_mean(self):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean_image = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
    channel = preprocess.channel_mean_image(mean_image)
    np.testing.assert_allclose(channel, mean_image.reshape(-1, 3).mean(0), rtol=1e-6)
    out = preprocess.normalize(image, np.zeros((2, 2), np.int32), np.ones(2, bool),
                            np.zeros((2, 3), np.float32), channel)
    np.testing.assert_allclose(out, image[:, :, ::-1] - channel, rtol=1e-6, atol=1e-4)


if __name__ == '__main__':
  absltest.main()
