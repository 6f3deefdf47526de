"""Everything random about a global train batch, drawn at once from (seed, batch index).

The batch-level train path (`gather`) asks this module, per global batch k, for its
sample indices, crop offsets, flips and PCA lighting shifts, each drawn for the whole
batch with one numpy call instead of one generator per record. Sample s = k * B + j
of the stream is element s mod N of the permutation of epoch s // N, a fresh
permutation every epoch, as the grain path shuffles. The permutation of epoch e
comes from a generator seeded by (seed, e) and the draws of batch k from one seeded
by (seed, k), so batch k is a pure function of (seed, data size, k): the same for
any thread count, process count or resume point. Process p of n takes the rows
[p * B / n, (p + 1) * B / n) of each global batch, the block
`jax.make_array_from_process_local_data` places it at (as `input_pipeline.ProcessBlocks`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_jax.data import augment


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """The rows of one batch: which stored images, where to cut them, how to alter them."""
  index: np.ndarray  # int64 (b,): rows of the split's image array
  crop: np.ndarray  # int32 (b, 2): (top, left) in the stored image
  flip: np.ndarray  # bool (b,): mirror on the device (preprocess.normalize)
  lighting: np.ndarray  # float32 (b, 3): PCA lighting shift, 0-255 units

  def rows(self, start: int, stop: int) -> 'BatchPlan':
    """Rows [start, stop) of the plan."""
    return BatchPlan(self.index[start:stop], self.crop[start:stop], self.flip[start:stop],
                     self.lighting[start:stop])


def _generator(seed: int, counter: int) -> np.random.Generator:
  """An independent stream per (seed, counter): SeedSequence hashes both into the key."""
  return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, counter])))


class TrainSampler:
  """Plans of global train batches over a split of `num_records` images.

  Not thread-safe (its epoch cache): one thread asks for plans.
  """

  def __init__(self, *, num_records: int, global_batch_size: int, image_size: int,
               crop_size: int, flip: bool, lighting_std: float, eigvals: np.ndarray,
               eigvecs: np.ndarray, seed: int, random_crop: bool = True):
    if num_records <= 0:
      raise ValueError(f'the train split is empty (num_records={num_records})')
    if not 0 < crop_size <= image_size:
      raise ValueError(f'crop_size {crop_size} must be in (0, image_size {image_size}]')
    self.num_records, self.global_batch_size = int(num_records), int(global_batch_size)
    self.image_size, self.crop_size = int(image_size), int(crop_size)
    self.flip, self.random_crop = bool(flip), bool(random_crop)
    self.lighting_std = float(lighting_std)
    self.eigvals = np.asarray(eigvals, np.float64)
    self.eigvecs = np.asarray(eigvecs, np.float64)
    # Two words from the seed, so the shuffle and the draws never share a stream.
    self._shuffle_seed, self._draw_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    self._orders: dict[int, np.ndarray] = {}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The permutation of the split that epoch `epoch` reads, int64 (N,)."""
    order = self._orders.get(epoch)
    if order is None:
      # A batch spans at most two epochs when B <= N; keep the two newest.
      for old in sorted(self._orders)[:-1]:
        del self._orders[old]
      order = _generator(self._shuffle_seed, epoch).permutation(self.num_records)
      self._orders[epoch] = order
    return order

  def indices(self, k: int) -> np.ndarray:
    """The split rows of global batch k, int64 (B,)."""
    positions = np.arange(k * self.global_batch_size, (k + 1) * self.global_batch_size,
                          dtype=np.int64)
    epochs, within = np.divmod(positions, self.num_records)
    out = np.empty(self.global_batch_size, np.int64)
    for epoch in np.unique(epochs):
      rows = epochs == epoch
      out[rows] = self.epoch_order(int(epoch))[within[rows]]
    return out

  def global_batch(self, k: int) -> BatchPlan:
    """The plan of global batch k: every draw made for the whole batch at once.

    All draws are made whatever the switches, so turning one augmentation off leaves
    the others' values unchanged.
    """
    if k < 0:
      raise ValueError(f'batch index must be >= 0, got {k}')
    b, rng = self.global_batch_size, _generator(self._draw_seed, k)
    offsets = rng.integers(0, self.image_size - self.crop_size + 1, size=(b, 2))
    coins = rng.random(b) < 0.5
    alphas = rng.normal(0.0, 1.0, size=(b, 3))
    if not self.random_crop:
      offsets[:] = augment.center_crop_offsets(self.image_size, self.crop_size)
    # The paper's shift eigvecs @ (alpha * eigvals) per image, in 0-255 units (augment).
    lighting = 255.0 * (self.lighting_std * alphas * self.eigvals) @ self.eigvecs.T
    return BatchPlan(index=self.indices(k), crop=offsets.astype(np.int32),
                     flip=coins & self.flip, lighting=lighting.astype(np.float32))

  def local_batch(self, k: int, process_index: int, process_count: int) -> BatchPlan:
    """Process `process_index`'s contiguous block of rows of global batch k."""
    local = self.global_batch_size // process_count
    return self.global_batch(k).rows(process_index * local, (process_index + 1) * local)
