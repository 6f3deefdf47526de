"""A new run's first parameters from another run's checkpoint: config.init_from=WORKDIR[:STEP].

  source = init_from.find_source(config, workdir)   # checked before any work; None: not used
  plan = init_from.plan_layers(source, config)        # which layers load, which start fresh
  state = init_from.start_from(source, plan, exp, fresh_state)

Any run this project writes is a source: its stored config says which network its
checkpoint holds, and the checkpoint is read as every restore reads one (read-only,
its arrays compared with their stored checksums) straight into this run's parameter
shardings. Every layer whose shapes match is loaded. fc8 starts fresh, by the
model's init scheme, where the class counts differ; any other difference of shape
is refused in one line naming the layer and both shapes. The optimizer state, the
step and the data order start fresh (step 0, batch 0) whatever the source had.

A workdir that already has checkpoints resumes from them: config.init_from is then
not used (one log line says so), and a change of it is refused like a change of
the seed (config/resume_changes.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.evaluation import finished_run
from alexnet_jax.learning import experiment
from alexnet_jax.learning import step_fns
from alexnet_jax.model import alexnet
from alexnet_jax.storage import checkpointing

# The output layer: the one layer whose shape may differ (its width is the class count).
OUTPUT_LAYER = 'fc8'


@dataclasses.dataclass(frozen=True)
class Source:
  """The checkpoint a new run starts from."""
  workdir: str  # absolute
  step: int
  config: ml_collections.ConfigDict  # the source run's stored config


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  loaded: tuple[str, ...]  # layers read from the source, in the network's order
  fresh: tuple[str, ...]  # layers initialised by this run's init scheme


def _same_folder(a: str, b: str) -> bool:
  if os.path.exists(a) and os.path.exists(b):
    return os.path.samefile(a, b)
  return os.path.realpath(a) == os.path.realpath(b)


def find_source(config: ml_collections.ConfigDict, workdir: str) -> Source | None:
  """The checkpoint config.init_from names, or None when it is '' or the workdir resumes.

  Raises a one-line user error for the new run's own workdir, a missing workdir, a
  folder that is not a run's, one without finished checkpoints and a STEP it lacks
  ('best' included, where no checkpoint has a validation error).
  """
  text = config.get('init_from', '')
  if not text:
    return None
  own = checkpointing.finished_steps(workdir)
  if own:
    logging.warning('config.init_from=%s is not used: %s has checkpoints (newest: step %d), '
                    'so the run resumes from its own.', text, workdir, own[-1])
    return None
  path, step = resolution.parse_init_from(text)
  path = os.path.abspath(path)
  if _same_folder(path, workdir):
    raise errors.InputError(f'config.init_from={text} names this run\'s own workdir {workdir}: '
                            'give the workdir of another run')
  try:
    if not os.path.isdir(path):
      raise errors.MissingInputError(f'workdir {path} does not exist')
    source_config = finished_run.load_config(path)
    return Source(path, finished_run.choose_step(path, source_config, step), source_config)
  except errors.UserError as e:
    raise type(e)(f'config.init_from={text}: {e}') from e


def _param_shapes(config: ml_collections.ConfigDict) -> dict[str, dict[str, tuple[int, ...]]]:
  """Layer -> parameter -> shape of the network `config` builds (traced, nothing allocated)."""
  model = alexnet.from_config(config.model)
  crop = config.data.crop_size
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32))
  return {layer: {name: tuple(x.shape) for name, x in params.items()}
          for layer, params in nn.unbox(shapes['params']).items()}


def plan_layers(source: Source, config: ml_collections.ConfigDict) -> LayerPlan:
  """Which layers of this run's network load from `source` and which start fresh.

  Compared from the two configs alone, before any data or checkpoint is read.
  Raises errors.InputError naming the first layer whose shapes differ (other than
  fc8's class count) or that one network lacks.
  """
  theirs, ours = _param_shapes(source.config), _param_shapes(config)
  if set(theirs) != set(ours):
    raise errors.InputError(
        f'config.init_from: the network of {source.workdir} has layers {sorted(theirs)}, this '
        f'run\'s {sorted(ours)}')
  loaded, fresh = [], []
  for layer, shapes in ours.items():
    if theirs[layer] == shapes:
      loaded.append(layer)
      continue
    if layer == OUTPUT_LAYER and theirs[layer]['kernel'][0] == shapes['kernel'][0]:
      fresh.append(layer)  # the class count alone differs
      continue
    # The kernel first: its shape shows the widths and the towers.
    name = next(n for n in sorted(shapes, key=lambda n: n != 'kernel')
                if theirs[layer].get(n) != shapes[n])
    raise errors.InputError(
        f'config.init_from: layer {layer} ({name}) is {_shape(theirs[layer].get(name))} in '
        f'{source.workdir} but {_shape(shapes[name])} in this run\'s network: only fc8 may '
        'differ (its class count); the other model fields (towers, width, conv_widths, '
        'conv1_padding, pool_size, pool_stride, crop_size) must match the source run\'s')
  return LayerPlan(tuple(loaded), tuple(fresh))


def _shape(shape: tuple[int, ...] | None) -> str:
  return 'absent' if shape is None else str(shape)


def _source_target(source: Source, exp: experiment.Experiment, plan: LayerPlan) -> Any:
  """The restore target of the source's train state under this run's mesh and rules.

  The loaded layers get exactly this run's parameter shardings, so the arrays read
  are the train state's own; the rest of the source state (its optimizer state, a
  fc8 of another width) is placed by the same rules and then dropped.
  """
  config = ml_collections.ConfigDict(source.config.to_dict())
  config.mesh = exp.config.mesh
  target = experiment.setup(config, mesh=exp.mesh).abstract_state
  ours = exp.state_shardings.params

  def place(layer: str, tree: Any) -> Any:
    if layer not in plan.loaded:
      return tree
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        ours[layer])

  return target.replace(params={k: place(k, v) for k, v in target.params.items()})


def start_from(source: Source, plan: LayerPlan, exp: experiment.Experiment,
               fresh: step_fns.TrainState) -> step_fns.TrainState:
  """`fresh` (step 0, new optimizer state) with the layers of `plan.loaded` read from `source`.

  The source checkpoint is verified against its checksums as any restore; one that
  fails to read raises checkpointing.CheckpointError naming it.
  """
  restored, _ = finished_run.restore_state(source.workdir, source.config, source.step,
                                           _source_target(source, exp, plan))
  params = {layer: restored.params[layer] if layer in plan.loaded else value
            for layer, value in fresh.params.items()}
  logging.info('%s', describe(source, plan, exp.config))
  return fresh.replace(params=params)


def describe(source: Source, plan: LayerPlan, config: ml_collections.ConfigDict) -> str:
  """The log line of a start from `source`: which layers were loaded, which are fresh."""
  fresh = (f'; fresh ({config.model.init_scheme} init): {", ".join(plan.fresh)} '
           f'({source.config.model.num_classes} classes there, {config.model.num_classes} here)'
           if plan.fresh else '; no layer fresh')
  return (f'Starting from the parameters of {source.workdir}, checkpoint step {source.step}: '
          f'loaded {", ".join(plan.loaded)}{fresh}. The optimizer state, the step and the data '
          'order start fresh.')
