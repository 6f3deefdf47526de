"""Everything a run is made of before its first step: one setup for train, plan and predict.

  exp = experiment.setup(config, info)           # config from resolution.load
  state = exp.init_state(jax.random.key(seed))   # created where it lives
  train_step, eval_step = exp.train_step(), exp.eval_step()

`setup` builds the mesh, the logical-axis rules, the model (checked against the
dataset's classes), the optimizer, the state's shapes and shardings, and hands
out the jitted steps. Nothing is allocated until `init_state` or a step runs:
the dry run uses the same object to print its plan from shapes alone.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.model import alexnet
from alexnet_jax.learning import optim
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.learning import step_fns


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  config: ml_collections.ConfigDict  # resolved and validated
  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
  rules: meshes.Rules  # config.mesh.rules for this mesh (meshes.rules_for_sizes)
  info: Optional[input_pipeline.DatasetInfo]  # None: the dataset is still to be prepared
  model: alexnet.AlexNet
  optimizer: optax.GradientTransformation
  state_shapes: step_fns.TrainState  # jax.eval_shape of the init, params still boxed
  state_shardings: step_fns.TrainState  # NamedShardings, same structure unboxed

  @property
  def abstract_state(self) -> step_fns.TrainState:
    """ShapeDtypeStructs with their target shardings: what a checkpoint restores into."""
    return placement.abstract(self.state_shapes, self.state_shardings)

  @property
  def mean_image(self) -> np.ndarray:
    """The mean that `preprocess.normalize` subtracts: (S, S, 3) per pixel or (3,) per channel."""
    if self.info is None:
      raise ValueError('the dataset is not prepared yet: no mean image')
    return input_pipeline.mean_for_config(self.info, self.config.data)

  def init_state(self, rng: jax.Array) -> step_fns.TrainState:
    """The initial train state, each array created on the devices that keep it."""
    init_fn = functools.partial(step_fns.init_state, self.model, self.optimizer,
                                crop_size=self.config.data.crop_size)
    state, _ = placement.create_sharded_state(init_fn, rng, self.mesh, self.rules)
    return state

  def _replicated(self, x: Any) -> jax.Array:
    return jax.device_put(x, placement.replicated(self.mesh))

  def train_step(self) -> Callable[[step_fns.TrainState, step_fns.Batch, jax.Array],
                                   tuple[step_fns.TrainState, dict[str, jax.Array]]]:
    """step(state, global batch, dropout rng) -> (state, metrics); the state is donated."""
    mean_image = self._replicated(jnp.asarray(self.mean_image, jnp.float32))
    fn = functools.partial(step_fns.train_step, model=self.model, optimizer=self.optimizer,
                           mean_image=mean_image)
    repl = placement.replicated(self.mesh)
    return jax.jit(meshes.bind_mesh(fn, self.mesh, self.rules),
                   in_shardings=(self.state_shardings, placement.batch_sharding(self.mesh), repl),
                   out_shardings=(self.state_shardings, repl), donate_argnums=0)

  def eval_step(self) -> Callable[[step_fns.TrainState, step_fns.Batch], dict[str, jax.Array]]:
    """step(state, global eval batch) -> sums of loss, top-1/top-5 mistakes and count."""
    mean_image = self._replicated(jnp.asarray(self.mean_image, jnp.float32))
    fn = functools.partial(step_fns.eval_step, model=self.model, mean_image=mean_image)
    return jax.jit(meshes.bind_mesh(fn, self.mesh, self.rules),
                   in_shardings=(self.state_shardings, placement.batch_sharding(self.mesh)),
                   out_shardings=placement.replicated(self.mesh))

  def probability_step(self) -> Callable[[step_fns.TrainState, step_fns.Batch], jax.Array]:
    """step(state, global eval batch) -> (b, num_classes) predictions, on every device.

    The same forward pass as eval_step, stopped before the sums: what an ensemble averages.
    """
    mean_image = self._replicated(jnp.asarray(self.mean_image, jnp.float32))
    fn = functools.partial(_state_probabilities, model=self.model, mean_image=mean_image)
    return jax.jit(meshes.bind_mesh(fn, self.mesh, self.rules),
                   in_shardings=(self.state_shardings, placement.batch_sharding(self.mesh)),
                   out_shardings=placement.replicated(self.mesh))

  def evaluate(self, eval_step: Callable[..., dict[str, jax.Array]], state: step_fns.TrainState,
               batches: Iterator[dict[str, np.ndarray]],
               on_batch: Optional[Callable[[dict[str, np.ndarray], step_fns.Batch], None]] = None
               ) -> dict[str, float]:
    """Loss, top-1 and top-5 error over every real example of `batches` (this host's part).

    on_batch(local batch, global batch) is called after each step (progress, predictions).
    """
    totals = None
    for local in batches:
      batch = placement.make_global_batch(local, self.mesh)
      out = eval_step(state, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
      if on_batch is not None:
        on_batch(local, batch)
    if totals is None:
      raise ValueError('the validation split is empty')
    totals = jax.device_get(totals)
    n = float(totals['count'])
    return {'loss': float(totals['loss_sum']) / n, 'top1_err': float(totals['top1_wrong']) / n,
            'top5_err': float(totals['top5_wrong']) / n, 'count': n}


def _state_probabilities(state: step_fns.TrainState, batch: step_fns.Batch, *,
                         model: alexnet.AlexNet, mean_image: jax.Array) -> jax.Array:
  return step_fns.example_probabilities(state.params, batch, model=model, mean_image=mean_image)


def count_steps(config: ml_collections.ConfigDict,
                info: input_pipeline.DatasetInfo) -> tuple[int, int]:
  """(steps per epoch, total steps) of a run over the train split of `info`."""
  return count_steps_for(config, info.split_sizes['train'])


def count_steps_for(config: ml_collections.ConfigDict, train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps) of a run over a train split of `train_examples` images."""
  # Full global batches: the endless train stream carries an epoch's remainder into the
  # next one (input_pipeline.steps_per_epoch).
  steps_per_epoch = train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise errors.InputError(
        f'config.batch_size={config.batch_size} is larger than the training split '
        f'({train_examples} images)')
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, config.num_epochs * steps_per_epoch


def check_val_split(config: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo) -> None:
  """Refuses a dataset without validation images before any training.

  The run evaluates on them (every config.eval_every_epochs epochs and at the end),
  the plateau schedule and keep_best rank by them, and a run that only failed at its
  first evaluation would fail there again on every resume.
  """
  if info.split_sizes.get('val', 0) > 0:
    return
  where = config.data.dir or '(config.data.dir)'
  raise errors.InputError(
      f'the dataset in {where} has no validation images: a run evaluates on them (every '
      f'{config.eval_every_epochs} epochs and at the end) and its schedule and best checkpoint '
      'rank by them. Prepare the dataset again from a source with a val/<class>/ folder (or '
      'ILSVRC2012_img_val.tar), into a new folder')


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> alexnet.AlexNet:
  """The configured network; its output layer must match the dataset's classes."""
  if config.model.num_classes != num_classes:
    raise errors.InputError(
        f'config.model.num_classes is {config.model.num_classes} but the dataset '
        f'has {num_classes} classes')
  return alexnet.from_config(config.model)


def create_mesh(config: ml_collections.ConfigDict,
                devices: Optional[Sequence[jax.Device]] = None,
                mesh_config: Any = None) -> jax.sharding.Mesh:
  """The mesh of config.mesh (or `mesh_config`) over `devices`, checked against the batch.

  Raises ValueError for a mesh the devices cannot form, a model axis that does
  not split the network, or a batch the data axis cannot split.
  """
  mesh = meshes.create_mesh(config.mesh if mesh_config is None else mesh_config, devices,
                              model_config=config.model)
  placement.check_batch_divisible(config.batch_size, mesh)
  return mesh


def create_abstract_mesh(config: ml_collections.ConfigDict,
                         num_devices: int) -> jax.sharding.AbstractMesh:
  """The mesh `create_mesh` would make over `num_devices` devices, with the same checks.

  No device is needed: the dry run plans a cluster's job from a login node.
  """
  mesh = meshes.create_abstract_mesh(config.mesh, num_devices, model_config=config.model)
  placement.check_batch_divisible(config.batch_size, mesh)
  return mesh


def setup(config: ml_collections.ConfigDict,
          info: Optional[input_pipeline.DatasetInfo] = None, *,
          mesh: Optional[jax.sharding.Mesh] = None) -> Experiment:
  """The Experiment of a resolved, validated config.

  info: the dataset's facts; None when it is still to be prepared (the dry run):
    the classes then come from config.model.num_classes, and the steps, which
    need the mean image, cannot be made.
  mesh: default `create_mesh(config)` over all devices; an AbstractMesh (a planned
    target) gives shapes and shardings only, no steps or state.
  """
  mesh = create_mesh(config) if mesh is None else mesh
  num_classes = config.model.num_classes if info is None else info.num_classes
  model = create_model(config, num_classes)
  rules = meshes.rules_for_sizes(meshes.logical_rules(config), mesh.shape, num_classes)
  optimizer = optim.create_optimizer(config.optim)
  init_fn = lambda rng: step_fns.init_state(model, optimizer, rng, config.data.crop_size)
  with meshes.use_mesh(mesh, rules):
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = placement.param_shardings(shapes, mesh, rules)
  return Experiment(config=config, mesh=mesh, rules=rules, info=info, model=model,
                    optimizer=optimizer, state_shapes=shapes, state_shardings=shardings)
