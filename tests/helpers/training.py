"""The tiny training runs most tests share: the digits set, the tiny config and its config
file, launch.py runs, in-process runs on some of the test devices, and what a run leaves
(metrics.jsonl, the parameters of its newest checkpoint)."""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import flax.linen as nn
import jax
import ml_collections

from alexnet_jax import prepare
from alexnet_jax.learning import experiment
from alexnet_jax.learning import optim
from alexnet_jax.learning import step_fns
from alexnet_jax.training import trainer
from configs import imagenet
from tests.helpers import REPO
from tests.helpers import subprocesses

_DATA = {}


def digits_dir() -> str:
  """The real digits set, prepared once per test run at the quickstart's image size."""
  if 'dir' not in _DATA:
    _DATA['tmp'] = tempfile.TemporaryDirectory()
    path = os.path.join(_DATA['tmp'].name, 'digits')
    prepare.prepare('digits', path, image_size=72, progress=False)
    _DATA['dir'] = path
  return _DATA['dir']


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A two-tower AlexNet at 1/8 width on 64-px crops: a train step takes milliseconds."""
  config = imagenet.get_config()
  config.batch_size = 16
  config.num_epochs = 1
  config.num_train_steps = 6
  config.final_eval_crops = 10
  config.mesh.data = -1  # all eight test devices (tests/__init__.py), 2 images each
  config.mesh.model = 1
  config.model.num_classes = 10
  config.model.width = 0.125
  config.model.init_scheme = 'he'
  config.model.input_scale = 1 / 64
  config.model.dtype = 'float32'
  config.data.dir = data_dir
  config.data.image_size = 72
  config.data.crop_size = 64
  config.data.flip = True
  config.data.num_threads = 1
  config.optim.schedule = 'constant'
  config.checkpoint.every_steps = 3
  config.log.every_steps = 1
  config.log.tensorboard = False
  config.log.progress = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def read_metrics(workdir: str, *, while_running: bool = False) -> list[dict]:
  """The records of `workdir`'s metrics.jsonl.

  With `while_running`, the run may still be appending to it (or was killed mid-line): no
  file yet is no records, and a last line without its newline is skipped.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not while_running:
    with open(path) as f:
      return [json.loads(line) for line in f]
  try:
    with open(path) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return []
  return [json.loads(line) for line in lines if line.endswith('\n')]


def write_config_file(path: str, config: ml_collections.ConfigDict) -> str:
  """A config file launch.py can load, holding exactly `config`."""
  with open(path, 'w') as f:
    f.write('import json\nimport ml_collections\n\n'
            'def get_config():\n'
            f'  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n')
  return path


def run_launch(config_file: str, workdir: str, *args: str, timeout: float = 300,
               wait: bool = True):
  """launch.py on `config_file`: its CompletedProcess, or with wait=False the running Popen
  (stdout and stderr piped, as text)."""
  cmd = [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={config_file}',
         f'--workdir={workdir}', *args]
  # The same eight devices as the in-process runs, so that results compare bitwise.
  env = subprocesses.launch_env(8)
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(config: ml_collections.ConfigDict, workdir: str):
  """Params of the newest checkpoint in `workdir`, restored on one device."""
  from alexnet_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  model = experiment.create_model(config, 10)
  optimizer = optim.create_optimizer(config.optim)
  shapes = jax.eval_shape(lambda r: step_fns.init_state(model, optimizer, r, 64),
                          jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nn.unbox(shapes))
  ckpt = checkpointing.Checkpointer.from_config(workdir, config.checkpoint)
  try:
    state, meta = ckpt.restore(abstract)
  finally:
    ckpt.close()
  return state, meta


def train_on_devices(config: ml_collections.ConfigDict, workdir: str, num_devices: int
                     ) -> experiment.Experiment:
  """train_and_evaluate on the first `num_devices` of the eight test devices (as if only
  those were visible); returns the Experiment the run set up: its mesh and shardings."""
  real_create_mesh, real_setup = experiment.create_mesh, experiment.setup
  seen = []

  def create_mesh(config, devices=None, mesh_config=None):
    devices = jax.devices()[:num_devices] if devices is None else devices
    return real_create_mesh(config, devices, mesh_config)

  def setup(*args, **kwargs):
    seen.append(real_setup(*args, **kwargs))
    return seen[-1]

  with mock.patch.object(experiment, 'create_mesh', create_mesh), \
      mock.patch.object(experiment, 'setup', setup):
    trainer.train_and_evaluate(config, workdir)
  assert len(seen) == 1, seen
  return seen[0]
