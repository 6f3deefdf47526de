"""A tiny AlexNet and its run, under any mesh: shared by the sharding and multi-process tests.

Run as a script it is one process of tests/test_multihost.py:

  python -m tests.tiny_training --coordinator=127.0.0.1:PORT --num_processes=2 \
      --process_id=I --out=DIR
  python -m tests.tiny_training --num_processes=1 --local_devices=2 --out=DIR

Each process joins the run (`startup.init_distributed`, as launch.py does),
agrees on the config (`agreement.agree`), and trains a few steps of the
project's own run on tiny shapes: `experiment.setup` (the shipped sharding
rules, the model and optimizer of the config) and its jitted
`step_fns.train_step`, under a data-parallel and a model-parallel mesh over all
devices of the run, each process feeding only its slice of every batch
(`placement.data_shard`). Process 0 writes the final parameters to
DIR/<mesh name>.npz. The second form is the same run in one process with two
devices.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from alexnet_jax.config import resolution
from alexnet_jax.data import input_pipeline
from alexnet_jax.distributed import agreement
from alexnet_jax.distributed import startup
from alexnet_jax.model import alexnet
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.learning import experiment
from alexnet_jax.learning import optim
from configs import imagenet

# Width 0.125 gives conv widths 12/32/48/48/32 and fc 512, all even; 67-pixel
# inputs with conv1 padding 0 give a 1x1 pool5, the smallest valid network.
MODEL = dict(num_classes=10, width=0.125, conv1_padding=0, towers=2)
IMAGE = 67
BATCH = 8
OPTIM = dict(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, decay_bias=True,
             schedule='constant')
# The shipped configs' rules (configs/imagenet.py), as every run uses them.
RULES = meshes.logical_rules(imagenet.get_config())
# Meshes the two-process run trains under, each spanning both processes.
MULTIHOST_MESHES = {'data_parallel': (2, 1), 'model_parallel': (1, 2)}
# The run of the multi-process test: a crop of 67 pixels from 72-pixel images.
RUN_IMAGE, RUN_CROP = 72, IMAGE


def request_cpu_devices(n: int) -> None:
  """Asks JAX for `n` CPU devices; only works before JAX starts its backend."""
  if jax.config.jax_num_cpu_devices < n:
    try:
      jax.config.update('jax_num_cpu_devices', n)
    except RuntimeError:
      pass  # already started: the tests check jax.device_count() themselves


def create_model() -> alexnet.AlexNet:
  return alexnet.AlexNet(**MODEL)


def create_optimizer() -> optax.GradientTransformation:
  return optim.create_optimizer(OPTIM)


def init_state(rng: jax.Array) -> dict[str, Any]:
  """Params as flax boxes (logical names) and plain optimizer state, as the trainer builds them."""
  params = create_model().init(rng, np.zeros((1, IMAGE, IMAGE, 3), np.float32))['params']
  return {'params': params, 'opt_state': create_optimizer().init(nn.unbox(params))}


def global_batch(step: int) -> dict[str, np.ndarray]:
  """Float images and labels: the input of the model itself (the sharding tests)."""
  rng = np.random.RandomState(step)
  return {'image': rng.randn(BATCH, IMAGE, IMAGE, 3).astype(np.float32),
          'label': rng.randint(0, MODEL['num_classes'], BATCH).astype(np.int32)}


# ----------------------------------------------------------------------------- the real run


def run_config(data: int, model: int) -> ml_collections.ConfigDict:
  """The shipped config, resolved as launch.py resolves it, at MODEL's tiny shapes."""
  config = imagenet.get_config()
  config.batch_size = BATCH
  config.mesh.data, config.mesh.model = data, model
  config.model.update(MODEL)
  config.model.dtype = 'float32'
  config.data.image_size, config.data.crop_size = RUN_IMAGE, RUN_CROP
  config.data.num_threads = 1
  config.optim.update(OPTIM)
  return resolution.load(config)


def dataset_info() -> input_pipeline.DatasetInfo:
  """What a prepared dataset says of itself, made up: the mean image and the PCA lighting."""
  rng = np.random.default_rng(0)
  names = tuple(f'class{i}' for i in range(MODEL['num_classes']))
  return input_pipeline.DatasetInfo(
      num_classes=MODEL['num_classes'], class_names=names, class_descriptions=names,
      split_sizes={'train': 64, 'val': 16}, image_size=RUN_IMAGE,
      mean_image=rng.uniform(0, 255, (RUN_IMAGE, RUN_IMAGE, 3)).astype(np.float32),
      eigvals=np.array([0.2, 0.02, 0.005], np.float32), eigvecs=np.eye(3, dtype=np.float32),
      stats_source='test')


def train_batch(step: int) -> dict[str, np.ndarray]:
  """The global batch of `step` as the input pipeline delivers it: uint8 images, crop
  offsets, flips and lighting noise."""
  rng = np.random.default_rng(step)
  return {'image': rng.integers(0, 256, (BATCH, RUN_IMAGE, RUN_IMAGE, 3), dtype=np.uint8),
          'crop': rng.integers(0, RUN_IMAGE - RUN_CROP + 1, (BATCH, 2)).astype(np.int32),
          'flip': rng.integers(0, 2, BATCH).astype(bool),
          'lighting': rng.normal(0, 5, (BATCH, 3)).astype(np.float32),
          'label': rng.integers(0, MODEL['num_classes'], BATCH).astype(np.int32)}


def local_slice(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """The rows of `batch` this process feeds (placement.data_shard)."""
  index, count = placement.data_shard(mesh)
  rows = BATCH // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}


def train(data: int, model: int, steps: int) -> dict[str, np.ndarray]:
  """The run's first `steps` steps from seed 0 on this process's slices; the final params."""
  config = run_config(data, model)
  agreement.agree('config', config.to_dict())
  mesh = experiment.create_mesh(config)  # every device of the run
  exp = experiment.setup(config, dataset_info(), mesh=mesh)
  with meshes.use_mesh(mesh, exp.rules):  # as the trainer's loop runs it
    state = exp.init_state(jax.random.key(config.seed))
    step_fn = exp.train_step()
    dropout_rng = jax.device_put(jax.random.key(100), placement.replicated(mesh))
    for step in range(steps):
      batch = placement.make_global_batch(local_slice(train_batch(step), mesh), mesh)
      state, _ = step_fn(state, batch, dropout_rng)
  gathered = multihost_utils.process_allgather(state.params, tiled=True)
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(gathered)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--coordinator')
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--local_devices', type=int, default=1)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()
  # tests/__init__.py asks for eight CPU devices; a worker has its own count.
  jax.config.update('jax_num_cpu_devices', args.local_devices)
  startup.init_distributed(args.coordinator, args.num_processes, args.process_id)
  for name, (data, model) in MULTIHOST_MESHES.items():
    params = train(data, model, args.steps)
    if jax.process_index() == 0:
      np.savez(os.path.join(args.out, f'{name}.npz'), **params)
  startup.sync_hosts('results written')


if __name__ == '__main__':
  main()
