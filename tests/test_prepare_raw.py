"""prepare --format=raw: the stored pixels, labels, statistics and checksums, and its resumes.

Checked against independent computations: the JPEG dataset of the same source decoded
with PIL (not the pipeline's simplejpeg), a centre crop cut by numpy slicing, numpy's
mean and covariance of the mapped pixels, zlib's CRC-32 of the file's bytes.
"""

import contextlib
import io
import json
import os
import struct
import zlib
from unittest import mock

from absl.testing import absltest
from array_record.python import array_record_module
import numpy as np
from PIL import Image

from alexnet_jax import prepare
from alexnet_jax.core import errors
from alexnet_jax.data import batch_sampler
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import raw_format
from alexnet_jax.prepare import raw_storage
from configs import imagenet
from tests import fakes
from tests.helpers import files

SIZE = 24


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth colour image with some noise: JPEG keeps it within a few levels."""
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (width + height)], -1)
  return np.clip(base + 40 + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def _image_folder(root: str) -> dict[str, np.ndarray]:
  """train/ and val/ of two classes as PNGs (lossless); returns path -> pixels as written."""
  rng = np.random.default_rng(1)
  written = {}
  shapes = [(SIZE, SIZE + 6), (SIZE + 10, SIZE), (2 * SIZE, 3 * SIZE)]  # crop; crop; resize
  for split, count in (('train', 3), ('val', 1)):
    for label in ('a', 'b'):
      os.makedirs(os.path.join(root, split, label))
      for i in range(count):
        pixels = _photo(rng, *shapes[i])
        path = os.path.join(root, split, label, f'{i}.png')
        Image.fromarray(pixels).save(path)
        written[path] = pixels
  return written


def _jpeg_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images decoded by PIL, labels) of a JPEG dataset's split, in record order."""
  with open(os.path.join(folder, 'dataset.json')) as f:
    shards = json.load(f)['shards'][split]
  images, labels = [], []
  for name, count in shards:
    reader = array_record_module.ArrayRecordReader(os.path.join(folder, name))
    for record in reader.read(list(range(count))):
      labels.append(struct.unpack('<i', record[:4])[0])
      images.append(np.asarray(Image.open(io.BytesIO(record[4:])).convert('RGB')))
    reader.close()
  return np.stack(images), np.array(labels)


class SameSourceTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = files.make_tempdir()
    cls.sources = _image_folder(os.path.join(cls.root, 'src'))
    for storage in ('raw', 'jpeg'):
      prepare.prepare(os.path.join(cls.root, 'src'), os.path.join(cls.root, storage),
                      image_size=SIZE, progress=False, storage=storage)
    cls.raw = os.path.join(cls.root, 'raw')

  def test_same_labels_and_pixels_within_jpeg_error(self):
    for split in ('train', 'val'):
      opened = raw_format.open_raw_split(self.raw, split, verify=True)
      jpeg_images, jpeg_labels = _jpeg_split(os.path.join(self.root, 'jpeg'), split)
      np.testing.assert_array_equal(opened.labels, jpeg_labels)
      self.assertEqual(opened.images.shape, jpeg_images.shape)
      difference = np.abs(opened.images.astype(int) - jpeg_images.astype(int))
      self.assertLess(difference.mean(), 3.0)
      self.assertLess(np.percentile(difference, 99), 16)

  def test_the_stored_pixels_are_the_exact_centre_crop(self):
    train = raw_format.open_raw_split(self.raw, 'train')
    for path, pixels in self.sources.items():
      if '/train/' not in path or pixels.shape[0] == 2 * SIZE:
        continue  # the enlarged image is resampled, not cut
      h, w = pixels.shape[:2]
      top, left = (h - SIZE) // 2, (w - SIZE) // 2
      crop = pixels[top:top + SIZE, left:left + SIZE]
      matches = [i for i in range(len(train.images)) if np.array_equal(train.images[i], crop)]
      self.assertLen(matches, 1, path)
      self.assertEqual(train.labels[matches[0]], 0 if '/a/' in path else 1)

  def test_statistics_are_those_of_the_stored_pixels(self):
    train = raw_format.open_raw_split(self.raw, 'train')
    with np.load(os.path.join(self.raw, 'stats.npz')) as stats:
      mean_image, eigvals = stats['mean_image'], stats['eigvals']
    pixels = np.asarray(train.images, np.float64)
    np.testing.assert_allclose(mean_image, pixels.mean(axis=0), atol=1e-4)
    covariance = np.cov(pixels.reshape(-1, 3).T / 255.0, bias=True)
    np.testing.assert_allclose(eigvals, np.sort(np.linalg.eigvalsh(covariance))[::-1],
                               rtol=1e-4, atol=1e-7)

  def test_checksums_and_sizes_are_those_of_the_files(self):
    with open(os.path.join(self.raw, 'dataset.json')) as f:
      description = json.load(f)
    self.assertEqual(description['storage'], 'raw')
    self.assertEqual(description['splits'], {'train': 6, 'val': 2})
    for split, entry in description['raw'].items():
      with open(os.path.join(self.raw, entry['images']), 'rb') as f:
        data = f.read()
      self.assertLen(data, entry['count'] * SIZE * SIZE * 3)
      step = entry['chunk_images'] * SIZE * SIZE * 3
      self.assertEqual(entry['crc32'],
                       [zlib.crc32(data[i:i + step]) for i in range(0, len(data), step)])
    self.assertEqual(sorted(os.listdir(self.raw)),
                     ['.prepare.lock', 'dataset.json', 'stats.npz', 'train.labels.npy',
                      'train.u8', 'val.labels.npy', 'val.u8'])

  def test_a_rerun_in_the_other_format_is_refused(self):
    with self.assertRaisesRegex(errors.InputError, 'prepared with --format=raw, not '
                                '--format=jpeg; prepare into another folder'):
      prepare.prepare(os.path.join(self.root, 'src'), self.raw, image_size=SIZE,
                      progress=False, storage='jpeg')
    report = prepare.prepare(os.path.join(self.root, 'src'), self.raw, image_size=SIZE,
                             progress=False, storage='raw')
    self.assertTrue(report['noop'])


class EverySourceTest(absltest.TestCase):
  """The official tars and the digits, in both storages."""

  def _assert_twins(self, source: str, folder: str, **options):
    for storage in ('raw', 'jpeg'):
      prepare.prepare(source, os.path.join(folder, storage), progress=False, storage=storage,
                      **options)
    with open(os.path.join(folder, 'raw', 'dataset.json')) as a, \
        open(os.path.join(folder, 'jpeg', 'dataset.json')) as b:
      raw, jpeg = json.load(a), json.load(b)
    for key in ('class_names', 'splits', 'train_class_counts', 'image_size'):
      self.assertEqual(raw[key], jpeg[key], key)
    for split in ('train', 'val'):
      opened = raw_format.open_raw_split(os.path.join(folder, 'raw'), split, verify=True)
      images, labels = _jpeg_split(os.path.join(folder, 'jpeg'), split)
      np.testing.assert_array_equal(opened.labels, labels)
      self.assertLess(np.abs(opened.images.astype(int) - images.astype(int)).mean(), 3.0)

  def test_official_tars(self):
    folder = files.make_tempdir(self)
    wnids = sorted(set(prepare.imagenet_validation_wnids()[:3]))
    fakes.write_tars(os.path.join(folder, 'tars'), wnids, val_numbers=(1, 2, 3))
    self._assert_twins(os.path.join(folder, 'tars'), folder, image_size=16)

  def test_digits(self):
    self._assert_twins('digits', files.make_tempdir(self), image_size=8)


class PipelineTest(absltest.TestCase):
  """The train gather and the eval pipeline on a raw dataset: its JPEG twin's images, within
  JPEG error."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = files.make_tempdir()
    _image_folder(os.path.join(cls.root, 'src'))
    for storage in ('raw', 'jpeg'):
      prepare.prepare(os.path.join(cls.root, 'src'), os.path.join(cls.root, storage),
                      image_size=SIZE, progress=False, storage=storage)

  def _data_config(self, storage: str, workers: int):
    data = imagenet.get_config().data
    data.dir = os.path.join(self.root, storage)
    data.image_size, data.crop_size = SIZE, 16
    data.num_threads, data.worker_count = 1, workers
    return data

  def test_train_batches_are_the_jpeg_twins_images(self):
    # Training on raw takes the batch-level gather, whose draws are its own (docs/design.md,
    # "Augmentation"): each element is the JPEG twin's image at the index drawn for it.
    images, labels = _jpeg_split(os.path.join(self.root, 'jpeg'), 'train')
    order = batch_sampler.TrainSampler(
        num_records=len(labels), global_batch_size=4, image_size=SIZE, crop_size=16, flip=True,
        lighting_std=0.1, eigvals=np.ones(3), eigvecs=np.eye(3), seed=3)
    with input_pipeline.create_train_iterator(self._data_config('raw', 1),
                                              global_batch_size=4, seed=3) as raw:
      for k in range(4):  # past the end of the 6-image epoch
        batch, index = next(raw), order.indices(k)
        np.testing.assert_array_equal(batch['label'], labels[index])
        want = np.stack([images[i, t:t + 16, l:l + 16] for i, (t, l) in zip(index, batch['crop'])])
        self.assertLess(np.abs(batch['image'].astype(int) - want.astype(int)).mean(), 3.0)

  def test_eval_batches_match_the_jpeg_dataset(self):
    batches = [list(input_pipeline.create_eval_iterator(self._data_config(storage, 0),
                                                        global_batch_size=4, crops=10))
               for storage in ('raw', 'jpeg')]
    self.assertLen(batches[0], 1)
    a, b = batches[0][0], batches[1][0]
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['mask'], [True, True, False, False])
    self.assertEqual(a['image'].shape, (4, 10, 16, 16, 3))
    self.assertLess(np.abs(a['image'].astype(int) - b['image'].astype(int)).mean(), 3.0)


class SizeAndResumeTest(absltest.TestCase):

  def test_states_the_size_and_refuses_a_disk_without_room(self):
    output = os.path.join(files.make_tempdir(self), 'out')
    stderr = io.StringIO()
    free = mock.Mock(free=1_000_000)
    # needed: every image, plus the largest part (512 images) while the parts are joined:
    # (1797 + 512) * 14 * 14 * 3 = 1,357,692 bytes; the dataset itself 1,056,636.
    with mock.patch.object(raw_storage.shutil, 'disk_usage', return_value=free), \
        contextlib.redirect_stderr(stderr), \
        self.assertRaisesRegex(errors.InputError, rf'^{output} needs 1.36 MB for the raw '
                               'pixels of 1,797 images at 14x14 but its disk .* has 1.00 MB '
                               'free; .*--format=jpeg') as caught:
      prepare.prepare('digits', output, image_size=14, storage='raw')
    self.assertNotIn('\n', str(caught.exception))
    self.assertIn('1,797 images of 14x14x3 bytes, 1.06 MB', stderr.getvalue())
    self.assertFalse(os.path.exists(output))  # nothing written

  def test_a_join_the_disk_corrupts_is_refused_by_the_read_back(self):
    output = os.path.join(files.make_tempdir(self), 'out')
    real = raw_storage._append

    def append_then_corrupt(out, *args):
      real(out, *args)
      out.flush()
      with open(out.name, 'r+b') as f:  # what a bad disk does after the write
        f.seek(10)
        f.write(bytes(255 - b for b in f.read(2)))

    with mock.patch.object(raw_storage, '_append', append_then_corrupt), \
        self.assertRaisesRegex(errors.UserError, r'train.u8.tmp: images 0..1432 differ from '
                               'what was written'):
      prepare.prepare('digits', output, image_size=8, progress=False, storage='raw')
    self.assertFalse(os.path.exists(os.path.join(output, 'dataset.json')))

  def test_an_interrupted_join_resumes_to_the_same_files(self):
    folder = files.make_tempdir(self)
    clean, resumed = os.path.join(folder, 'clean'), os.path.join(folder, 'resumed')
    prepare.prepare('digits', clean, image_size=8, progress=False, storage='raw')
    real, calls = raw_storage._append, []

    def append_then_stop(*args):
      calls.append(args[1])
      if len(calls) == 2:  # the train split has 3 parts: stop after the first is joined
        raise KeyboardInterrupt
      real(*args)

    with mock.patch.object(raw_storage, '_append', append_then_stop), \
        self.assertRaises(errors.Interrupted):
      prepare.prepare('digits', resumed, image_size=8, progress=False, storage='raw')
    self.assertFalse(os.path.exists(calls[0]))  # the joined part's file is gone
    prepare.prepare('digits', resumed, image_size=8, progress=False, storage='raw')
    for name in ('train.u8', 'val.u8', 'train.labels.npy', 'stats.npz'):
      with open(os.path.join(clean, name), 'rb') as a, open(os.path.join(resumed, name), 'rb') as b:
        self.assertEqual(a.read(), b.read(), name)
    with open(os.path.join(clean, 'dataset.json')) as a, \
        open(os.path.join(resumed, 'dataset.json')) as b:
      self.assertEqual(json.load(a)['raw'], json.load(b)['raw'])


if __name__ == '__main__':
  absltest.main()
