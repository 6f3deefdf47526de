"""The prepared-dataset format: records, the completeness marker and the statistics file."""

import json
import os

from absl.testing import absltest
import numpy as np

from alexnet_jax.data import prepared_format
from tests.helpers import files


def _write_description(folder: str, **fields) -> None:
  description = {'format': prepared_format.FORMAT, 'complete': True,
                 'shards': {'train': [['train.array_record-00000-of-00001', 3]],
                            'val': []}}
  description.update(fields)
  with open(os.path.join(folder, prepared_format.DATASET_FILE), 'w') as f:
    json.dump(description, f)


class RecordTest(absltest.TestCase):

  def test_label_then_image_bytes(self):
    record = prepared_format.encode_record(258, b'\xff\xd8jpeg')
    self.assertEqual(record, b'\x02\x01\x00\x00\xff\xd8jpeg')
    self.assertEqual(prepared_format.decode_record(record), (b'\xff\xd8jpeg', 258))
    self.assertEqual(prepared_format.decode_record(prepared_format.encode_record(-1, b'')),
                     (b'', -1))


class DescriptionTest(absltest.TestCase):

  def test_only_a_complete_description_of_this_format_counts(self):
    folder = files.make_tempdir(self)
    self.assertIsNone(prepared_format.read_dataset_json(folder))
    self.assertIsNone(prepared_format.read_dataset_json(os.path.join(folder, 'absent')))
    with open(os.path.join(folder, prepared_format.DATASET_FILE), 'w') as f:
      f.write('{"format": ')  # Half written.
    self.assertIsNone(prepared_format.read_dataset_json(folder))
    _write_description(folder, complete=False)
    self.assertIsNone(prepared_format.read_dataset_json(folder))
    _write_description(folder, format='something/2')
    self.assertIsNone(prepared_format.read_dataset_json(folder))
    _write_description(folder)
    self.assertEqual(prepared_format.read_dataset_json(folder)['format'],
                     prepared_format.FORMAT)

  def test_complete_needs_the_stats_and_every_shard(self):
    folder = files.make_tempdir(self)
    _write_description(folder)
    self.assertFalse(prepared_format.is_complete(folder))
    open(os.path.join(folder, 'train.array_record-00000-of-00001'), 'w').close()
    self.assertFalse(prepared_format.is_complete(folder))
    open(os.path.join(folder, prepared_format.STATS_FILE), 'w').close()
    self.assertTrue(prepared_format.is_complete(folder))


class StatsTest(absltest.TestCase):

  def test_write_then_read(self):
    path = os.path.join(files.make_tempdir(self), prepared_format.STATS_FILE)
    rng = np.random.default_rng(0)
    mean_image = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    eigvals = np.float32([0.2, 0.02, 0.005])
    eigvecs = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
    prepared_format.write_stats(path, {'mean_image': mean_image, 'eigvals': eigvals,
                                      'eigvecs': eigvecs, 'count': np.int64(7)})
    got = prepared_format.read_stats(path)
    for want, array in zip((mean_image, eigvals, eigvecs), got):
      self.assertEqual(array.dtype, np.float32)
      np.testing.assert_array_equal(array, want)
    self.assertEqual(os.listdir(os.path.dirname(path)), [prepared_format.STATS_FILE])

  def test_tfds_stats_file_names_the_image_size(self):
    self.assertEqual(prepared_format.tfds_stats_file('/data', 256),
                     '/data/alexnet_jax_stats_256.npz')


if __name__ == '__main__':
  absltest.main()
