"""The paper's update rule against numpy, and the host-side schedules."""

import json

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.learning import optim
from tests.helpers.checks import assert_trees_close

MOMENTUM = 0.9
# Larger than the paper's 5e-4 so that decaying or not decaying a bias moves it visibly.
WEIGHT_DECAY = 0.05


def optim_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      learning_rate=0.1, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, decay_bias=True,
      schedule='plateau', plateau_patience=2, plateau_factor=0.1, plateau_max_drops=3,
      step_epochs=(30, 60, 80)))
  config.update(overrides)
  return config


def make_problem(seed: int = 0):
  """Random params of the model's layout and a quadratic loss with a numpy gradient."""
  rng = np.random.default_rng(seed)
  shapes = {'conv1': {'kernel': (3, 3, 2, 4), 'bias': (4,)}, 'fc8': {'kernel': (5, 3), 'bias': (3,)}}
  is_shape = lambda x: isinstance(x, tuple)
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=is_shape)
  curv = jax.tree.map(lambda s: rng.uniform(0.5, 2.0, size=s), shapes, is_leaf=is_shape)
  target = jax.tree.map(lambda s: rng.normal(size=s), shapes, is_leaf=is_shape)

  def loss(p):
    leaves = jax.tree.map(lambda w, c, t: 0.5 * jnp.sum(c * (w - t) ** 2), p, curv, target)
    return sum(jax.tree.leaves(leaves))

  def numpy_grad(p):
    return jax.tree.map(lambda w, c, t: c * (w - t), p, curv, target)

  return params, loss, numpy_grad


def numpy_paper_step(params, velocity, grads, lr, decay_bias):
  """v <- m v - wd lr w - lr g; w <- w + v (float64), biases decayed only if decay_bias."""
  new_params, new_velocity = {}, {}
  for layer, leaves in params.items():
    new_params[layer], new_velocity[layer] = {}, {}
    for name, w in leaves.items():
      wd = WEIGHT_DECAY if (decay_bias or name == 'kernel') else 0.0
      v = MOMENTUM * velocity[layer][name] - wd * lr * w - lr * grads[layer][name]
      new_velocity[layer][name] = v
      new_params[layer][name] = w + v
  return new_params, new_velocity


class PaperRuleTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_equals_numpy_rule_across_lr_drop(self, decay_bias):
    params, loss, numpy_grad = make_problem()
    tx = optim.create_optimizer(optim_config(decay_bias=decay_bias))
    opt_state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))

    ref_params = jax.tree.map(np.float64, params)
    ref_velocity = jax.tree.map(np.zeros_like, ref_params)
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    for lr in lrs:
      opt_state = optim.set_learning_rate(opt_state, lr)
      updates, opt_state = step(params, opt_state)
      params = optax.apply_updates(params, updates)
      ref_params, ref_velocity = numpy_paper_step(
          ref_params, ref_velocity, numpy_grad(ref_params), lr, decay_bias)
      assert_trees_close(params, ref_params, rtol=2e-5, atol=1e-6)
      # The trace is the paper's v itself, lr included.
      assert_trees_close(opt_state.inner_state[2].trace, ref_velocity, rtol=2e-5, atol=1e-6)

  def test_bias_decay_switch_changes_only_biases(self):
    params, loss, _ = make_problem()
    results = {}
    for decay_bias in (True, False):
      tx = optim.create_optimizer(optim_config(decay_bias=decay_bias))
      updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
      results[decay_bias] = updates
    for layer in params:
      np.testing.assert_array_equal(results[True][layer]['kernel'], results[False][layer]['kernel'])
      # First step, zero velocity: the gap is exactly the decay term -lr * wd * b.
      np.testing.assert_allclose(
          results[True][layer]['bias'] - results[False][layer]['bias'],
          -0.1 * WEIGHT_DECAY * params[layer]['bias'], rtol=1e-4, atol=1e-7)

  def test_differs_from_optax_sgd_right_after_drop(self):
    lr_before, lr_after = 0.1, 0.01
    params, loss, _ = make_problem(seed=1)
    paper = optim.create_optimizer(optim_config())
    sgd = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                                          optax.sgd(learning_rate, momentum=MOMENTUM)))(
                                              learning_rate=lr_before)
    paper_state, sgd_state = paper.init(params), sgd.init(params)
    paper_params = sgd_params = params
    for _ in range(3):
      previous = paper_params
      u, paper_state = paper.update(jax.grad(loss)(paper_params), paper_state, paper_params)
      paper_params = optax.apply_updates(paper_params, u)
      u, sgd_state = sgd.update(jax.grad(loss)(sgd_params), sgd_state, sgd_params)
      sgd_params = optax.apply_updates(sgd_params, u)
    # Same while the rate is constant.
    assert_trees_close(sgd_params, jax.tree.map(np.asarray, paper_params), rtol=1e-5, atol=1e-6)
    velocity = jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), paper_params, previous)

    paper_state = optim.set_learning_rate(paper_state, lr_after)
    sgd_state.hyperparams['learning_rate'] = jnp.asarray(lr_after)
    grads = jax.grad(loss)(paper_params)  # both start the step from the same params
    u, _ = paper.update(grads, paper_state, paper_params)
    paper_next = optax.apply_updates(paper_params, u)
    u, _ = sgd.update(grads, sgd_state, paper_params)
    sgd_next = optax.apply_updates(paper_params, u)
    # optax.sgd rescales the carried velocity by the new rate; the paper keeps it:
    # paper - sgd = m * (1 - lr_after / lr_before) * v_prev.
    expected_gap = jax.tree.map(lambda v: MOMENTUM * (1 - lr_after / lr_before) * v, velocity)
    gap = jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), paper_next, sgd_next)
    assert_trees_close(gap, expected_gap, rtol=1e-3, atol=1e-6)
    self.assertGreater(min(np.abs(g).max() for g in jax.tree.leaves(expected_gap)), 1e-2)


class LearningRateStateTest(absltest.TestCase):

  def test_get_set_keep_dtype_and_do_not_retrace(self):
    params, loss, _ = make_problem()
    tx = optim.create_optimizer(optim_config(learning_rate=0.01))
    opt_state = tx.init(params)
    self.assertAlmostEqual(float(optim.get_learning_rate(opt_state)), 0.01, places=7)
    traces = []

    @jax.jit
    def step(p, s):
      traces.append(1)
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, updates), s

    params, opt_state = step(params, opt_state)
    old = optim.get_learning_rate(opt_state)
    new_state = optim.set_learning_rate(opt_state, 0.001)
    new = optim.get_learning_rate(new_state)
    self.assertEqual(new.dtype, old.dtype)
    self.assertEqual(new.sharding, old.sharding)
    self.assertAlmostEqual(float(new), 0.001, places=8)
    self.assertAlmostEqual(float(optim.get_learning_rate(opt_state)), 0.01, places=7)  # pure
    step(params, new_state)
    self.assertLen(traces, 1)

  def test_mask_sees_through_boxed_leaves(self):
    boxed = {'conv2': {'kernel': nn.LogicallyPartitioned(jnp.ones((2, 2)), ('a', 'b')),
                       'bias': nn.LogicallyPartitioned(jnp.ones(2), ('b',))}}
    mask = optim.weight_decay_mask(boxed, decay_bias=False)
    self.assertEqual(jax.tree.leaves(mask), [False, True])  # bias, kernel (sorted keys)
    self.assertEqual(jax.tree.leaves(optim.weight_decay_mask(boxed, decay_bias=True)), [True, True])


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      ('learning_rate', -0.1, 'config.optim.learning_rate must be > 0, got -0.1'),
      ('learning_rate', 0.0, 'config.optim.learning_rate must be > 0, got 0.0'),
      ('learning_rate', True, 'config.optim.learning_rate'),
      ('momentum', 1.0, 'config.optim.momentum must be in [0, 1), got 1.0'),
      ('momentum', -0.5, 'config.optim.momentum'),
      ('weight_decay', -1e-4, 'config.optim.weight_decay must be >= 0, got -0.0001'),
      ('schedule', 'cosine', "config.optim.schedule must be one of ('plateau', 'step', 'constant')"),
      ('plateau_patience', 0, 'config.optim.plateau_patience'),
      ('plateau_factor', 1.5, 'config.optim.plateau_factor'),
      ('plateau_max_drops', -1, 'config.optim.plateau_max_drops'),
      ('decay_bias', 'no', 'config.optim.decay_bias'),
  )
  def test_bad_value_names_field(self, field, value, message):
    # A plain dict: ConfigDict itself would cast True to 1.0 or refuse 'no'.
    config = dict(optim_config().to_dict(), **{field: value})
    with self.assertRaises(ValueError) as ctx:
      optim.validate_optim_config(config)
    self.assertIn(message, str(ctx.exception))

  def test_bad_step_epochs(self):
    with self.assertRaisesRegex(ValueError, r'config\.optim\.step_epochs'):
      optim.validate_optim_config(optim_config(schedule='step', step_epochs=(60, 30)))

  def test_paper_config_is_valid(self):
    from configs import imagenet  # pylint: disable=g-import-not-at-top
    optim.validate_optim_config(imagenet.get_config().optim)


class ScheduleTest(absltest.TestCase):

  def test_plateau_drops_exactly_when_it_should(self):
    plateau = optim.PlateauSchedule.from_config(optim_config(learning_rate=0.01))
    errors = [0.90, 0.80, 0.85, 0.80,  # two without improvement (a tie is none): drop 1
              0.79, 0.79, 0.78,        # one bad then better: no drop
              0.78, 0.78,              # two bad: drop 2
              0.70, 0.71, 0.72,        # drop 3
              0.75, 0.76, 0.77, 0.78, 0.79, 0.80]  # no 4th drop
    expected = [0.01, 0.01, 0.01, 1e-3,
                1e-3, 1e-3, 1e-3,
                1e-3, 1e-4,
                1e-4, 1e-4, 1e-5,
                1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]
    got = [plateau.update(e) for e in errors]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    self.assertEqual(plateau.drops, 3)
    self.assertEqual(plateau.best, 0.70)

  def test_nan_counts_as_no_improvement(self):
    plateau = optim.PlateauSchedule(base_lr=1.0, patience=1)
    plateau.update(0.5)
    self.assertEqual(plateau.update(float('nan')), 0.1)

  def test_plateau_state_survives_json_round_trip(self):
    errors = [0.9, 0.8, 0.85, 0.86, 0.7, 0.75]
    uninterrupted = optim.PlateauSchedule.from_config(optim_config())
    resumed = optim.PlateauSchedule.from_config(optim_config())
    for e in errors[:4]:
      uninterrupted.update(e)
      resumed.update(e)
    resumed = optim.PlateauSchedule.from_state_dict(json.loads(json.dumps(resumed.state_dict())))
    self.assertEqual(resumed, uninterrupted)
    self.assertEqual([resumed.update(e) for e in errors[4:] + [0.8] * 3],
                     [uninterrupted.update(e) for e in errors[4:] + [0.8] * 3])

  def test_make_plateau_takes_progress_from_state_and_knobs_from_config(self):
    saved = optim.PlateauSchedule(base_lr=0.01, patience=5, best=0.4, bad_evals=1, drops=1)
    plateau = optim.make_plateau(optim_config(learning_rate=0.01, plateau_patience=2),
                                 saved.state_dict())
    self.assertEqual((plateau.best, plateau.bad_evals, plateau.drops, plateau.patience),
                     (0.4, 1, 1, 2))
    self.assertAlmostEqual(plateau.update(0.5), 1e-4)
    self.assertIsNone(optim.make_plateau(optim_config(schedule='constant')))

  def test_step_and_constant(self):
    config = optim_config(learning_rate=0.01, schedule='step', step_epochs=(30, 60, 80))
    got = [optim.learning_rate_at(config, e) for e in (0, 29.9, 30, 59, 60, 80, 89)]
    np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5], rtol=1e-12)
    self.assertEqual(optim.learning_rate_at(optim_config(schedule='constant'), 50), 0.1)
    plateau = optim.PlateauSchedule(base_lr=0.1, drops=2)
    self.assertAlmostEqual(optim.learning_rate_at(optim_config(), 10, plateau), 1e-3)
    with self.assertRaisesRegex(ValueError, 'plateau'):
      optim.learning_rate_at(optim_config(), 10)


if __name__ == '__main__':
  absltest.main()
