"""Tiny fake sources for the prepare tests, and a prepared split read back.

Solid and smooth images, official-layout tars and ImageFolder trees, small enough
that a whole preparation takes a second; SIZE is the stored side they use.
"""

import atexit
import io
import os
import shutil
import tarfile

from absl.testing import absltest
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.data import prepared_format
from tests.helpers import files
from tests.helpers import images as test_images
from tests.helpers.images import png

SIZE = 32  # Stored image side in these tests.
read_split = test_images.read_split  # the prepare tests read splits as fakes.read_split
_root = ''  # Holds every folder the tests write; removed when the process ends.


def tempdir() -> str:
  """A new folder under this process's test root."""
  global _root
  if not _root:
    _root = files.make_tempdir(prefix='test_prepare_')
    atexit.register(shutil.rmtree, _root, ignore_errors=True)
  return files.make_tempdir(parent=_root)


def jpeg(image: np.ndarray, **kwargs) -> bytes:
  return test_images.jpeg(image, quality=95, **kwargs)


def cmyk_jpeg(image: np.ndarray) -> bytes:
  return test_images.jpeg(image, quality=95, mode='CMYK')


def solid(color, height, width) -> np.ndarray:
  return np.broadcast_to(np.uint8(color), (height, width, 3)).copy()


def color(i: int) -> tuple[int, int, int]:
  """A distinct, well separated colour for image i (i < 64)."""
  return (30 + 60 * (i % 4), 30 + 60 * (i // 4 % 4), 30 + 60 * (i // 16 % 4))


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  archive.addfile(info, io.BytesIO(data))


def _numpy_stats(images):
  stack = np.stack(images).astype(np.float64)
  pixels = stack.reshape(-1, 3) / 255.0
  return stack.mean(0), np.cov(pixels, rowvar=False, bias=True)


class StatsAssertions(absltest.TestCase):

  def assert_stats_match(self, folder, train_images):
    mean, cov = _numpy_stats(train_images)
    with np.load(os.path.join(folder, prepared_format.STATS_FILE)) as stats:
      self.assertEqual(stats['mean_image'].shape, (SIZE, SIZE, 3))
      self.assertEqual(stats['mean_image'].dtype, np.float32)
      np.testing.assert_allclose(stats['mean_image'], mean, rtol=1e-6, atol=1e-4)
      np.testing.assert_allclose(stats['channel_mean'], mean.reshape(-1, 3).mean(0),
                                 rtol=1e-5)
      np.testing.assert_allclose(stats['covariance'], cov, rtol=1e-9, atol=1e-12)
      eigvals = np.linalg.eigvalsh(cov)[::-1]
      np.testing.assert_allclose(stats['eigvals'], eigvals, rtol=1e-5, atol=1e-7)
      vecs = stats['eigvecs'].astype(np.float64)
      np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-5)
      for k in range(3):  # Columns are the components: cov v = lambda v.
        np.testing.assert_allclose(cov @ vecs[:, k], eigvals[k] * vecs[:, k],
                                   atol=1e-6)
      self.assertEqual(int(stats['count']), len(train_images))


def write_tars(folder: str, wnids, val_numbers, *, damaged_member: str = '') -> None:
  """Official-layout tars in `folder`: two solid images per synset, one per val number.

  damaged_member: a wnid whose tar gets its second image's header overwritten.
  """
  os.makedirs(folder, exist_ok=True)
  with tarfile.open(os.path.join(folder, prepare.TRAIN_TAR), 'w') as outer:
    for k, wnid in enumerate(wnids):
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for j in range(2):
          add_file(inner, f'{wnid}_{j}.JPEG', jpeg(solid(color(2 * k + j), 20, 24)))
      data = buf.getvalue()
      if wnid == damaged_member:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
          at = inner.getmembers()[1].offset
        data = data[:at] + b'x' * tarfile.BLOCKSIZE + data[at + tarfile.BLOCKSIZE:]
      add_file(outer, f'{wnid}.tar', data)
  with tarfile.open(os.path.join(folder, prepare.VAL_TAR), 'w') as val:
    for number in val_numbers:
      add_file(val, f'ILSVRC2012_val_{number:08d}.JPEG', jpeg(solid(color(number), 20, 24)))


def smooth_image(h: int, w: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """A tinted wave with a period of 10-20 pixels once stored at `size`: JPEG keeps it to
  a few levels (little colour detail for the 4:2:0 chroma to lose), while a one-pixel
  shift or an edge of padding moves it by tens of levels."""
  y, x = np.mgrid[0:h, 0:w]
  period = rng.uniform(10, 20) * min(h, w) / size
  angle, phase = rng.uniform(0, 2 * np.pi, 2)
  wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
  tint = rng.uniform(-30, 30, 3)
  return np.clip(np.round(128 + tint + 80 * wave[..., None]), 0, 255).astype(np.uint8)


def write_image_folder(root, classes, per_class, val_per_class, rng):
  """ImageFolder with smooth images of assorted sizes; returns {path: label name}."""
  truth = {}
  for split, count in (('train', per_class), ('val', val_per_class)):
    for name in classes:
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for j in range(count):
        ext = ('.JPEG', '.jpg', '.png')[j % 3]
        # JPEGs stay under 36 pixels: libjpeg would decode a larger one at a reduced DCT
        # scale (decoding.open_image), which test_prepare.reference_stored_image does not
        # model. The PNGs cover shrinking from up to twice the stored size.
        h, w = rng.integers(SIZE // 2, 2 * SIZE if ext == '.png' else 36, 2)
        image = smooth_image(h, w, rng, SIZE)
        path = os.path.join(folder, f'{name}_{j}{ext}')
        with open(path, 'wb') as f:
          f.write(png(image) if ext == '.png' else jpeg(image))
        truth[path] = name
  return truth
