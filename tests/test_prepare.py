"""The prepare package converting images: an ImageFolder, the paper's stored size, digits,
phone photos.

The official tars: tests/test_prepare_tars.py; what prepare refuses and checks:
tests/test_prepare_checks.py; tiny fake sources: tests/fakes.py.
"""

import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from alexnet_jax import prepare
from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from tests import fakes

SIZE = fakes.SIZE
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
read_split = fakes.read_split


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


def _read_source(path: str) -> np.ndarray:
  """A source file decoded by PIL (not by the codecs under test)."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


class ImageFolderTest(fakes.StatsAssertions):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = fakes.tempdir()
    cls.source = os.path.join(cls.tmp, 'folder')
    cls.classes = ['emu', 'cat', 'dog']
    cls.truth = fakes.write_image_folder(cls.source, cls.classes, 5, 2,
                                         np.random.default_rng(0))
    with open(os.path.join(cls.source, 'train', 'cat', 'notes.txt'), 'w') as f:
      f.write('not an image')
    cls.output = os.path.join(cls.tmp, 'prepared')
    with mock.patch.object(prepare.parts, 'FILES_PER_PART', 4):  # Several parts, tiny data.
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
    with mock.patch.object(prepare.parts, 'FILES_PER_PART', 4):
      prepare.prepare(self.source, output, image_size=SIZE, workers=2, progress=False)
    self.assert_same_files(output)

  def test_without_tensorflow_datasets(self):
    # An ImageFolder needs no ImageNet label file: the same dataset, byte for byte.
    output = os.path.join(self.tmp, 'no_tfds')
    missing = FileNotFoundError('tensorflow-datasets is not installed')
    with mock.patch.object(prepare.parts, 'FILES_PER_PART', 4), \
        mock.patch.object(prepare.labels, 'imagenet_wnids', side_effect=missing):
      prepare.prepare(self.source, output, image_size=SIZE, progress=False)
    self.assert_same_files(output)
    with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
      self.assertEqual(json.load(f)['class_names'], ['cat', 'dog', 'emu'])

  def test_interrupted_run_is_not_complete_and_resumes(self):
    source = os.path.join(self.tmp, 'interrupted')
    fakes.write_image_folder(source, ['a', 'b'], 4, 1, np.random.default_rng(1))
    with open(os.path.join(source, 'train', 'b', 'b_9.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    output = os.path.join(self.tmp, 'interrupted_out')
    with mock.patch.object(prepare.parts, 'FILES_PER_PART', 4):
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
    tmp = fakes.tempdir()
    cls.source = os.path.join(tmp, 'source')
    rng = np.random.default_rng(3)
    cls.originals = {}
    for name, (h, w) in cls.SOURCES.items():
      os.makedirs(os.path.join(cls.source, 'train', name))
      cls.originals[name] = fakes.smooth_image(h, w, rng, 256)
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


class DigitsTest(fakes.StatsAssertions):

  def test_digits(self):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    output = os.path.join(fakes.tempdir(), 'digits')
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
    tmp = fakes.tempdir()
    source = os.path.join(tmp, 'src')
    fakes.write_image_folder(source, ['a', 'b'], 2, 1, np.random.default_rng(0))
    # A tall 48x32 picture whose pixels are stored turned on their side (32x48) with tag 6
    # (turn 90 degrees clockwise to show), as a phone held upright stores it.
    rows, cols = np.mgrid[0:48, 0:32]
    upright = np.stack([np.full((48, 32), 60), rows * 5, cols * 7], -1).astype(np.uint8)
    upright[:16] = (250, 20, 20)  # a red top third marks which way is up
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6
    with open(os.path.join(source, 'train', 'b', 'phone.jpg'), 'wb') as f:
      f.write(fakes.jpeg(sideways, exif=exif.tobytes()))
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


if __name__ == '__main__':
  absltest.main()
