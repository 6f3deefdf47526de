"""A data.dir that is not a finished preparation: the message says what is actually wrong.

Also: no file of a prepared folder is opened unless it is a regular file (a FIFO in
place of dataset.json would block the read forever).
"""

import json
import os
import threading

from absl.testing import absltest
import ml_collections

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.data import sources

SHARD = 'train.array_record-00000-of-00001'


def _write_description(folder: str, **changes) -> None:
  description = dict(format=prepared_format.FORMAT, complete=True, image_size=72,
                     shards={'train': [[SHARD, 3]], 'val': []})
  description.update(changes)
  with open(os.path.join(folder, prepared_format.DATASET_FILE), 'w') as f:
    json.dump(description, f)


def _touch(folder: str, *names: str) -> None:
  for name in names:
    open(os.path.join(folder, name), 'w').close()


class WhatIsMissingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path

  def refusal(self) -> str:
    """The line PreparedSource refuses the folder with."""
    config = ml_collections.ConfigDict(dict(source='prepared', dir=self.folder, image_size=72))
    with self.assertRaises(errors.MissingInputError) as caught:
      sources.create_source(config).info()
    return str(caught.exception)

  def test_nothing_prepared(self):
    self.assertEqual(prepared_format.what_is_missing(self.folder), 'no finished dataset.json')
    self.assertIn('(no finished dataset.json)', self.refusal())

  def test_another_format(self):
    _write_description(self.folder, format='tfds/imagenet')
    _touch(self.folder, SHARD, prepared_format.STATS_FILE)
    self.assertIn("dataset.json is of format 'tfds/imagenet', not 'alexnet_jax.prepared/1'",
                  self.refusal())

  def test_an_unfinished_preparation(self):
    _write_description(self.folder, complete=False)
    self.assertIn('dataset.json is not marked complete', self.refusal())

  def test_a_missing_statistics_file(self):
    _write_description(self.folder)
    _touch(self.folder, SHARD)
    self.assertIn('the statistics file stats.npz that dataset.json lists is missing',
                  self.refusal())

  def test_a_missing_shard(self):
    _write_description(self.folder)
    _touch(self.folder, prepared_format.STATS_FILE)
    self.assertIn(f'the shard {SHARD} that dataset.json lists is missing', self.refusal())

  def test_json_of_the_wrong_shape(self):
    with open(os.path.join(self.folder, prepared_format.DATASET_FILE), 'w') as f:
      f.write('[1, 2]')
    self.assertIn('dataset.json holds a JSON list, not an object', self.refusal())
    _write_description(self.folder, shards=7)
    self.assertIn('dataset.json lists no shards', self.refusal())

  def test_non_utf8_bytes(self):
    with open(os.path.join(self.folder, prepared_format.DATASET_FILE), 'wb') as f:
      f.write(b'\xff\xfe{')
    self.assertIn('dataset.json cannot be read', self.refusal())

  def test_a_fifo_is_refused_without_opening_it(self):
    _write_description(self.folder)
    _touch(self.folder, SHARD)
    os.mkfifo(os.path.join(self.folder, prepared_format.STATS_FILE))
    fifo_json = self.create_tempdir().full_path
    os.mkfifo(os.path.join(fifo_json, prepared_format.DATASET_FILE))
    answers = {}
    # A thread, so that a planted open() of the FIFO fails the test instead of hanging it.
    worker = threading.Thread(target=lambda: answers.update(
        stats=prepared_format.what_is_missing(self.folder),
        json=prepared_format.what_is_missing(fifo_json)), daemon=True)
    worker.start()
    worker.join(20)
    self.assertFalse(worker.is_alive(), 'reading a FIFO blocked')
    self.assertEqual(answers['stats'],
                     'the statistics file stats.npz that dataset.json lists is not a regular file')
    self.assertEqual(answers['json'], 'dataset.json is not a regular file')

  def test_a_complete_folder(self):
    _write_description(self.folder)
    _touch(self.folder, SHARD, prepared_format.STATS_FILE)
    self.assertEqual(prepared_format.what_is_missing(self.folder), '')
    self.assertTrue(prepared_format.is_complete(self.folder))


if __name__ == '__main__':
  absltest.main()
