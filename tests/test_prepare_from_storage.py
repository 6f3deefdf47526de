"""config.data.storage: the storage launch's automatic preparation (data.prepare_from) writes.

The digits quick start, shrunk, is trained twice through train_and_evaluate, each run
preparing its own dataset from the real digits scans: once as JPEG shards, once as raw
pixels read by the gather. Both must learn (val top-1 error far below chance) and end
within a few points of each other: the two storages hold the same pixels up to JPEG
error, and the batches are drawn by the same sampler.
"""

import json
import os
import shutil
import tempfile
import time

from absl import logging
from absl.testing import absltest
import ml_collections

from alexnet_jax import prepare
from alexnet_jax.config import resolution
from alexnet_jax.config import resume_changes
from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.training import dry_run
from alexnet_jax.training import trainer
from configs import digits
from configs import imagenet
from tests.helpers import training

STEPS = 120
CHANCE = 0.9  # ten classes
# Far from chance: an input path that scrambles images or labels stays near 0.9.
LEARNED = 0.35
# Same data up to JPEG error, same sampler; what is left is float order and the JPEG
# rounding, which move the error of ~360 validation images by a few of them.
TOLERANCE = 0.06


def setUpModule():
  global ROOT
  ROOT = tempfile.mkdtemp(prefix='test_prepare_from_storage_')


def tearDownModule():
  shutil.rmtree(ROOT, ignore_errors=True)


def _quickstart(storage: str, **overrides) -> ml_collections.ConfigDict:
  """configs/digits.py shrunk to seconds: 1/8 width, STEPS steps, one final 1-crop eval."""
  config = digits.get_config()
  config.data.dir = os.path.join(ROOT, f'digits_{storage}')
  config.data.storage = storage
  config.num_train_steps = STEPS
  config.eval_every_epochs = 1000  # only the final evaluation
  config.mesh.data = 1
  config.mesh.model = 1
  config.model.width = 0.125
  config.model.dtype = 'float32'
  config.data.num_threads = 2
  config.data.worker_count = 0
  config.optim.schedule = 'constant'
  config.checkpoint.every_steps = STEPS
  config.log.every_steps = STEPS
  config.log.tensorboard = False
  config.log.progress = False
  for key, value in overrides.items():
    config.data[key] = value
  return config


def _final_val_error(workdir: str) -> float:
  evals = [r for r in training.read_metrics(workdir) if 'val_top1_err' in r]
  return evals[-1]['val_top1_err']


def _format(folder: str) -> str:
  with open(os.path.join(folder, 'dataset.json')) as f:
    return json.load(f)['format']


class QuickstartStorageTest(absltest.TestCase):

  def test_raw_and_jpeg_quickstarts_learn_to_the_same_error(self):
    errors_by_storage = {}
    for storage in ('jpeg', 'raw'):
      config = _quickstart(storage)
      workdir = os.path.join(ROOT, f'run_{storage}')
      began = time.monotonic()
      training.train_on_devices(config, workdir, 1)
      errors_by_storage[storage] = _final_val_error(workdir)
      logging.info('%s: val top-1 error %.3f in %.1f s', storage, errors_by_storage[storage],
                   time.monotonic() - began)
      # The run prepared its own dataset, in the storage the config names.
      self.assertEqual(input_pipeline.uses_gather(config.data), storage == 'raw')
    print(errors_by_storage)
    for storage, error in errors_by_storage.items():
      self.assertLess(error, LEARNED, f'{storage}: {errors_by_storage}')
    self.assertLess(abs(errors_by_storage['raw'] - errors_by_storage['jpeg']), TOLERANCE,
                    errors_by_storage)


if __name__ == '__main__':
  absltest.main()
