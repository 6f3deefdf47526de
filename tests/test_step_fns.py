"""The train and eval steps of training/step_fns.py on the digits set, against numpy."""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import input_pipeline
from alexnet_jax.data import preprocess
from alexnet_jax.learning import experiment
from alexnet_jax.learning import optim
from alexnet_jax.learning import step_fns
from tests.helpers.training import digits_dir
from tests.helpers.training import tiny_config


class StepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = tiny_config(digits_dir())
    cls.info = input_pipeline.load_info(cls.config.data)
    cls.model = experiment.create_model(cls.config, cls.info.num_classes)
    cls.optimizer = optim.create_optimizer(cls.config.optim)
    cls.mean = jnp.asarray(cls.info.mean_image)
    batches = input_pipeline.create_train_iterator(cls.config.data, global_batch_size=16, seed=0)
    cls.batch = {k: jnp.asarray(v) for k, v in next(batches).items()}

  def fresh_state(self):
    return jax.tree.map(lambda x: x, nn.unbox(step_fns.init_state(
        self.model, self.optimizer, jax.random.key(0), 64)))

  def test_steps_lower_the_loss(self):
    step = jax.jit(lambda s, b, r: step_fns.train_step(s, b, r, model=self.model,
                                                      optimizer=self.optimizer,
                                                      mean_image=self.mean))
    state = self.fresh_state()
    losses = []
    for _ in range(8):
      state, metrics = step(state, self.batch, jax.random.key(1))
      losses.append(float(metrics['loss']))
    self.assertEqual(int(state.step), 8)
    self.assertLess(losses[-1], 0.7 * losses[0], losses)
    self.assertAlmostEqual(float(metrics['lr']), self.config.optim.learning_rate, places=7)

  def test_train_metrics_match_numpy(self):
    state = self.fresh_state()
    _, metrics = step_fns.train_step(state, self.batch, jax.random.key(1), model=self.model,
                                  optimizer=self.optimizer, mean_image=self.mean)
    images = preprocess.normalize(self.batch['image'], self.batch['crop'], self.batch['flip'],
                               self.batch['lighting'], self.mean)
    rng = jax.random.fold_in(jax.random.key(1), 0)
    logits = np.asarray(self.model.apply({'params': state.params}, images, train=True,
                                         rngs={'dropout': rng}), np.float64)
    labels = np.asarray(self.batch['label'])
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    self.assertAlmostEqual(float(metrics['loss']), -logp[np.arange(16), labels].mean(), places=4)
    rank = (logits >= logits[np.arange(16), labels][:, None]).sum(1) - 1  # ties count against
    self.assertAlmostEqual(float(metrics['top1_err']), float(np.mean(rank >= 1)), places=6)
    self.assertAlmostEqual(float(metrics['top5_err']), float(np.mean(rank >= 5)), places=6)

  def test_eval_step_matches_numpy(self):
    state = self.fresh_state()
    it = input_pipeline.create_eval_iterator(self.config.data, global_batch_size=16, crops=10)
    batch = next(it)
    batch['mask'][-3:] = False  # as if the last three rows were padding
    out = jax.device_get(step_fns.eval_step(state, {k: jnp.asarray(v) for k, v in batch.items()},
                                         model=self.model, mean_image=self.mean))
    # Independent: every view through the model one at a time, softmax in numpy.
    probs = np.zeros((16, 10))
    for v in range(10):
      images = preprocess.normalize(batch['image'][:, v], batch['crop'][:, v], batch['flip'][:, v],
                                 batch['lighting'][:, v], self.mean)
      logits = np.asarray(self.model.apply({'params': state.params}, images), np.float64)
      e = np.exp(logits - logits.max(1, keepdims=True))
      probs += e / e.sum(1, keepdims=True) / 10
    labels, mask = batch['label'], batch['mask']
    p_true = probs[np.arange(16), labels]
    rank = (probs >= p_true[:, None]).sum(1) - 1  # ties count against the label
    self.assertEqual(float(out['count']), 13.0)
    self.assertAlmostEqual(float(out['loss_sum']), float(-np.log(p_true)[mask].sum()), places=3)
    self.assertEqual(float(out['top1_wrong']), float((rank >= 1)[mask].sum()))
    self.assertEqual(float(out['top5_wrong']), float((rank >= 5)[mask].sum()))


if __name__ == '__main__':
  absltest.main()
