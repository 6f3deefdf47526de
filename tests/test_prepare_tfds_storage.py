"""`prepare --source=tfds` converts nothing, so it has no raw storage to offer."""

import os

from absl.testing import absltest

from alexnet_jax.core import errors
from alexnet_jax.prepare import driver


class TfdsStorageTest(absltest.TestCase):

  def test_raw_storage_of_tfds_is_one_line_and_writes_nothing(self):
    output = os.path.join(self.create_tempdir().full_path, 'tfds')
    with self.assertRaisesRegex(errors.InputError,
                                r'^--source=tfds is read in place as JPEG.*--format=raw'):
      driver.prepare('tfds', output, storage='raw', progress=False)
    self.assertFalse(os.path.exists(output))


if __name__ == '__main__':
  absltest.main()
