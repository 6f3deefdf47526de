"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Read top to bottom, this file follows a run: check the config; set up the mesh;
build the data; create the state already sharded; restore; the train and eval
steps; the loop with its periodic actions (log, evaluate, checkpoint).
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax import augment
from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import figures
from alexnet_jax import input_pipeline
from alexnet_jax import losses
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import run_info
from alexnet_jax import sharding

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps done
  params: Any
  opt_state: Any


# ----------------------------------------------------------------------------- config


def resolve_auto(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with the settings the program chooses for the hardware filled in.

  model.dtype 'auto': bfloat16 compute on GPU/TPU (params stay float32), float32 on
  CPU, where bfloat16 is slower. data.num_threads -1: one decoder thread per core
  (JPEG decoding releases the GIL, so threads scale with cores).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if config.model.dtype == 'auto':
    config.model.dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  if config.data.num_threads == -1:
    config.data.num_threads = os.cpu_count() or 1
  return config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first impossible top-level or data field."""

  def need(ok: bool, field: str, requirement: str) -> None:
    if not ok:
      raise ValueError(f'config.{field} must be {requirement}, got {config_value(config, field)!r}')

  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  need(is_int(config.batch_size) and config.batch_size > 0, 'batch_size', 'a positive integer')
  need(is_int(config.num_epochs) and config.num_epochs > 0, 'num_epochs', 'a positive integer')
  need(is_int(config.num_train_steps) and (config.num_train_steps > 0
                                           or config.num_train_steps == -1),
       'num_train_steps', 'a positive integer or -1')
  need(is_int(config.eval_every_epochs) and config.eval_every_epochs > 0, 'eval_every_epochs',
       'a positive integer')
  need(config.final_eval_crops in (1, 10), 'final_eval_crops', '1 or 10')
  d = config.data
  need(is_int(d.crop_size) and d.crop_size > 0, 'data.crop_size', 'a positive integer')
  need(is_int(d.image_size) and d.image_size >= d.crop_size, 'data.image_size',
       f'an integer >= data.crop_size ({d.crop_size})')
  need(d.lighting_std >= 0, 'data.lighting_std', '>= 0')
  need(d.mean in ('pixel', 'channel'), 'data.mean', "'pixel' or 'channel'")
  need(is_int(d.num_threads) and d.num_threads >= 1, 'data.num_threads', 'a positive integer')
  need(is_int(d.worker_count) and d.worker_count >= 0, 'data.worker_count', 'an integer >= 0')
  need(is_int(config.log.every_steps) and config.log.every_steps > 0, 'log.every_steps',
       'a positive integer')
  need(is_int(config.checkpoint.every_steps) and config.checkpoint.every_steps > 0,
       'checkpoint.every_steps', 'a positive integer')
  need(is_int(config.checkpoint.keep) and config.checkpoint.keep > 0, 'checkpoint.keep',
       'a positive integer')
  optim.validate_optim_config(config.optim)
  model_lib.from_config(config.model).check((1, d.crop_size, d.crop_size, 3))


def config_value(config: ml_collections.ConfigDict, dotted: str) -> Any:
  for part in dotted.split('.'):
    config = config[part]
  return config


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, so a bad path fails before any compile."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'workdir {workdir!r} cannot be written: {e.strerror or e}') from e


# ----------------------------------------------------------------------------- steps


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: model_lib.AlexNet,
               optimizer: optax.GradientTransformation, mean_image: jax.Array
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch of uint8 crops; returns the new state and metrics."""
  images = augment.normalize(batch['image'], batch['crop'], batch['flip'], batch['lighting'],
                             mean_image)
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': dropout_rng})
    return losses.cross_entropy(logits, batch['label']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  top1, top5 = losses.topk_errors(logits, batch['label'], ks=(1, 5))
  metrics = {'loss': loss, 'top1_err': top1, 'top5_err': top5,
             'lr': optim.get_learning_rate(state.opt_state)}
  return TrainState(state.step + 1, params, opt_state), metrics


def view_probabilities(params: Any, image: jax.Array, crop: jax.Array, flip: jax.Array,
                       lighting: jax.Array, *, model: model_lib.AlexNet,
                       mean_image: jax.Array) -> jax.Array:
  """Softmax outputs (b, V, num_classes) of uint8 views (b, V, c, c, 3), deterministic."""
  b, v = image.shape[:2]
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])
  images = augment.normalize(flat(image), flat(crop), flat(flip), flat(lighting), mean_image)
  logits = model.apply({'params': params}, images, train=False)
  return jax.nn.softmax(logits).reshape(b, v, -1)


def eval_step(state: TrainState, batch: Batch, *, model: model_lib.AlexNet,
              mean_image: jax.Array) -> dict[str, jax.Array]:
  """Sums over the real (mask=True) examples of a batch of V views each.

  With V views (10 for the paper's test), the prediction is the mean of the V
  softmax outputs; the loss is the cross-entropy of that mean distribution.
  """
  probs = view_probabilities(state.params, batch['image'], batch['crop'], batch['flip'],
                             batch['lighting'], model=model, mean_image=mean_image).mean(axis=1)
  mask = batch['mask'].astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probs, batch['label'][:, None], axis=1)[:, 0] + 1e-30)
  wrong1, wrong5 = losses.topk_wrong(probs, batch['label'], ks=(1, 5))
  return {'loss_sum': jnp.sum(nll * mask), 'top1_wrong': jnp.sum(wrong1 * mask),
          'top5_wrong': jnp.sum(wrong5 * mask), 'count': jnp.sum(mask)}


# ----------------------------------------------------------------------------- pieces


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> model_lib.AlexNet:
  if config.model.num_classes != num_classes:
    raise ValueError(f'config.model.num_classes is {config.model.num_classes} but the dataset '
                     f'has {num_classes} classes')
  return model_lib.from_config(config.model)


def init_state(model: model_lib.AlexNet, optimizer: optax.GradientTransformation,
               rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
  """The initial state with boxed (logically named) params, for shardings and init alike."""
  variables = model.init(rng, jnp.zeros(image_shape, jnp.float32))
  params = variables['params']
  opt_state = optimizer.init(nn.unbox(params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def evaluate(eval_fn, state: TrainState, batches: Iterator[dict[str, np.ndarray]],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  totals = None
  for local in batches:
    out = eval_fn(state, sharding.make_global_batch(local, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError('the validation split is empty')
  totals = jax.device_get(totals)
  n = float(totals['count'])
  return {'loss': float(totals['loss_sum']) / n, 'top1_err': float(totals['top1_wrong']) / n,
          'top5_err': float(totals['top5_wrong']) / n, 'count': n}


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config`, writing everything to `workdir`; returns the last eval metrics.

  Restarting with the same workdir resumes from the newest complete checkpoint.
  """
  config = resolve_auto(config)
  check_config(config)
  prepare_workdir(workdir)

  # Mesh and sharding rules; everything below is traced under them.
  mesh = sharding.create_mesh(config.mesh, model_config=config.model)
  rules = sharding.logical_rules(config)
  sharding.check_batch_divisible(config.batch_size, mesh)
  with sharding.use_mesh(mesh, rules):
    return _train_and_evaluate(config, workdir, mesh, rules)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh, rules: Any) -> dict[str, Any]:
  is_host0 = jax.process_index() == 0
  shard_index, shard_count = sharding.data_shard(mesh)

  # Data.
  if config.data.prepare_from and is_host0:
    from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
    prepare.ensure_prepared(config.data.prepare_from, config.data.dir,
                            image_size=config.data.image_size)
  sharding.sync_hosts('dataset prepared')
  info = input_pipeline.load_info(config.data)
  steps_per_epoch = input_pipeline.steps_per_epoch(info, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the training split '
                     f'({info.split_sizes["train"]} images)')
  num_steps = total_steps(config, steps_per_epoch)
  train_iter = input_pipeline.create_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      process_index=shard_index, process_count=shard_count)
  mean_image = jnp.asarray(input_pipeline.mean_for_config(info, config.data), jnp.float32)

  # Model, optimizer and a state created where it lives.
  model = create_model(config, info.num_classes)
  optimizer = optim.create_optimizer(config.optim)
  crop = config.data.crop_size
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  state, state_shardings = sharding.create_sharded_state(
      lambda rng: init_state(model, optimizer, rng, (1, crop, crop, 3)), init_rng, mesh, rules)
  repl = sharding.replicated(mesh)
  mean_image = jax.device_put(mean_image, repl)
  dropout_rng = jax.device_put(dropout_rng, repl)

  # Restore (the same workdir resumes), else start fresh.
  checkpoint_lib.check_config(workdir, config)
  ckpt = checkpoint_lib.Checkpointer.from_config(workdir, config.checkpoint)
  plateau = optim.make_plateau(config.optim)
  restored = ckpt.restore(sharding.abstract(state, state_shardings), data_iterator=train_iter)
  if restored is not None:
    state, meta = restored
    plateau = optim.make_plateau(config.optim, meta.get('plateau'))
    logging.info('Resumed from step %d.', int(state.step))
  else:
    checkpoint_lib.save_config(workdir, config)
  # Written once the run is sure to start: a refused resume leaves the workdir as it was.
  run_info.save_dataset_info(workdir, info)  # classes and mean image: predict needs no data
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_host0, tensorboard=config.log.tensorboard)
  writer.truncate_after(start_step)

  # The jitted steps: compiled once, state donated, shardings explicit.
  batch_shardings = sharding.batch_sharding(mesh)
  p_train_step = jax.jit(
      lambda s, b, r: train_step(s, b, r, model=model, optimizer=optimizer,
                                 mean_image=mean_image),
      in_shardings=(state_shardings, batch_shardings, repl),
      out_shardings=(state_shardings, repl), donate_argnums=0)
  p_eval_step = jax.jit(
      lambda s, b: eval_step(s, b, model=model, mean_image=mean_image),
      in_shardings=(state_shardings, batch_shardings), out_shardings=repl)

  def run_eval(crops: int) -> dict[str, float]:
    batches = input_pipeline.create_eval_iterator(
        config.data, 'val', global_batch_size=config.batch_size, crops=crops,
        process_index=shard_index, process_count=shard_count)
    return evaluate(p_eval_step, state, batches, mesh)

  def evaluate_and_log(step: int, final: bool) -> dict[str, Any]:
    record = {'step': step, 'kind': 'eval', 'epoch': step / steps_per_epoch}
    views = [(1, 'val')] + ([(10, 'val10')] if final and config.final_eval_crops == 10 else [])
    for crops, prefix in views:
      result = run_eval(crops)
      record.update({f'{prefix}_loss': result['loss'], f'{prefix}_top1_err': result['top1_err'],
                     f'{prefix}_top5_err': result['top5_err']})
    writer.write(record)
    reporter.log_eval(step, record)
    return record

  def save(step: int, val_error: float | None = None, force: bool = False) -> None:
    meta = {'step': step, 'epoch': step / steps_per_epoch,
            'plateau': plateau.state_dict() if plateau else None}
    ckpt.save(step, state, data_iterator=train_iter, meta=meta, val_error=val_error, force=force)

  def set_lr(lr: float):
    nonlocal state
    state = jax.device_put(state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr)),
                           state_shardings)

  # The loop.
  if config.optim.schedule != 'plateau':
    set_lr(optim.learning_rate_at(config.optim, start_step / steps_per_epoch))
  elif plateau is not None:
    set_lr(plateau.lr)
  reporter = metrics_lib.ProgressReporter(num_steps, start_step=start_step,
                                          steps_per_epoch=steps_per_epoch,
                                          enabled=is_host0,
                                          progress_bar=None if config.log.progress else False)
  preemption = checkpoint_lib.PreemptionWatcher()
  pending: list[dict[str, jax.Array]] = []
  last_eval: dict[str, float] = {}
  if start_step >= num_steps:
    evals = [r for r in metrics_lib.read_metrics(workdir) if r['kind'] == 'eval']
    last_eval = evals[-1] if evals else {}
    logging.info('The run in %s already finished at step %d.', workdir, start_step)
  last_time, last_step = time.perf_counter(), start_step
  logging.info('Training %d steps (%d per epoch, global batch %d) from step %d.', num_steps,
               steps_per_epoch, config.batch_size, start_step)
  for step in range(start_step + 1, num_steps + 1):
    batch = sharding.make_global_batch(next(train_iter), mesh)
    state, metrics = p_train_step(state, batch, dropout_rng)
    pending.append(metrics)
    epoch_end = step % steps_per_epoch == 0
    if step % config.log.every_steps == 0 or epoch_end or step == num_steps:
      summary = {k: float(np.mean(v)) for k, v in jax.device_get(
          jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
      pending = []
      metrics_lib.check_finite(summary['loss'], step, last_checkpoint_step=ckpt.latest_step())
      now = time.perf_counter()
      summary['images_per_sec'] = (step - last_step) * config.batch_size / (now - last_time)
      last_time, last_step = now, step
      summary['epoch'] = step / steps_per_epoch
      writer.write({'step': step, 'kind': 'train', **summary})
      reporter.update(step, summary)
    epoch = step // steps_per_epoch
    if (epoch_end and epoch % config.eval_every_epochs == 0) or step == num_steps:
      last_eval = evaluate_and_log(step, final=step == num_steps)
      if plateau is not None:
        set_lr(plateau.update(last_eval['val_top1_err']))
      save(step, val_error=last_eval['val_top1_err'], force=True)
    elif epoch_end:
      save(step, force=True)
    elif step % config.checkpoint.every_steps == 0:
      save(step)
    if epoch_end and config.optim.schedule == 'step':
      set_lr(optim.learning_rate_at(config.optim, epoch))
    if preemption.requested(step):
      logging.warning('Preemption signal received: saved step %d; exiting.', step)
      save(step, force=True)
      break
  ckpt.wait()
  ckpt.close()
  writer.close()
  preemption.close()
  reporter.close()
  figures.write_end_of_training_plots(workdir, state.params, config.model.towers)  # never raises
  if is_host0 and last_eval:
    summary = ', '.join(f'{k} {last_eval[k]:.4f}' for k in last_eval if k.startswith('val'))
    print(f'Finished at step {last_eval["step"]}: {summary}\n'
          f'Logs: {os.path.join(workdir, "metrics.jsonl")}, plots in {os.path.join(workdir, "plots")}, '
          f'TensorBoard: tensorboard --logdir {workdir}', flush=True)
  return last_eval
