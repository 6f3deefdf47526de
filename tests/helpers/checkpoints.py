"""A small train state sharded over two CPU devices, a grain iterator, and the test case
that gives each checkpoint test a mesh and a fresh workdir."""

import os

from absl.testing import parameterized
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax.learning import optim
from alexnet_jax.storage import checkpointing
from tests.helpers import files


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((2,), ('model',), axis_types=(jax.sharding.AxisType.Explicit,))


def optim_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      learning_rate=0.01, momentum=0.9, weight_decay=5e-4, decay_bias=True, schedule='plateau',
      plateau_patience=2, plateau_factor=0.1, plateau_max_drops=3, step_epochs=(30, 60, 80)))


def make_state(mesh, seed: int = 0):
  """A small train state laid out like the trainer's: output features split over 'model'."""
  rng = np.random.default_rng(seed)
  split = lambda x, spec: jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))
  params = {
      'conv1': {'kernel': split(rng.normal(size=(3, 3, 3, 8)).astype(np.float32),
                                P(None, None, None, 'model')),
                'bias': split(rng.normal(size=(8,)).astype(np.float32), P('model'))},
      'fc8': {'kernel': split(rng.normal(size=(6, 4)).astype(np.float32), P(None, 'model')),
              'bias': split(rng.normal(size=(4,)).astype(np.float32), P('model'))},
  }
  opt_state = optim.create_optimizer(optim_config()).init(params)
  # Some velocity, so that the optimizer state is not all zeros.
  opt_state = jax.tree.map(lambda x: x + 0.5 if x.ndim else x, opt_state)
  replicated = NamedSharding(mesh, P())
  return {'step': jax.device_put(jnp.int32(7), replicated), 'params': params,
          'opt_state': jax.device_put(opt_state, jax.tree.map(lambda x: x.sharding, opt_state))}


def make_iterator(seed: int = 3):
  return iter(grain.MapDataset.range(40).seed(seed).shuffle().batch(4).to_iter_dataset())


class CheckpointTestCase(parameterized.TestCase):
  """Each test: a two-device mesh and an empty workdir of its own."""

  def setUp(self):
    super().setUp()
    self.assertGreaterEqual(jax.device_count(), 2, 'needs 2 CPU devices (set in tests/__init__.py)')
    self.mesh = make_mesh()
    self.workdir = files.make_tempdir(self)

  def checkpointer(self, **kwargs) -> checkpointing.Checkpointer:
    ckpt = checkpointing.Checkpointer(os.path.join(self.workdir, 'checkpoints'), **kwargs)
    self.addCleanup(ckpt.close)
    return ckpt
