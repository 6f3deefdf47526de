"""Workdirs of finished runs made without training: a config.json and checkpoints of given
weights, for the tests that start a new run from another run's parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.model import alexnet
from alexnet_jax.learning import optim
from alexnet_jax.learning import step_fns
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import workdir_files


def write_source_run(config: ml_collections.ConfigDict, workdir: str,
                     val_errors: dict[int, float], seed: int = 7) -> dict[int, step_fns.TrainState]:
  """WORKDIR holding `config` and one checkpoint per step of `val_errors` (its val error).

  Each step's weights are the model's own init (key `seed`) plus N(0, 0.01^2) noise drawn
  per step, so no weight is exactly zero and no two checkpoints are equal. Returns the
  saved states by step, as numpy.
  """
  config = resolution.load(config)
  model = alexnet.from_config(config.model)
  optimizer = optim.create_optimizer(config.optim)
  crop = config.data.crop_size
  state = jax.jit(lambda r: nn.unbox(step_fns.init_state(model, optimizer, r, crop)))(
      jax.random.key(seed))
  workdir_files.prepare_workdir(workdir)
  workdir_files.save_config(workdir, config)
  saved = {}
  with checkpointing.Checkpointer.from_config(workdir, config.checkpoint) as ckpt:
    for step, error in sorted(val_errors.items()):
      rng = np.random.default_rng(seed * 1000 + step)
      params = jax.tree.map(
          lambda x: x + jnp.asarray(rng.normal(0, 0.01, x.shape), x.dtype), state.params)
      at_step = state.replace(step=jnp.asarray(step, jnp.int32), params=params)
      ckpt.save(step, at_step, meta={'step': step, 'plateau': None}, val_error=error,
                force=True)
      saved[step] = jax.device_get(at_step)
  return saved
