"""The per-global-batch plans of the batch-level train path (alexnet_jax.data.batch_sampler).

A plan is a pure function of (seed, split size, batch index): these tests ask for
batches in different orders, from different samplers and processes, and check each
epoch is a permutation and each draw has the distribution docs/design.md states.
"""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from alexnet_jax.data import batch_sampler

EIGVALS = np.array([0.2, 0.02, 0.004])
EIGVECS = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))[0]


def _sampler(**overrides) -> batch_sampler.TrainSampler:
  settings = dict(num_records=50, global_batch_size=8, image_size=12, crop_size=8, flip=True,
                  lighting_std=0.1, eigvals=EIGVALS, eigvecs=EIGVECS, seed=3)
  settings.update(overrides)
  return batch_sampler.TrainSampler(**settings)


def _fields(plan: batch_sampler.BatchPlan) -> list[np.ndarray]:
  return [plan.index, plan.crop, plan.flip, plan.lighting]


class PurityTest(absltest.TestCase):

  def test_a_batch_is_the_same_whatever_was_asked_before(self):
    ahead = _sampler()
    late = [_fields(ahead.global_batch(k)) for k in (40, 3, 17)]
    fresh = [_fields(_sampler().global_batch(k)) for k in (40, 3, 17)]
    for got, want in zip(late, fresh):
      for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

  def test_seed_and_index_change_the_batch(self):
    base = _sampler().global_batch(5)
    for other in (_sampler(seed=4).global_batch(5), _sampler().global_batch(6)):
      self.assertFalse(np.array_equal(base.crop, other.crop))
      self.assertFalse(np.array_equal(base.lighting, other.lighting))

  def test_process_blocks_make_up_the_global_batch(self):
    sampler = _sampler(global_batch_size=12)
    for k in (0, 9):
      whole = sampler.global_batch(k)
      for count in (1, 2, 3, 4):
        parts = [_sampler(global_batch_size=12).local_batch(k, p, count) for p in range(count)]
        for field, want in zip(zip(*map(_fields, parts)), _fields(whole)):
          np.testing.assert_array_equal(np.concatenate(field), want)


class ShuffleTest(parameterized.TestCase):

  @parameterized.parameters(8, 7, 64)  # divides 56, does not, spans several epochs per batch
  def test_every_epoch_is_a_fresh_permutation(self, batch):
    n, epochs = 56, 3
    sampler = _sampler(num_records=n, global_batch_size=batch)
    stream = np.concatenate([sampler.indices(k) for k in range(-(-n * epochs // batch))])
    per_epoch = stream[:n * epochs].reshape(epochs, n)
    for order in per_epoch:
      np.testing.assert_array_equal(np.sort(order), np.arange(n))
    self.assertFalse(np.array_equal(per_epoch[0], per_epoch[1]))
    self.assertFalse(np.array_equal(per_epoch[1], per_epoch[2]))
    self.assertFalse(np.array_equal(per_epoch[0], np.arange(n)))

  def test_batches_over_an_epoch_end_continue_the_next_permutation(self):
    sampler = _sampler(num_records=10, global_batch_size=4)
    orders = np.concatenate([sampler.epoch_order(0), sampler.epoch_order(1)])
    np.testing.assert_array_equal(sampler.indices(2), orders[8:12])


class DrawsTest(absltest.TestCase):

  def test_crop_offsets_cover_every_position_uniformly(self):
    sampler = _sampler(global_batch_size=1000, image_size=12, crop_size=8)
    crops = np.concatenate([sampler.global_batch(k).crop for k in range(4)])
    self.assertEqual(crops.dtype, np.int32)
    counts = np.bincount(crops.ravel(), minlength=5)
    self.assertLen(counts, 5)  # 0..4 only
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.02)

  def test_center_crop_when_random_crop_is_off(self):
    plan = _sampler(random_crop=False, image_size=13, crop_size=8).global_batch(0)
    np.testing.assert_array_equal(plan.crop, np.full((8, 2), 2))

  def test_flip_is_a_fair_coin_and_off_means_never(self):
    flips = np.concatenate([_sampler(global_batch_size=1000).global_batch(k).flip
                            for k in range(4)])
    self.assertEqual(flips.dtype, np.bool_)
    self.assertAlmostEqual(flips.mean(), 0.5, delta=0.03)
    self.assertFalse(_sampler(flip=False).global_batch(0).flip.any())

  def test_lighting_is_the_papers_pca_shift(self):
    # The paper: eigvecs @ (alpha * eigvals) on [0, 1] pixels, alpha ~ N(0, 0.1); shipped x 255.
    sampler = _sampler(global_batch_size=1000, lighting_std=0.1)
    shifts = np.concatenate([sampler.global_batch(k).lighting for k in range(4)])
    self.assertEqual(shifts.dtype, np.float32)
    alphas = (shifts / 255.0) @ EIGVECS / EIGVALS  # EIGVECS is orthonormal
    np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.08)
    np.testing.assert_allclose(alphas.mean(0), 0.0, atol=0.01)
    np.testing.assert_array_equal(_sampler(lighting_std=0.0).global_batch(0).lighting, 0)

  def test_switching_one_augmentation_off_keeps_the_others(self):
    on, off = _sampler().global_batch(2), _sampler(flip=False, lighting_std=0).global_batch(2)
    np.testing.assert_array_equal(on.index, off.index)
    np.testing.assert_array_equal(on.crop, off.crop)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'empty'):
      _sampler(num_records=0)
    with self.assertRaisesRegex(ValueError, 'crop_size'):
      _sampler(crop_size=13)
    with self.assertRaisesRegex(ValueError, '>= 0'):
      _sampler().global_batch(-1)


if __name__ == '__main__':
  absltest.main()
