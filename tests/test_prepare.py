"""The prepare package on tiny fake data: the official tars, an ImageFolder and digits."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from unittest import mock
import zlib

from absl.testing import absltest
from array_record.python import array_record_module
import numpy as np
from PIL import Image

from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from alexnet_jax.core import errors
from alexnet_jax import prepare
from alexnet_jax.prepare import finish
from alexnet_jax.prepare import labels
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import shards

SIZE = 32  # Stored image side in these tests.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOT = ''  # Holds every folder these tests write; removed at the end.


def setUpModule():
  global _ROOT
  _ROOT = tempfile.mkdtemp(prefix='test_prepare_')


def tearDownModule():
  shutil.rmtree(_ROOT, ignore_errors=True)


def _tempdir() -> str:
  return tempfile.mkdtemp(dir=_ROOT)


def _jpeg(image: np.ndarray, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=95, **kwargs)
  return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'PNG')
  return buf.getvalue()


def _cmyk_jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).convert('CMYK').save(buf, 'JPEG', quality=95)
  return buf.getvalue()


def _solid(color, height, width) -> np.ndarray:
  return np.broadcast_to(np.uint8(color), (height, width, 3)).copy()


def _color(i: int) -> tuple[int, int, int]:
  """A distinct, well separated colour for image i (i < 64)."""
  return (30 + 60 * (i % 4), 30 + 60 * (i // 4 % 4), 30 + 60 * (i // 16 % 4))


def _add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  archive.addfile(info, io.BytesIO(data))


def read_split(folder: str, split: str) -> tuple[list[np.ndarray], list[int]]:
  """Decoded images and labels of a prepared split, in storage order."""
  with open(os.path.join(folder, prepared_format.DATASET_FILE)) as f:
    description = json.load(f)
  images, labels = [], []
  for name, count in description['shards'][split]:
    reader = array_record_module.ArrayRecordReader(os.path.join(folder, name))
    records = reader.read_all()
    reader.close()
    assert len(records) == count
    for record in records:
      data, label = prepared_format.decode_record(record)
      images.append(decoding.decode(data))
      labels.append(label)
  return images, labels


def _numpy_stats(images):
  stack = np.stack(images).astype(np.float64)
  pixels = stack.reshape(-1, 3) / 255.0
  return stack.mean(0), np.cov(pixels, rowvar=False, bias=True)


class _StatsAssertions(absltest.TestCase):

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


class OfficialTarsTest(_StatsAssertions):
  """A fake manual_dir: ILSVRC2012_img_train.tar (tar of <wnid>.tar) + val tar."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = _tempdir()
    cls.source = os.path.join(cls.tmp, 'manual')
    os.makedirs(cls.source)
    val_wnids = prepare.imagenet_validation_wnids()
    # Classes of val images 1-5, plus the first wnid of labels.txt (no val image).
    cls.wnids = sorted(set(val_wnids[:5]) | {prepare.imagenet_wnids()[0]})
    cls.expected_color = {}  # (wnid, name) -> RGB of a solid image.
    index = 0
    with tarfile.open(os.path.join(cls.source, prepare.TRAIN_TAR), 'w') as outer:
      for wnid in reversed(cls.wnids):  # Tar order unlike labels.txt order.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as inner:
          for j, (h, w) in enumerate([(48, 36), (30, 50), (40, 40)]):
            name = f'{wnid}_{j}.JPEG'
            _add_file(inner, name, _jpeg(_solid(_color(index), h, w)))
            cls.expected_color[(wnid, name)] = _color(index)
            index += 1
          if wnid == cls.wnids[0]:
            # The bad inputs of ImageNet itself, and a truncated file.
            _add_file(inner, f'{wnid}_cmyk.JPEG', _cmyk_jpeg(_solid(_color(index), 40, 30)))
            cls.expected_color[(wnid, f'{wnid}_cmyk.JPEG')] = _color(index)
            _add_file(inner, f'{wnid}_png.JPEG', _png(_solid(_color(index + 1), 36, 36)))
            cls.expected_color[(wnid, f'{wnid}_png.JPEG')] = _color(index + 1)
            gray = np.full((30, 40), 90, np.uint8)
            _add_file(inner, f'{wnid}_gray.JPEG', _jpeg(gray))
            cls.expected_color[(wnid, f'{wnid}_gray.JPEG')] = (90, 90, 90)
            broken = _jpeg(np.random.default_rng(0).integers(0, 256, (40, 40, 3),
                                                             dtype=np.uint8))
            _add_file(inner, f'{wnid}_truncated.JPEG', broken[:len(broken) // 2])
            index += 2
        _add_file(outer, f'{wnid}.tar', buf.getvalue())
    # Val images 1..7; 6 and 7 belong to classes absent from this train tar.
    cls.val_colors = {}
    with tarfile.open(os.path.join(cls.source, prepare.VAL_TAR), 'w') as val:
      for number in (3, 1, 7, 2, 5, 4, 6):  # Stored out of order on purpose.
        color = _color(40 + number)
        cls.val_colors[number] = color
        _add_file(val, f'ILSVRC2012_val_{number:08d}.JPEG',
                  _jpeg(_solid(color, 40, 56)))
    cls.output = os.path.join(cls.tmp, 'prepared')
    cls.report = prepare.prepare(cls.source, cls.output, image_size=SIZE,
                                 progress=False)

  def test_class_order_is_tfds_labels_order(self):
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    order = [w for w in prepare.imagenet_wnids() if w in self.wnids]
    self.assertEqual(description['class_names'], order)
    self.assertEqual(description['num_classes'], 6)
    self.assertEqual(description['image_size'], SIZE)
    self.assertTrue(description['complete'])

  def test_counts_and_report(self):
    # 6 classes x 3 good images + cmyk + png + gray; the truncated one is skipped.
    self.assertEqual(self.report['converted'], {'train': 21, 'val': 5})
    self.assertEqual(self.report['skipped'], {'train': 1, 'val': 0})
    self.assertIn('_truncated.JPEG', self.report['skipped_files'][0][0])
    self.assertEqual(self.report['val_outside_classes'], 2)
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      self.assertEqual(json.load(f)['splits'], {'train': 21, 'val': 5})
    self.assertFalse(os.path.exists(os.path.join(self.output, prepare.PARTIAL_DIR)))

  def test_train_labels_follow_the_synset_tar(self):
    images, labels = read_split(self.output, 'train')
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      class_names = json.load(f)['class_names']
    by_color = {}
    for (wnid, _), color in self.expected_color.items():
      by_color.setdefault(wnid, []).append(np.float64(color))
    for image, label in zip(images, labels):
      self.assertEqual(image.shape, (SIZE, SIZE, 3))
      mean = image.reshape(-1, 3).mean(0)
      # Its colour is one of the images of the class its label names.
      distance = min(np.abs(mean - c).max() for c in by_color[class_names[label]])
      self.assertLess(distance, 6, f'label {label} has colour {mean}')

  def test_grayscale_cmyk_png_converted(self):
    images, _ = read_split(self.output, 'train')
    means = [im.reshape(-1, 3).mean(0) for im in images]
    wnid = self.wnids[0]
    for kind in ('cmyk', 'png', 'gray'):
      color = np.float64(self.expected_color[(wnid, f'{wnid}_{kind}.JPEG')])
      self.assertLess(min(np.abs(m - color).max() for m in means), 6, kind)
    gray = min(images, key=lambda im: np.abs(im.reshape(-1, 3).mean(0) - 90).max())
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1)

  def test_val_labels_by_official_file_number(self):
    images, labels = read_split(self.output, 'val')
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      class_names = json.load(f)['class_names']
    val_wnids = prepare.imagenet_validation_wnids()
    for number, image, label in zip(range(1, 6), images, labels):
      self.assertEqual(class_names[label], val_wnids[number - 1])
      np.testing.assert_allclose(image.reshape(-1, 3).mean(0), self.val_colors[number],
                                 atol=6)

  def test_statistics_match_numpy(self):
    self.assert_stats_match(self.output, read_split(self.output, 'train')[0])

  def test_non_official_val_names_are_refused(self):
    source = os.path.join(self.tmp, 'renamed_val')
    os.makedirs(source)
    os.link(os.path.join(self.source, prepare.TRAIN_TAR),
            os.path.join(source, prepare.TRAIN_TAR))
    with tarfile.open(os.path.join(source, prepare.VAL_TAR), 'w') as val:
      _add_file(val, 'ILSVRC2012_val_00000001.JPEG', _jpeg(_solid(_color(0), 8, 8)))
      _add_file(val, 'my_photo.JPEG', _jpeg(_solid(_color(1), 8, 8)))
    with self.assertRaisesRegex(ValueError, 'not an official validation file name'):
      prepare.prepare(source, os.path.join(self.tmp, 'renamed_out'), image_size=SIZE,
                      progress=False)
    self.assertFalse(prepared_format.is_complete(os.path.join(self.tmp, 'renamed_out')))

  def test_official_set_counts(self):
    # The official ILSVRC-2012 set: 1000 synsets in the train tar, 50,000 validation images.
    self.assertEqual(self.report['train_synsets'], [6, 1000])
    self.assertEqual(self.report['val_images'], [7, 50000])  # 2 of them outside the 6 classes
    self.assertFalse(self.report['official_complete'])
    self.assertIn('; not the complete official ILSVRC-2012 set: 6 of 1000 synsets, 7 of 50,000 '
                  'validation images (--strict refuses it);', prepare.summary_line(self.report))
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    self.assertFalse(description['official_complete'])
    self.assertEqual(description['source_files'], {
        name: os.path.getsize(os.path.join(self.source, name))
        for name in (prepare.TRAIN_TAR, prepare.VAL_TAR)})

  def test_rerun_is_a_noop(self):
    before = {n: os.stat(os.path.join(self.output, n)).st_mtime_ns
              for n in os.listdir(self.output)}
    report = prepare.ensure_prepared(self.source, self.output, image_size=SIZE)
    self.assertTrue(report['noop'])
    report = prepare.prepare(self.source, self.output, image_size=SIZE, progress=False)
    self.assertTrue(report['noop'])
    after = {n: os.stat(os.path.join(self.output, n)).st_mtime_ns
             for n in os.listdir(self.output)}
    self.assertEqual(before, after)
    with self.assertRaisesRegex(ValueError, 'image_size 32, not 64'):
      prepare.prepare(self.source, self.output, image_size=64, progress=False)


def _write_tars(folder: str, wnids, val_numbers, *, damaged_member: str = '') -> None:
  """Official-layout tars in `folder`: two solid images per synset, one per val number.

  damaged_member: a wnid whose tar gets its second image's header overwritten.
  """
  os.makedirs(folder, exist_ok=True)
  with tarfile.open(os.path.join(folder, prepare.TRAIN_TAR), 'w') as outer:
    for k, wnid in enumerate(wnids):
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for j in range(2):
          _add_file(inner, f'{wnid}_{j}.JPEG', _jpeg(_solid(_color(2 * k + j), 20, 24)))
      data = buf.getvalue()
      if wnid == damaged_member:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
          at = inner.getmembers()[1].offset
        data = data[:at] + b'x' * tarfile.BLOCKSIZE + data[at + tarfile.BLOCKSIZE:]
      _add_file(outer, f'{wnid}.tar', data)
  with tarfile.open(os.path.join(folder, prepare.VAL_TAR), 'w') as val:
    for number in val_numbers:
      _add_file(val, f'ILSVRC2012_val_{number:08d}.JPEG', _jpeg(_solid(_color(number), 20, 24)))


class TarChecksTest(absltest.TestCase):
  """What prepare trusts of the official tars (the command-line cases: tests/test_bad_input.py)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.val_wnids = prepare.imagenet_validation_wnids()
    cls.wnids = cls.val_wnids[:2]  # the synsets of validation images 1 and 2
    assert cls.wnids[0] != cls.wnids[1]

  def setUp(self):
    super().setUp()
    self.tmp = _tempdir()

  def test_strict_takes_only_the_whole_official_set(self):
    source = os.path.join(self.tmp, 'src')
    _write_tars(source, self.wnids, (1, 2))
    output = os.path.join(self.tmp, 'out')
    with self.assertRaisesRegex(errors.InputError, 'holds 2 of 1000 synsets, 2 of 50,000 '
                                'validation images; --strict prepares only the complete set'):
      prepare.prepare(source, output, image_size=SIZE, strict=True, progress=False)
    self.assertFalse(os.path.exists(output))
    # Were these two synsets and two images all of ILSVRC-2012, they would be the whole set.
    with mock.patch.object(labels, 'imagenet_wnids', return_value=tuple(sorted(self.wnids))), \
        mock.patch.object(labels, 'imagenet_validation_wnids', return_value=self.wnids):
      report = prepare.prepare(source, output, image_size=SIZE, strict=True, progress=False)
    self.assertTrue(report['official_complete'])
    self.assertEqual((report['train_synsets'], report['val_images']), ([2, 2], [2, 2]))
    self.assertIn('; the complete official ILSVRC-2012 set;', prepare.summary_line(report))
    with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
      self.assertTrue(json.load(f)['official_complete'])

  def test_a_rerun_on_other_tars_is_not_already_complete(self):
    source = os.path.join(self.tmp, 'src')
    _write_tars(source, self.wnids[:1], (1,))  # a part of the data, prepared first
    output = os.path.join(self.tmp, 'out')
    prepare.prepare(source, output, image_size=SIZE, progress=False)
    description = os.path.join(output, prepared_format.DATASET_FILE)
    with open(description, 'rb') as f:
      before = f.read()
    smaller = os.path.getsize(os.path.join(source, prepare.TRAIN_TAR))
    os.rename(source, source + '.first')
    _write_tars(source, self.wnids, (1, 2))  # then the whole of it, in the same place
    larger = os.path.getsize(os.path.join(source, prepare.TRAIN_TAR))
    message = (f'{output} was prepared from other files in {source} than those there now '
               rf'\(ILSVRC2012_img_train.tar: {smaller:,} bytes then, {larger:,} bytes now\)')
    with self.assertRaisesRegex(errors.InputError, message):
      prepare.prepare(source, output, image_size=SIZE, progress=False)
    with self.assertRaisesRegex(errors.InputError, message):
      prepare.ensure_prepared(source, output, image_size=SIZE)
    with open(description, 'rb') as f:
      self.assertEqual(f.read(), before)
    shutil.rmtree(source)
    os.rename(source + '.first', source)  # the tars it was prepared from: complete, as it was
    self.assertTrue(prepare.prepare(source, output, image_size=SIZE, progress=False)['noop'])
    os.remove(os.path.join(source, prepare.TRAIN_TAR))  # deleted once prepared: no change
    self.assertTrue(prepare.ensure_prepared(source, output, image_size=SIZE)['noop'])

  def test_damage_found_while_converting_leaves_nothing(self):
    source = os.path.join(self.tmp, 'src')
    # The damage lies inside a synset tar whose ends are whole: found when it is read.
    _write_tars(source, self.wnids, (1,), damaged_member=self.wnids[1])
    made = os.path.join(self.tmp, 'made')  # created by prepare
    given = os.path.join(self.tmp, 'given')  # an empty folder the user made
    os.makedirs(given)
    for output, workers in ((made, 1), (given, 2)):
      with self.assertRaisesRegex(errors.DamagedSourceError,
                                  f'{self.wnids[1]}.tar in .* holds a damaged header at byte '
                                  '1,536 \\(after 1 member\\)'):
        prepare.prepare(source, output, image_size=SIZE, workers=workers, progress=False)
    self.assertFalse(os.path.exists(made))
    self.assertEqual(os.listdir(given), [])

  def test_workers_are_capped_by_cores_and_memory(self):
    mib = 2**20
    self.assertEqual(prepare.worker_limit(8, None), 8)
    self.assertEqual(prepare.worker_limit(8, 1000 * mib), 5)  # 1000 MiB for ~200 MiB each
    self.assertEqual(prepare.worker_limit(4, 100 * 2**30), 4)
    self.assertEqual(prepare.worker_limit(4, 0), 1)
    source = os.path.join(self.tmp, 'src')
    _write_image_folder(source, ['a'], 1, 0, np.random.default_rng(0))
    shutil.rmtree(os.path.join(source, 'val'))  # one part left: converted in this process
    with self.assertLogs('absl', 'WARNING') as logs:
      report = prepare.prepare(source, os.path.join(self.tmp, 'out'), image_size=SIZE,
                               workers=10**6, progress=False)
    self.assertBetween(report['workers'], 1, len(os.sched_getaffinity(0)))
    self.assertTrue(any(f'--workers=1000000 capped at {report["workers"]}: ' in line
                        for line in logs.output), logs.output)
    for bad in (0, -3):
      with self.assertRaisesRegex(errors.InputError, f'--workers must be a positive integer, '
                                  f'got {bad}'):
        prepare.prepare(source, os.path.join(self.tmp, 'bad'), workers=bad)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'bad')))


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) pixel-area averaging: each output pixel is the mean of the input
  interval it covers, partly covered pixels weighted by the part covered."""
  scale = n_in / n_out
  weights = np.zeros((n_out, n_in))
  for o in range(n_out):
    lo, hi = o * scale, (o + 1) * scale
    for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
      weights[o, i] = min(hi, i + 1) - max(lo, i)
  return weights / scale


def _bicubic_weights(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) bicubic interpolation: Keys' kernel with a = -0.75 (OpenCV's), pixel
  centres aligned (output o samples input (o + 0.5) * n_in / n_out - 0.5), edges repeated."""
  weights = np.zeros((n_out, n_in))
  for o in range(n_out):
    src = (o + 0.5) * n_in / n_out - 0.5
    base = int(np.floor(src))
    for tap in range(-1, 3):
      d = abs(tap - (src - base))
      w = ((a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1
           else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a)
      weights[o, min(max(base + tap, 0), n_in - 1)] += w
  return weights


def reference_stored_image(image: np.ndarray, size: int) -> np.ndarray:
  """The stored image as docs/design.md, "Preprocessing" and decoding.resize_center_crop
  describe it, computed independently in float64: the central square (integer offsets),
  resampled to size x size, by pixel-area averaging when shrinking and bicubic
  interpolation when enlarging."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  square = image[top:top + side, left:left + side].astype(np.float64)
  if side == size:
    return square
  weights = (_area_weights if side > size else _bicubic_weights)(side, size)
  rows = np.einsum('oi,ijc->ojc', weights, square)
  return np.einsum('pj,ojc->opc', weights, rows)


def _smooth_image(h: int, w: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """A tinted wave with a period of 10-20 pixels once stored at `size`: JPEG keeps it to
  a few levels (little colour detail for the 4:2:0 chroma to lose), while a one-pixel
  shift or an edge of padding moves it by tens of levels."""
  y, x = np.mgrid[0:h, 0:w]
  period = rng.uniform(10, 20) * min(h, w) / size
  angle, phase = rng.uniform(0, 2 * np.pi, 2)
  wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
  tint = rng.uniform(-30, 30, 3)
  return np.clip(np.round(128 + tint + 80 * wave[..., None]), 0, 255).astype(np.uint8)


def _read_source(path: str) -> np.ndarray:
  """A source file decoded by PIL (not by the codecs under test)."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def _write_image_folder(root, classes, per_class, val_per_class, rng):
  """ImageFolder with smooth images of assorted sizes; returns {path: label name}."""
  truth = {}
  for split, count in (('train', per_class), ('val', val_per_class)):
    for name in classes:
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for j in range(count):
        ext = ('.JPEG', '.jpg', '.png')[j % 3]
        # JPEGs stay under 36 pixels: libjpeg would decode a larger one at a reduced DCT
        # scale (decoding.open_image), which reference_stored_image does not model. The
        # PNGs cover shrinking from up to twice the stored size.
        h, w = rng.integers(SIZE // 2, 2 * SIZE if ext == '.png' else 36, 2)
        image = _smooth_image(h, w, rng, SIZE)
        path = os.path.join(folder, f'{name}_{j}{ext}')
        with open(path, 'wb') as f:
          f.write(_png(image) if ext == '.png' else _jpeg(image))
        truth[path] = name
  return truth


class ImageFolderTest(_StatsAssertions):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = _tempdir()
    cls.source = os.path.join(cls.tmp, 'folder')
    cls.classes = ['emu', 'cat', 'dog']
    cls.truth = _write_image_folder(cls.source, cls.classes, 5, 2,
                                    np.random.default_rng(0))
    with open(os.path.join(cls.source, 'train', 'cat', 'notes.txt'), 'w') as f:
      f.write('not an image')
    cls.output = os.path.join(cls.tmp, 'prepared')
    with mock.patch.object(parts, 'FILES_PER_PART', 4):  # Several parts, tiny data.
      cls.report = prepare.prepare(cls.source, cls.output, image_size=SIZE,
                                   progress=False)

  def _expected(self, split):
    """Images as prepare must have stored them (before JPEG), in storage order, + labels."""
    order = sorted(self.classes)
    paths = sorted((p for p, name in self.truth.items()
                    if f'{os.sep}{split}{os.sep}' in p),
                   key=lambda p: (order.index(self.truth[p]), os.path.basename(p)))
    images = [reference_stored_image(_read_source(path), SIZE) for path in paths]
    return images, [order.index(self.truth[p]) for p in paths]

  def test_classes_counts_labels(self):
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    self.assertEqual(description['class_names'], ['cat', 'dog', 'emu'])
    self.assertEqual(description['splits'], {'train': 15, 'val': 6})
    self.assertEqual(self.report['ignored_files'], 1)
    self.assertLen(description['shards']['train'], 4)  # 15 files, 4 per part.
    for split in ('train', 'val'):
      images, labels = read_split(self.output, split)
      want_images, want_labels = self._expected(split)
      self.assertEqual(labels, want_labels)
      for i, (got, want) in enumerate(zip(images, want_images)):
        error = np.abs(got - want)
        # JPEG (of the source, then of the stored image) moves these waves by a few levels;
        # two different images differ by about 20 on average.
        self.assertLess(error.mean(), 2.5, f'{split} image {i}')
        self.assertLessEqual(error.max(), 10, f'{split} image {i}')

  def test_statistics_match_numpy(self):
    self.assert_stats_match(self.output, read_split(self.output, 'train')[0])

  def assert_same_files(self, output: str) -> None:
    """The shards and statistics in `output` are byte for byte those of self.output."""
    names = sorted(n for n in os.listdir(self.output) if 'array_record' in n)
    self.assertEqual(names, sorted(n for n in os.listdir(output) if 'array_record' in n))
    for name in names + [prepared_format.STATS_FILE]:
      with open(os.path.join(self.output, name), 'rb') as a, \
          open(os.path.join(output, name), 'rb') as b:
        self.assertEqual(a.read(), b.read(), name)

  def test_workers_give_identical_files(self):
    output = os.path.join(self.tmp, 'parallel')
    with mock.patch.object(parts, 'FILES_PER_PART', 4):
      prepare.prepare(self.source, output, image_size=SIZE, workers=2, progress=False)
    self.assert_same_files(output)

  def test_without_tensorflow_datasets(self):
    # An ImageFolder needs no ImageNet label file: the same dataset, byte for byte.
    output = os.path.join(self.tmp, 'no_tfds')
    missing = FileNotFoundError('tensorflow-datasets is not installed')
    with mock.patch.object(parts, 'FILES_PER_PART', 4), \
        mock.patch.object(labels, 'imagenet_wnids', side_effect=missing):
      prepare.prepare(self.source, output, image_size=SIZE, progress=False)
    self.assert_same_files(output)
    with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
      self.assertEqual(json.load(f)['class_names'], ['cat', 'dog', 'emu'])

  def test_interrupted_run_is_not_complete_and_resumes(self):
    source = os.path.join(self.tmp, 'interrupted')
    _write_image_folder(source, ['a', 'b'], 4, 1, np.random.default_rng(1))
    with open(os.path.join(source, 'train', 'b', 'b_9.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    output = os.path.join(self.tmp, 'interrupted_out')
    with mock.patch.object(parts, 'FILES_PER_PART', 4):
      with self.assertRaisesRegex(ValueError, 'cannot decode .*b_9.jpg'):
        prepare.prepare(source, output, image_size=SIZE, strict=True, progress=False)
      self.assertFalse(prepared_format.is_complete(output))
      self.assertFalse(os.path.exists(os.path.join(output, prepared_format.DATASET_FILE)))
      first = os.path.join(output, prepare.PARTIAL_DIR, 'train-00000.array_record')
      done_at = os.stat(first).st_mtime_ns  # Part 0 (class a) finished before the error.
      report = prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertTrue(prepared_format.is_complete(output))
    self.assertEqual(report['converted'], {'train': 8, 'val': 2})
    self.assertEqual(report['skipped']['train'], 1)
    resumed = os.path.join(output, 'train.array_record-00000-of-00002')
    self.assertEqual(os.stat(resumed).st_mtime_ns, done_at)  # Reused, not redone.


class StoredSizeTest(absltest.TestCase):
  """The paper's stored image at prepare's defaults, from the command line and the function.

  Section 2 of the paper: "rescaled the image such that the shorter side was of length 256,
  and then cropped out the central 256x256 patch". One source is shrunk (300x420 -> 256,
  a non-integer ratio), one enlarged (150x200 -> 256); PNGs, so the reference starts from
  exactly the pixels prepare reads.
  """

  SOURCES = {'a': (300, 420), 'b': (150, 200)}  # class -> (height, width) of its one image

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = _tempdir()
    cls.source = os.path.join(tmp, 'source')
    rng = np.random.default_rng(3)
    cls.originals = {}
    for name, (h, w) in cls.SOURCES.items():
      os.makedirs(os.path.join(cls.source, 'train', name))
      cls.originals[name] = _smooth_image(h, w, rng, 256)
      Image.fromarray(cls.originals[name]).save(os.path.join(cls.source, 'train', name, 'x.png'))
    # Neither path is given an image size: both must default to the paper's 256.
    cls.from_cli = os.path.join(tmp, 'cli')
    result = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.prepare', f'--source={cls.source}',
         f'--output={cls.from_cli}'], cwd=REPO, capture_output=True, text=True,
        timeout=300, check=False)
    if result.returncode != 0:
      raise AssertionError(f'prepare failed:\n{result.stderr[-3000:]}')
    cls.from_function = os.path.join(tmp, 'function')
    prepare.prepare(cls.source, cls.from_function, progress=False)

  def test_default_image_size_is_256(self):
    for output in (self.from_cli, self.from_function):
      with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
        self.assertEqual(json.load(f)['image_size'], 256, f'{output}: section 2, 256x256')
      for image in read_split(output, 'train')[0]:
        self.assertEqual(image.shape, (256, 256, 3), output)

  def test_stored_images_match_an_independent_resize(self):
    for output in (self.from_cli, self.from_function):
      images, labels = read_split(output, 'train')
      self.assertEqual(labels, [0, 1])
      for name, got in zip(sorted(self.SOURCES), images):
        want = reference_stored_image(self.originals[name], 256)
        error = np.abs(got - want)
        # The resize itself agrees to rounding (0.5); the stored JPEG adds a few levels.
        # Resizing to 255 and padding, or a crop one pixel off, moves it by tens.
        self.assertLess(error.mean(), 1.5, f'{output}: image of class {name}')
        self.assertLessEqual(error.max(), 8, f'{output}: image of class {name}')


class DigitsTest(_StatsAssertions):

  def test_digits(self):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    output = os.path.join(_tempdir(), 'digits')
    report = prepare.prepare('digits', output, image_size=SIZE, progress=False)
    digits = datasets.load_digits()
    per_class = np.bincount(digits.target, minlength=10)
    val = -(-per_class // 5)  # Every fifth image of a class, starting with the first.
    self.assertEqual(report['converted'], {'train': int((per_class - val).sum()),
                                           'val': int(val.sum())})
    with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    self.assertEqual(description['class_names'], [str(i) for i in range(10)])
    self.assertEqual(description['class_descriptions'][0], 'zero')
    images, labels = read_split(output, 'val')
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), val)
    # The first val image is load_digits' image 0, upsampled: compare 4x4 block means.
    source = digits.images[0] * 255 / 16
    blocks = images[0][..., 0].reshape(8, 4, 8, 4).mean((1, 3))
    self.assertLess(np.abs(blocks - source).mean(), 20)
    train_images, _ = read_split(output, 'train')
    self.assert_stats_match(output, train_images)


class PhotoTest(absltest.TestCase):
  """Phone photos (stored sideways, with an EXIF orientation tag) and links to nothing."""

  def test_exif_photo_is_stored_upright_and_counted(self):
    tmp = _tempdir()
    source = os.path.join(tmp, 'src')
    _write_image_folder(source, ['a', 'b'], 2, 1, np.random.default_rng(0))
    # A tall 48x32 picture whose pixels are stored turned on their side (32x48) with tag 6
    # (turn 90 degrees clockwise to show), as a phone held upright stores it.
    rows, cols = np.mgrid[0:48, 0:32]
    upright = np.stack([np.full((48, 32), 60), rows * 5, cols * 7], -1).astype(np.uint8)
    upright[:16] = (250, 20, 20)  # a red top third marks which way is up
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6
    with open(os.path.join(source, 'train', 'b', 'phone.jpg'), 'wb') as f:
      f.write(_jpeg(sideways, exif=exif.tobytes()))
    os.symlink(os.path.join(source, 'gone.jpg'), os.path.join(source, 'train', 'a', 'moved.jpg'))
    output = os.path.join(tmp, 'out')
    report = prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertEqual(report['rotated'], 1)
    self.assertEqual(report['ignored_files'], 1)  # the link to nothing
    self.assertIn('1 turned upright by their EXIF orientation; ignored 1 other files',
                  prepare.summary_line(report))
    images, labels = read_split(output, 'train')
    stored = images[labels.index(1) + 2]  # b's images: b_0, b_1, then phone.jpg
    # Upright: the central 32x32 square of the 48x32 picture, whose top rows are red.
    expected = decoding.resize_center_crop(upright, SIZE)
    self.assertLess(np.abs(stored.astype(int) - expected.astype(int)).mean(), 6)
    self.assertGreater(stored[:4, :, 0].mean(), 200)  # red at the top, not at a side


class VerificationTest(absltest.TestCase):
  """What prepare wrote is read back before dataset.json marks it complete."""

  def test_a_record_changed_on_the_way_to_disk_is_caught(self):
    tmp = _tempdir()
    path = os.path.join(tmp, 'part.array_record')
    writer = array_record_module.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
    records = [b'first record', b'second record']
    for r in records:
      writer.write(r)
    writer.close()
    shards.verify_shard(path, [zlib.crc32(r) for r in records])
    with self.assertRaisesRegex(errors.UserError, 'record 1 of .* differs from what was written'):
      shards.verify_shard(path, [zlib.crc32(records[0]), zlib.crc32(b'other')])
    with self.assertRaisesRegex(errors.UserError, 'holds 2 records after writing 3'):
      shards.verify_shard(path, [0, 0, 0])

  def test_a_shard_cut_short_after_its_part_is_refused(self):
    tmp = _tempdir()
    source = os.path.join(tmp, 'src')
    _write_image_folder(source, ['a', 'b'], 3, 1, np.random.default_rng(0))
    output = os.path.join(tmp, 'out')
    finish_dataset = finish.finish_dataset

    def finish_after_damage(work, output, work_dir, *args):
      # Between the parts and the final layout, a shard loses its tail (a failed copy).
      shard = os.path.join(work_dir, 'train-00000.array_record')
      with open(shard, 'r+b') as f:
        f.truncate(os.path.getsize(shard) - 100)
      return finish_dataset(work, output, work_dir, *args)

    with mock.patch.object(finish, 'finish_dataset', finish_after_damage):
      with self.assertRaisesRegex(errors.UserError, r'train\.array_record-00000-of-00001 is '
                                  r'\d+ bytes, not the \d+ bytes written'):
        prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertFalse(os.path.exists(os.path.join(output, prepared_format.DATASET_FILE)))

  def test_output_inside_the_source_is_refused_before_anything_is_written(self):
    tmp = _tempdir()
    source = os.path.join(tmp, 'src')
    _write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    before = sorted(os.walk(source))
    with self.assertRaisesRegex(errors.InputError, 'is inside the source'):
      prepare.prepare(source, os.path.join(source, 'train', 'out'), image_size=SIZE)
    self.assertEqual(sorted(os.walk(source)), before)


class BadSourceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = _tempdir()

  def test_missing_source(self):
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      prepare.prepare(os.path.join(self.tmp, 'nope'), os.path.join(self.tmp, 'out'))

  def test_empty_source(self):
    os.makedirs(os.path.join(self.tmp, 'empty'))
    with self.assertRaisesRegex(ValueError, 'is empty'):
      prepare.prepare(os.path.join(self.tmp, 'empty'), os.path.join(self.tmp, 'out'))

  def test_unrecognised_source(self):
    os.makedirs(os.path.join(self.tmp, 'other', 'pictures'))
    with self.assertRaisesRegex(ValueError, 'holds neither'):
      prepare.prepare(os.path.join(self.tmp, 'other'), os.path.join(self.tmp, 'out'))

  def test_class_folder_without_images(self):
    source = os.path.join(self.tmp, 'src')
    _write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    os.makedirs(os.path.join(source, 'train', 'b'))
    with open(os.path.join(source, 'train', 'b', 'readme.txt'), 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(ValueError, r'class folder .*train/b holds no images'):
      prepare.prepare(source, os.path.join(self.tmp, 'out'), image_size=SIZE)

  def test_empty_train_tar(self):
    source = os.path.join(self.tmp, 'tars')
    os.makedirs(source)
    tarfile.open(os.path.join(source, prepare.TRAIN_TAR), 'w').close()
    with self.assertRaisesRegex(ValueError, 'is empty'):
      prepare.prepare(source, os.path.join(self.tmp, 'out'))

  def test_foreign_output_folder(self):
    source = os.path.join(self.tmp, 'src')
    _write_image_folder(source, ['a'], 1, 0, np.random.default_rng(0))
    output = os.path.join(self.tmp, 'out')
    os.makedirs(output)
    with open(os.path.join(output, 'precious.txt'), 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(ValueError, 'not empty'):
      prepare.prepare(source, output, image_size=SIZE)

  def test_temporary_files_of_a_killed_run_are_not_foreign(self):
    source = os.path.join(self.tmp, 'src')
    _write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    output = os.path.join(self.tmp, 'out')
    os.makedirs(output)
    for name in ('.dataset.json.k3x9_q', '.stats.npz.a1b2c3', 'dataset.json.tmp'):
      open(os.path.join(output, name), 'w').close()
    prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertTrue(prepared_format.is_complete(output))

  def test_command_line_error_is_one_line(self):
    result = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.prepare', f'--source={self.tmp}/nope',
         f'--output={self.tmp}/out'], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr.strip().splitlines(),
                     [f'error: source folder {self.tmp}/nope does not exist'])
    self.assertFalse(os.path.exists(f'{self.tmp}/out'), 'a refused source left an output folder')


if __name__ == '__main__':
  absltest.main()
