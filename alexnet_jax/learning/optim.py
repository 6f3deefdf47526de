"""The paper's optimizer and learning-rate schedules.

Update rule (Krizhevsky et al. 2012, section 5), for every weight w:

  v <- momentum * v - weight_decay * lr * w - lr * grad
  w <- w + v

The velocity holds steps that already include the learning rate, so a drop of
the learning rate only shrinks the new terms: the momentum carried from before
the drop keeps its old size. `optax.sgd(lr, momentum)` keeps an unscaled
velocity and multiplies all of it by the new rate, which is the same only while
the rate is constant.

The learning rate is a value in the optimizer state (`optax.inject_hyperparams`),
so the host changes it between steps without recompiling the train step and the
checkpoint carries it. Schedules run on the host: the plateau schedule needs the
validation error, which only the host sees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.core import errors

SCHEDULES = ('plateau', 'step', 'constant')
# Leaf names still decayed under decay_bias=False (Caffe's recipe decays weights only).
KERNEL_NAMES = ('kernel',)


def _is_number(x: Any) -> bool:
  # bool is an int subclass; a True learning rate is a typo, not 1.0.
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def validate_optim_config(optim_config: Any) -> None:
  """Raises ValueError naming the first `config.optim` field with an impossible value."""

  def fail(field: str, requirement: str, value: Any) -> None:
    raise errors.InputError(f'config.optim.{field} must be {requirement}, got {value!r}')

  lr = optim_config.get('learning_rate')
  if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
    fail('learning_rate', '> 0', lr)
  momentum = optim_config.get('momentum')
  if not _is_number(momentum) or not 0 <= momentum < 1:
    fail('momentum', 'in [0, 1)', momentum)
  wd = optim_config.get('weight_decay')
  if not _is_number(wd) or not math.isfinite(wd) or wd < 0:
    fail('weight_decay', '>= 0', wd)
  decay_bias = optim_config.get('decay_bias', True)
  if not isinstance(decay_bias, bool):
    fail('decay_bias', 'True or False', decay_bias)
  schedule = optim_config.get('schedule')
  if schedule not in SCHEDULES:
    fail('schedule', f'one of {SCHEDULES}', schedule)
  if schedule == 'plateau':
    patience = optim_config.get('plateau_patience')
    if not _is_int(patience) or patience < 1:
      fail('plateau_patience', 'an integer >= 1', patience)
    factor = optim_config.get('plateau_factor')
    if not _is_number(factor) or not 0 < factor < 1:
      fail('plateau_factor', 'in (0, 1)', factor)
    max_drops = optim_config.get('plateau_max_drops')
    if not _is_int(max_drops) or max_drops < 0:
      fail('plateau_max_drops', 'an integer >= 0', max_drops)
  if schedule == 'step':
    epochs = optim_config.get('step_epochs')
    if (not isinstance(epochs, (tuple, list)) or not all(_is_number(e) and e > 0 for e in epochs)
        or list(epochs) != sorted(set(epochs))):
      fail('step_epochs', 'increasing positive epoch numbers', epochs)
    factor = optim_config.get('step_factor', 0.1)
    if not _is_number(factor) or not 0 < factor < 1:
      fail('step_factor', 'in (0, 1)', factor)


# ----------------------------------------------------------------------------- update rule


def _leaf_name(path: tuple[Any, ...]) -> Optional[str]:
  """The last dict key on a pytree path: 'kernel' for ('fc8', 'kernel') and for a boxed leaf."""
  for key in reversed(path):
    if isinstance(key, jax.tree_util.DictKey):
      return str(key.key)
  return None


def weight_decay_mask(params: Any, decay_bias: bool) -> Any:
  """Pytree of bools like `params`: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay_bias or _leaf_name(path) in KERNEL_NAMES, params)


def paper_sgd(learning_rate: float, momentum: float, weight_decay: float,
              decay_bias: bool = True) -> optax.GradientTransformation:
  """The paper's rule as an optax chain, with a fixed learning rate.

  add_decayed_weights turns grad into grad + wd * w, scale_by_learning_rate
  into -lr * (grad + wd * w), and trace adds momentum * v: exactly v above.
  """
  mask = None if decay_bias else (lambda params: weight_decay_mask(params, False))
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=False),
  )


def create_optimizer(optim_config: Any) -> optax.GradientTransformation:
  """The paper's SGD with the learning rate held in the optimizer state.

  Reads learning_rate, momentum, weight_decay and decay_bias from `optim_config`
  (config.optim). Momentum, weight decay and the mask are compile-time constants;
  only the learning rate is state (see get_learning_rate / set_learning_rate).
  Works on plain parameter arrays (unbox flax partitioning metadata first).
  """
  return optax.inject_hyperparams(paper_sgd, static_args=('momentum', 'weight_decay', 'decay_bias'))(
      learning_rate=float(optim_config.get('learning_rate')),
      momentum=float(optim_config.get('momentum')),
      weight_decay=float(optim_config.get('weight_decay')),
      decay_bias=bool(optim_config.get('decay_bias', True)),
  )


def get_learning_rate(opt_state: Any) -> jax.Array:
  """The learning rate the next update will use (a scalar array in the state)."""
  return optax.tree_utils.tree_get(opt_state, 'learning_rate')


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
  """A copy of `opt_state` whose learning rate is `learning_rate`.

  The new scalar takes the dtype and sharding of the old one, so the jitted
  train step sees the same input type and does not recompile.
  """
  old = get_learning_rate(opt_state)
  if old is None:
    raise ValueError('opt_state holds no learning_rate: build it with create_optimizer')
  return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.full_like(old, learning_rate))


# ----------------------------------------------------------------------------- schedules


@dataclasses.dataclass
class PlateauSchedule:
  """Divides the learning rate when the validation error stops improving.

  The paper: "divide the learning rate by 10 when the validation error rate
  stopped improving with the current learning rate", three times in all. An
  evaluation improves when its error is strictly below the best so far; after
  `patience` evaluations in a row without improvement the rate is multiplied by
  `factor` (at most `max_drops` times) and the count starts again. The best
  error is kept across drops.
  """

  base_lr: float
  factor: float = 0.1
  patience: int = 2
  max_drops: int = 3
  best: Optional[float] = None  # Lowest validation error seen; None before the first evaluation.
  bad_evals: int = 0  # Evaluations since the last improvement (or drop).
  drops: int = 0  # Drops done so far.

  @classmethod
  def from_config(cls, optim_config: Any) -> 'PlateauSchedule':
    """A fresh schedule from config.optim (plateau_* fields)."""
    validate_optim_config(optim_config)
    return cls(base_lr=float(optim_config.get('learning_rate')),
               factor=float(optim_config.get('plateau_factor')),
               patience=int(optim_config.get('plateau_patience')),
               max_drops=int(optim_config.get('plateau_max_drops')))

  @property
  def lr(self) -> float:
    # Recomputed from the base so that three drops give exactly base * factor**3.
    return self.base_lr * self.factor ** self.drops

  def update(self, val_error: float) -> float:
    """Records one evaluation's error and returns the learning rate to use next."""
    val_error = float(val_error)
    if self.best is None or val_error < self.best:
      self.best = val_error
      self.bad_evals = 0
    else:
      # NaN compares False above, so it counts as no improvement.
      self.bad_evals += 1
      if self.bad_evals >= self.patience and self.drops < self.max_drops:
        self.drops += 1
        self.bad_evals = 0
    return self.lr

  def state_dict(self) -> dict[str, Any]:
    """Plain JSON-serialisable fields, for the checkpoint's meta."""
    best = self.best if self.best is None or math.isfinite(self.best) else None
    return {'base_lr': self.base_lr, 'factor': self.factor, 'patience': self.patience,
            'max_drops': self.max_drops, 'best': best, 'bad_evals': self.bad_evals,
            'drops': self.drops}

  @classmethod
  def from_state_dict(cls, state: Mapping[str, Any]) -> 'PlateauSchedule':
    """Rebuilds a schedule from `state_dict()` output."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(state) - fields
    missing = {'base_lr'} - set(state)
    if unknown or missing:
      raise ValueError(f'not a PlateauSchedule state: unknown keys {sorted(unknown)}, '
                       f'missing {sorted(missing)}')
    return cls(**dict(state))


def learning_rate_at(optim_config: Any, epoch: float,
                     plateau: Optional[PlateauSchedule] = None) -> float:
  """The learning rate of config.optim's schedule at `epoch` (epochs completed).

  'constant': learning_rate. 'step': learning_rate * step_factor ** (number of
  step_epochs <= epoch), so with step_epochs=(30, ...) epoch 30 is the first at
  the lower rate. 'plateau': the current rate of `plateau` (required), which the
  trainer advances with `plateau.update(val_error)` after each evaluation.
  """
  schedule = optim_config.get('schedule')
  base = float(optim_config.get('learning_rate'))
  if schedule == 'constant':
    return base
  if schedule == 'step':
    drops = sum(1 for e in optim_config.get('step_epochs') if e <= epoch)
    return base * float(optim_config.get('step_factor', 0.1)) ** drops
  if plateau is None:
    raise ValueError("config.optim.schedule='plateau' needs the PlateauSchedule state")
  return plateau.lr


def make_plateau(optim_config: Any,
                 state: Optional[Mapping[str, Any]] = None) -> Optional[PlateauSchedule]:
  """The plateau schedule of config.optim, or None for the other schedules.

  `state` is a saved `state_dict()` (from the checkpoint's meta) to resume from.
  """
  if optim_config.get('schedule') != 'plateau':
    return None
  plateau = PlateauSchedule.from_config(optim_config)
  if state is not None:
    # Progress comes from the checkpoint; factor, patience and the base rate from
    # the current config, so a deliberate change on resume takes effect.
    saved = PlateauSchedule.from_state_dict(state)
    plateau.best, plateau.bad_evals, plateau.drops = saved.best, saved.bad_evals, saved.drops
    plateau.drops = min(plateau.drops, plateau.max_drops)
  return plateau
