"""One tiny trained workdir for the predict and plot tests, made once per test process.

The real digits set at the quickstart's image size, a two-tower AlexNet at 1/8
width split over the `model` axis (so predict restores a sharded checkpoint onto
one device), four steps with checkpoints at steps 2 and 4.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile

from absl import logging
import ml_collections

from alexnet_jax.training import trainer
from configs import digits

STEPS = 4
CHECKPOINT_EVERY = 2


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
  config = digits.get_config()
  config.batch_size = 16
  config.num_train_steps = STEPS
  config.final_eval_crops = 1
  config.mesh.data = -1  # with model=2: four pairs of the eight test devices
  config.mesh.model = 2
  config.model.width = 0.125  # conv widths 12, 32, 48, 48, 32; fc 512
  config.model.dtype = 'float32'
  config.data.dir = data_dir
  config.data.num_threads = 1
  config.checkpoint.every_steps = CHECKPOINT_EVERY
  config.log.every_steps = 2
  config.log.tensorboard = False
  config.log.progress = False
  return config


@functools.cache
def workdir() -> str:
  """The trained workdir; its dataset is in the sibling folder `data`."""
  root = tempfile.mkdtemp(prefix='alexnet_trained_run_')
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  path = os.path.join(root, 'run')
  logging.info('Training the shared tiny run in %s', path)
  trainer.train_and_evaluate(tiny_config(os.path.join(root, 'data')), path)
  return path


def copy_workdir(destination: str, **data_overrides) -> str:
  """A copy of the trained workdir whose stored config.data has `data_overrides` applied."""
  target = os.path.join(destination, 'run_copy')
  shutil.copytree(workdir(), target)
  path = os.path.join(target, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config['data'].update(data_overrides)
  with open(path, 'w') as f:
    json.dump(config, f)
  return target
