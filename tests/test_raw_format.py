"""The raw storage's reader: the mapped pixels and labels, and each check of open_raw_split.

The files are written here by hand (numpy's tofile, zlib's CRC-32 over the bytes
as laid out), not by prepare, so the reader is checked against the layout itself.
"""

import json
import os
import pickle
import zlib

from absl.testing import absltest
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.data import raw_format
from tests.helpers import files

SIZE = 8


def _write_raw(folder: str, images: dict, labels: dict, chunk: int = 2, **fields) -> dict:
  """A raw dataset in `folder` with the given (N, S, S, 3) uint8 images per split."""
  entries = {}
  for split, pixels in images.items():
    pixels.tofile(os.path.join(folder, f'{split}.u8'))
    np.save(os.path.join(folder, f'{split}.labels.npy'), labels[split].astype(np.int32))
    raw = pixels.tobytes()
    step = chunk * SIZE * SIZE * 3
    entries[split] = {
        'images': f'{split}.u8', 'labels': f'{split}.labels.npy', 'count': len(pixels),
        'image_size': SIZE, 'chunk_images': chunk,
        'crc32': [zlib.crc32(raw[i:i + step]) for i in range(0, len(raw), step)],
        'labels_crc32': zlib.crc32(labels[split].astype('<i4').tobytes())}
  open(os.path.join(folder, 'stats.npz'), 'wb').close()
  description = {'format': prepared_format.RAW_FORMAT, 'complete': True, 'image_size': SIZE,
                 'source': 'digits', 'raw': entries, 'splits': {k: len(v) for k, v in
                                                                images.items()}}
  description.update(fields)
  with open(os.path.join(folder, 'dataset.json'), 'w') as f:
    json.dump(description, f)
  return description


class RawFormatTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = files.make_tempdir(self)
    rng = np.random.default_rng(0)
    self.images = {'train': rng.integers(0, 256, (5, SIZE, SIZE, 3), np.uint8),
                   'val': rng.integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)}
    self.labels = {'train': np.array([0, 1, 2, 1, 0]), 'val': np.array([2, 0, 1])}
    _write_raw(self.folder, self.images, self.labels)

  def _open(self, split='train', verify=False):
    return raw_format.open_raw_split(self.folder, split, verify=verify)

  def test_maps_the_pixels_and_labels_as_written(self):
    self.assertTrue(raw_format.is_raw(self.folder))
    for split in ('train', 'val'):
      opened = self._open(split, verify=True)
      self.assertIsInstance(opened.images, np.memmap)
      self.assertFalse(opened.images.flags.writeable)
      np.testing.assert_array_equal(opened.images, self.images[split])
      np.testing.assert_array_equal(opened.labels, self.labels[split])
      self.assertEqual(opened.labels.dtype, np.int32)
      self.assertEqual(opened.path, os.path.join(self.folder, f'{split}.u8'))

  def test_a_jpeg_dataset_is_not_raw(self):
    _write_raw(self.folder, self.images, self.labels, format=prepared_format.FORMAT,
               shards={'train': [], 'val': []})
    self.assertFalse(raw_format.is_raw(self.folder))
    with self.assertRaisesRegex(errors.MissingInputError, 'stored as jpeg.*--format=raw'):
      self._open()

  def test_a_file_cut_short_is_one_line_naming_it_and_the_command(self):
    path = os.path.join(self.folder, 'train.u8')
    os.truncate(path, os.path.getsize(path) - 1)
    with self.assertRaisesRegex(errors.InputError,
                                rf'{path} is 959 bytes, not the 960 .*cut short.*'
                                'alexnet_jax.prepare.*--format=raw') as caught:
      self._open()
    self.assertNotIn('\n', str(caught.exception))

  def test_a_checksum_mismatch_is_found_when_verified(self):
    path = os.path.join(self.folder, 'train.u8')
    with open(path, 'r+b') as f:  # one byte of the last (short) chunk: image 4
      f.seek(4 * SIZE * SIZE * 3 + 7)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 1]))
    self._open()  # the cheap checks pass: the size is right
    with self.assertRaisesRegex(errors.InputError,
                                rf'{path}: images 4..4 differ .*checksum.*--format=raw'):
      self._open(verify=True)

  def test_another_image_size_or_version_is_refused(self):
    description = _write_raw(self.folder, self.images, self.labels)
    description['image_size'] = 16
    with open(os.path.join(self.folder, 'dataset.json'), 'w') as f:
      json.dump(description, f)
    with self.assertRaisesRegex(errors.InputError, r'train.u8 holds 8x8 images, not the '
                                'image_size 16.*--image_size=16 --format=raw'):
      self._open()
    _write_raw(self.folder, self.images, self.labels, format='alexnet_jax.prepared-raw/2')
    self.assertFalse(raw_format.is_raw(self.folder))
    with self.assertRaisesRegex(errors.MissingInputError,
                                "raw storage version '2'; this program reads version 1.*"
                                f'--output={self.folder} --format=raw'):
      self._open()

  def test_damaged_labels_are_refused(self):
    np.save(os.path.join(self.folder, 'val.labels.npy'), np.array([2, 0, 0], np.int32))
    with self.assertRaisesRegex(errors.InputError, 'val.labels.npy is not the 3 int32 labels'):
      self._open('val')

  def test_records_pickle_without_their_pixels_and_map_again(self):
    records = raw_format.RawRecords(self.folder, 'train', 5)
    image, label = records[3]
    np.testing.assert_array_equal(image, self.images['train'][3])
    self.assertEqual(label, 1)
    data = pickle.dumps(records)
    self.assertLess(len(data), 500)  # the folder and split, not 960 bytes of pixels
    again = pickle.loads(data)
    self.assertEqual(len(again), 5)
    np.testing.assert_array_equal(again[4][0], self.images['train'][4])


if __name__ == '__main__':
  absltest.main()
