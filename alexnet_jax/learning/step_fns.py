"""The pure computation of training: the train state, its init, and the train and eval steps.

Nothing here knows about devices, files or the data pipeline: each function
maps arrays to arrays, and `experiment` jits them with explicit shardings.
This module imports only the model, the loss, the optimizer and the on-device
normalisation, so it runs (and benchmarks) anywhere JAX does.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from alexnet_jax.model import losses
from alexnet_jax.model import alexnet
from alexnet_jax.learning import optim
from alexnet_jax.data import preprocess

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps done
  params: Any
  opt_state: Any


def init_state(model: alexnet.AlexNet, optimizer: optax.GradientTransformation,
               rng: jax.Array, crop_size: int) -> TrainState:
  """The initial state with boxed (logically named) params, for shardings and init alike."""
  variables = model.init(rng, jnp.zeros((1, crop_size, crop_size, 3), jnp.float32))
  params = variables['params']
  opt_state = optimizer.init(nn.unbox(params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: alexnet.AlexNet,
               optimizer: optax.GradientTransformation, mean_image: jax.Array
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch of uint8 crops; returns the new state and metrics."""
  images = preprocess.normalize(batch['image'], batch['crop'], batch['flip'], batch['lighting'],
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
                       lighting: jax.Array, *, model: alexnet.AlexNet,
                       mean_image: jax.Array) -> jax.Array:
  """Softmax outputs (b, V, num_classes) of uint8 views (b, V, c, c, 3), deterministic."""
  b, v = image.shape[:2]
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])
  images = preprocess.normalize(flat(image), flat(crop), flat(flip), flat(lighting), mean_image)
  logits = model.apply({'params': params}, images, train=False)
  return jax.nn.softmax(logits).reshape(b, v, -1)


def example_probabilities(params: Any, batch: Batch, *, model: alexnet.AlexNet,
                          mean_image: jax.Array) -> jax.Array:
  """(b, num_classes): each example's prediction, the mean of its V views' softmax outputs.

  With V=10 this is the paper's test; averaging these over several networks is
  its ensemble ("5 CNNs", Table 2).
  """
  return view_probabilities(params, batch['image'], batch['crop'], batch['flip'],
                            batch['lighting'], model=model, mean_image=mean_image).mean(axis=1)


def probability_sums(probs: jax.Array, label: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the real (mask=True) examples of predictions `probs` (b, num_classes).

  loss_sum adds the cross-entropy of each prediction, -log p(label); top1_wrong
  and top5_wrong count the examples whose label is not among the 1 or 5 most
  probable classes; count is the number of real examples.
  """
  mask = mask.astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probs, label[:, None], axis=1)[:, 0] + 1e-30)
  wrong1, wrong5 = losses.topk_wrong(probs, label, ks=(1, 5))
  return {'loss_sum': jnp.sum(nll * mask), 'top1_wrong': jnp.sum(wrong1 * mask),
          'top5_wrong': jnp.sum(wrong5 * mask), 'count': jnp.sum(mask)}


def eval_step(state: TrainState, batch: Batch, *, model: alexnet.AlexNet,
              mean_image: jax.Array) -> dict[str, jax.Array]:
  """Sums over the real (mask=True) examples of a batch of V views each.

  With V views (10 for the paper's test), the prediction is the mean of the V
  softmax outputs; the loss is the cross-entropy of that mean distribution.
  """
  probs = example_probabilities(state.params, batch, model=model, mean_image=mean_image)
  return probability_sums(probs, batch['label'], batch['mask'])
