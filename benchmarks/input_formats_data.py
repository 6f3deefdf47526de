"""Photo-like 256x256 images for the input-pipeline benchmark, and the two storages made of them.

Each image is a smooth colour gradient, a few filled shapes with soft edges and
sensor-like noise: JPEG compresses it about as well as a photo (far worse than a
flat image, far better than noise), so the JPEG path decodes realistic files. The
same images are prepared twice by the real `alexnet_jax.prepare`, once per storage.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from alexnet_jax import prepare

CLASSES = 8


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
  """One (size, size, 3) uint8 image: gradient + soft shapes + noise."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  image = (rng.uniform(40, 200, 3) + rng.uniform(-80, 80, 3) * x[..., None]
           + rng.uniform(-80, 80, 3) * y[..., None])
  for _ in range(rng.integers(3, 8)):
    cy, cx = rng.uniform(0, 1, 2)
    radius = rng.uniform(0.05, 0.3)
    if rng.random() < 0.5:  # a disc
      distance = np.hypot(y - cy, x - cx) / radius
    else:  # an axis-aligned rectangle
      distance = np.maximum(np.abs(y - cy), np.abs(x - cx) * rng.uniform(0.5, 2)) / radius
    alpha = np.clip((1.0 - distance) * 8, 0, 1)[..., None]  # soft edge
    image = image * (1 - alpha) + rng.uniform(0, 255, 3) * alpha
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(folder: str, count: int, size: int, seed: int = 0) -> None:
  """`count` photo-like PNGs (lossless, so both storages start from the same pixels) as an
  ImageFolder tree: train/c<k>/ and a small val/."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    split = 'val' if i % 20 == 0 else 'train'
    path = os.path.join(folder, split, f'c{i % CLASSES}', f'{i}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(photo_like(rng, size)).save(path, compress_level=1)


def prepare_both(root: str, count: int, size: int) -> dict[str, str]:
  """{'jpeg': folder, 'raw': folder}: the same generated images in both storages."""
  source = os.path.join(root, 'images')
  if not os.path.isdir(source):
    write_image_folder(source, count, size)
  folders = {}
  for storage in ('jpeg', 'raw'):
    folders[storage] = os.path.join(root, storage)
    prepare.prepare(source, folders[storage], image_size=size, progress=False, storage=storage)
  return folders
