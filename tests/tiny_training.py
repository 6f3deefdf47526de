"""A tiny AlexNet trained for a few steps, under any mesh: shared by the sharding tests.

Run as a script it is one process of tests/test_multihost.py:

  python -m tests.tiny_training --coordinator=127.0.0.1:PORT --num_processes=2 \
      --process_id=I --out=DIR
  python -m tests.tiny_training --num_processes=1 --local_devices=2 --out=DIR

Each process joins the run, trains on its own slice of every batch under a
data-parallel and a model-parallel mesh over all devices of the run, and
process 0 writes the final parameters to DIR/<mesh name>.npz. The second form
is the same run in one process with two devices.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np
import optax

from alexnet_jax.model import alexnet
from alexnet_jax.training import optim
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement

# Width 0.125 gives conv widths 12/32/48/48/32 and fc 512, all even; 67-pixel
# inputs with conv1 padding 0 give a 1x1 pool5, the smallest valid network.
MODEL = dict(num_classes=10, width=0.125, conv1_padding=0, towers=2)
IMAGE = 67
BATCH = 8
OPTIM = dict(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, decay_bias=True,
             schedule='constant')
RULES = (('batch', 'data'), ('conv_out', 'model'), ('fc_out', 'model'), ('classes', 'model'),
         ('conv_in', None), ('conv_h', None), ('conv_w', None), ('fc_in', None))
# Meshes the two-process run trains under, each spanning both processes.
MULTIHOST_MESHES = {'data_parallel': (2, 1), 'model_parallel': (1, 2)}


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


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array
               ) -> tuple[dict[str, Any], jax.Array, Any]:
  """One SGD step with dropout; returns (new state, loss, gradients)."""
  model, optimizer = create_model(), create_optimizer()

  def loss_fn(params):
    logits = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return {'params': params, 'opt_state': opt_state}, loss, grads


def global_batch(step: int) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(step)
  return {'image': rng.randn(BATCH, IMAGE, IMAGE, 3).astype(np.float32),
          'label': rng.randint(0, MODEL['num_classes'], BATCH).astype(np.int32)}


def local_slice(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """The rows of `batch` this process feeds (placement.data_shard)."""
  index, count = placement.data_shard(mesh)
  rows = BATCH // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}


def jit_train_step(mesh: jax.sharding.Mesh, state_shardings: Any):
  repl = placement.replicated(mesh)
  param_shardings = state_shardings['params']
  return jax.jit(meshes.bind_mesh(train_step, mesh, RULES),
                 in_shardings=(state_shardings, placement.batch_sharding(mesh), repl),
                 out_shardings=(state_shardings, repl, param_shardings))


def train(mesh: jax.sharding.Mesh, steps: int) -> dict[str, np.ndarray]:
  """Trains `steps` steps from seed 0 on this process's slices; returns the final params."""
  state, state_shardings = placement.create_sharded_state(
      init_state, jax.random.key(0), mesh, RULES)
  step_fn = jit_train_step(mesh, state_shardings)
  for step in range(steps):
    batch = placement.make_global_batch(local_slice(global_batch(step), mesh), mesh)
    state, _, _ = step_fn(state, batch, jax.random.key(100 + step))
  gathered = multihost_utils.process_allgather(state['params'], tiled=True)
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
  meshes.init_distributed(args.coordinator, args.num_processes, args.process_id)
  for name, (data, model) in MULTIHOST_MESHES.items():
    mesh = meshes.create_mesh({'data': data, 'model': model}, model_config=MODEL)
    params = train(mesh, args.steps)
    if jax.process_index() == 0:
      np.savez(os.path.join(args.out, f'{name}.npz'), **params)
  meshes.sync_hosts('results written')


if __name__ == '__main__':
  main()
