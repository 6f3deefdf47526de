"""Training-set statistics of the stored pixels: the mean image and the RGB PCA.

Exact integer sums per part (or per tfds chunk), merged in any order, so that
parallel workers and a resumed run give the same stats.npz.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from alexnet_jax.prepare import parts


class Stats:
  """Exact integer sums over stored pixels; mergeable across parts in any order."""

  def __init__(self, image_size: int):
    self.pixel_sum = np.zeros((image_size, image_size, 3), np.int64)
    self.outer_sum = np.zeros((3, 3), np.int64)
    self.count = 0

  def add(self, image: np.ndarray) -> None:
    self.pixel_sum += image
    flat = image.reshape(-1, 3).astype(np.float64)
    # Integer products summed in float64 stay exact below 2**53 (a 4096^2 image).
    self.outer_sum += np.rint(flat.T @ flat).astype(np.int64)
    self.count += 1

  def merge(self, pixel_sum: np.ndarray, outer_sum: np.ndarray, count: int) -> None:
    self.pixel_sum += pixel_sum
    self.outer_sum += outer_sum
    self.count += int(count)

  def finish(self) -> dict[str, np.ndarray]:
    """Mean image (0-255) and the eigen-decomposition of the [0, 1] RGB covariance."""
    size = self.pixel_sum.shape[0]
    pixels = self.count * size * size
    channel_mean = self.pixel_sum.sum(axis=(0, 1)) / pixels
    covariance = (self.outer_sum / pixels - np.outer(channel_mean, channel_mean))
    covariance /= 255.0**2
    eigvals, eigvecs = np.linalg.eigh(covariance)
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    # Signs are arbitrary (alpha is symmetric); fix them for reproducible files.
    peak = eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(3)]
    eigvecs = eigvecs * np.where(peak < 0, -1.0, 1.0)
    return {
        'mean_image': (self.pixel_sum / self.count).astype(np.float32),
        'channel_mean': channel_mean.astype(np.float32),
        'covariance': covariance,
        'eigvals': np.maximum(eigvals, 0).astype(np.float32),
        'eigvecs': eigvecs.astype(np.float32),
        'count': np.int64(self.count),
    }


def merge_parts(results: Sequence[tuple[parts.Part, dict[str, Any]]], work_dir: str,
                image_size: int) -> dict[str, np.ndarray]:
  """The mean image and RGB PCA of the training split, from each part's sums."""
  stats = Stats(image_size)
  for part, _ in results:
    if part.split == 'train':
      with np.load(os.path.join(work_dir, part.name + '.npz')) as sums:
        stats.merge(sums['pixel_sum'], sums['outer_sum'], sums['count'])
  return stats.finish()
