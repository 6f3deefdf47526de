"""A dataset of one class is refused in one line before training (its loss would be 0 at once)."""

import os

from absl.testing import absltest
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.training import trainer
from tests import fakes
from tests import trained_run


class OneClassTest(absltest.TestCase):

  def test_training_refuses_a_one_class_dataset_before_writing_a_checkpoint(self):
    root = self.create_tempdir().full_path
    fakes.write_image_folder(os.path.join(root, 'src'), ['only'], 4, 2,
                             np.random.default_rng(0))
    data = os.path.join(root, 'data')
    prepare.prepare(os.path.join(root, 'src'), data, image_size=72)
    self.assertEqual(input_pipeline.load_info(
        trained_run.tiny_config(data).data).num_classes, 1)
    workdir = os.path.join(root, 'run')
    with self.assertRaisesRegex(errors.InputError,
                                f'the dataset in {data} has 1 class \\(only\\): a classifier '
                                'needs two or more'):
      trainer.train_and_evaluate(trained_run.tiny_config(data), workdir)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))


if __name__ == '__main__':
  absltest.main()
