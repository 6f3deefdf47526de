"""config.init_from=WORKDIR[:STEP]: a new run starts from another run's parameters.

The source checkpoints are read back here with orbax alone, so what a new run
starts from is compared with what is on disk, bit for bit. fc8's fresh weights
are compared with the init scheme's formula (their mean and standard deviation),
not with the model's own init.
"""

import math
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.learning import experiment
from alexnet_jax.training import init_from
from alexnet_jax.training import trainer
from tests.helpers import saved_runs
from tests.helpers import training

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
HIDDEN = 512  # fc7's width at model.width 0.125: fc8's fan-in


def on_disk(workdir: str, step: int) -> dict:
  """The params of checkpoint `step` in WORKDIR, read by orbax without any of our code."""
  state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step),
                                                        'state'))
  return jax.tree.map(np.asarray, state['params'])


def config_for(data: str, **overrides):
  return resolution.load(training.tiny_config(data, **overrides))


class InitFromTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.data = training.digits_dir()
    cls.src10 = os.path.join(cls.tmp.name, 'src10')
    cls.src3 = os.path.join(cls.tmp.name, 'src3')
    # Two checkpoints: step 2 has the lower validation error, step 4 is the newest.
    saved_runs.write_source_run(training.tiny_config(cls.data), cls.src10, {2: 0.3, 4: 0.5})
    saved_runs.write_source_run(training.tiny_config(cls.data, **{'model.num_classes': 3}),
                                cls.src3, {2: 0.4}, seed=8)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def start(self, config):
    """What the trainer starts from: (state, plan, experiment) for a fresh workdir."""
    workdir = self.create_tempdir().full_path
    source = init_from.find_source(config, workdir)
    plan = init_from.plan_layers(source, config)
    exp = experiment.setup(config, mesh=experiment.create_mesh(config))
    fresh = exp.init_state(jax.random.key(config.seed))
    return init_from.start_from(source, plan, exp, fresh), plan, exp

  def test_every_layer_is_loaded_bitwise_into_the_train_shardings(self):
    # Over a model axis of 2: the weights land split as this run trains them.
    config = config_for(self.data, init_from=self.src10, **{'mesh.model': 2})
    state, plan, exp = self.start(config)
    self.assertEqual(plan, init_from.LayerPlan(LAYERS, ()))
    want = on_disk(self.src10, 4)  # the newest
    for layer in LAYERS:
      for name in ('kernel', 'bias'):
        got = state.params[layer][name]
        np.testing.assert_array_equal(np.asarray(got), want[layer][name], f'{layer}.{name}')
        self.assertEqual(got.sharding, exp.state_shardings.params[layer][name])
    self.assertEqual(int(state.step), 0)
    # Fresh optimizer state: the momentum of every weight is zero.
    for leaf in jax.tree.leaves(state.opt_state):
      if getattr(leaf, 'ndim', 0) > 0:
        self.assertEqual(float(np.abs(np.asarray(leaf)).max()), 0.0)

  @parameterized.parameters(('', 4), (':2', 2), (':best', 2))
  def test_step_picks_the_checkpoint(self, suffix, step):
    state, _, _ = self.start(config_for(self.data, init_from=self.src10 + suffix))
    np.testing.assert_array_equal(np.asarray(state.params['fc7']['kernel']),
                                  on_disk(self.src10, step)['fc7']['kernel'])

  @parameterized.parameters(('paper', 0.01), ('he', math.sqrt(2 / HIDDEN)))
  def test_fc8_starts_fresh_by_this_runs_scheme_when_the_classes_differ(self, scheme, std):
    # The source has 3 classes and was initialised 'he'; this run has 10.
    state, plan, _ = self.start(config_for(self.data, init_from=self.src3,
                                           **{'model.init_scheme': scheme}))
    self.assertEqual(plan, init_from.LayerPlan(LAYERS[:-1], ('fc8',)))
    want = on_disk(self.src3, 2)
    for layer in LAYERS[:-1]:
      np.testing.assert_array_equal(np.asarray(state.params[layer]['kernel']),
                                    want[layer]['kernel'])
    kernel = np.asarray(state.params['fc8']['kernel'], np.float64)
    self.assertEqual(kernel.shape, (HIDDEN, 10))
    np.testing.assert_array_equal(np.asarray(state.params['fc8']['bias']), np.zeros(10))
    # 5,120 draws: the sample std is within 3% of the scheme's, the mean within 4 std errors.
    self.assertAlmostEqual(kernel.std() / std, 1.0, delta=0.03)
    self.assertLess(abs(kernel.mean()), 4 * std / math.sqrt(kernel.size))

  @parameterized.named_parameters(
      ('towers', {'model.towers': 1}, r'layer conv2 \(kernel\) is \(5, 5, 6, 32\) in {src} but '
       r'\(5, 5, 12, 32\) in this run\'s network'),
      ('width', {'model.width': 0.25}, r'layer conv1 \(kernel\) is \(11, 11, 3, 12\) in {src} '
       r'but \(11, 11, 3, 24\)'),
      ('conv_widths', {'model.conv_widths': (96, 256, 384, 384, 128)},
       r'layer conv5 \(kernel\) is \(3, 3, 24, 32\) in {src} but \(3, 3, 24, 16\)'))
  def test_another_network_is_one_line_naming_the_layer(self, overrides, pattern):
    config = config_for(self.data, init_from=self.src10, **overrides)
    source = init_from.find_source(config, self.create_tempdir().full_path)
    with self.assertRaises(errors.InputError) as caught:
      init_from.plan_layers(source, config)
    self.assertRegex(str(caught.exception), '^config.init_from: ' + pattern.format(src=self.src10))
    self.assertNotIn('\n', str(caught.exception))

  def test_bad_sources_are_one_line_each(self):
    new = self.create_tempdir().full_path
    not_a_run = self.create_tempdir().full_path
    no_checkpoints = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.src10, 'config.json'), no_checkpoints)
    no_scores = self.create_tempdir().full_path
    saved_runs.write_source_run(training.tiny_config(self.data), os.path.join(no_scores, 'r'),
                                {3: None})
    cases = {
        os.path.join(new, 'nowhere'): f'workdir {new}/nowhere does not exist',
        not_a_run: f'{not_a_run} holds no config.json: not the workdir of a training run',
        no_checkpoints: f'no checkpoint in {no_checkpoints} ',
        self.src10 + ':3': (r'no checkpoint of step 3 in ' + self.src10 +
                            r'/checkpoints; it has steps \[2, 4\]'),
        os.path.join(no_scores, 'r') + ':best': 'no checkpoint in .* has a validation error',
        new: f'config.init_from={new} names this run\'s own workdir {new}: give the workdir of '
             'another run',
    }
    for text, pattern in cases.items():
      with self.subTest(text):
        with self.assertRaises(errors.UserError) as caught:
          init_from.find_source(config_for(self.data, init_from=text), new)
        message = str(caught.exception)
        self.assertNotIn('\n', message)
        self.assertRegex(message, '^config.init_from=')
        self.assertRegex(message, pattern)

  @parameterized.parameters('src:x', 'src:-1', ':2', 'src: 2', 'src:')
  def test_bad_values_are_refused_by_the_config_check(self, text):
    with self.assertRaisesRegex(errors.InputError, r'^config.init_from'):
      config_for(self.data, init_from=text)


class FineTuneRunTest(absltest.TestCase):
  """Through the training loop: the start, its log, and resumes."""

  def test_start_log_and_resume(self):
    root = self.create_tempdir().full_path
    data = training.digits_dir()
    source = os.path.join(root, 'src3')
    saved_runs.write_source_run(training.tiny_config(data, **{'model.num_classes': 3}), source,
                                {2: 0.4}, seed=8)
    workdir = os.path.join(root, 'new')
    # A rate so small that no weight (none is 0) moves: the checkpoint of step 1 holds the
    # weights the run started from.
    config = training.tiny_config(
        data, init_from=source, num_train_steps=1, final_eval_crops=1,
        evals=(('val', 'center_crop', 'val', 'every'),), **{'optim.learning_rate': 1e-30})
    with self.assertLogs('absl', level='INFO') as logs:
      trainer.train_and_evaluate(config, workdir)
    starts = [r.getMessage() for r in logs.records
              if r.getMessage().startswith('Starting from the parameters')]
    self.assertEqual(starts, [
        f'Starting from the parameters of {source}, checkpoint step 2: loaded conv1, conv2, '
        'conv3, conv4, conv5, fc6, fc7; fresh (he init): fc8 (3 classes there, 10 here). The '
        'optimizer state, the step and the data order start fresh.'])
    got, want = on_disk(workdir, 1), on_disk(source, 2)
    for layer in LAYERS[:-1]:
      for name in ('kernel', 'bias'):
        np.testing.assert_array_equal(got[layer][name], want[layer][name])
    self.assertEqual(got['fc8']['kernel'].shape, (HIDDEN, 10))

    # Resumed with the same config: its own checkpoint, and one line about init_from.
    config.num_train_steps = 2
    with self.assertLogs('absl', level='INFO') as logs:
      trainer.train_and_evaluate(config, workdir)
    messages = [r.getMessage() for r in logs.records]
    self.assertEqual([m for m in messages if 'init_from' in m or m.startswith(('Resumed',
                                                                               'Starting'))], [
        f'config.init_from={source} is not used: {workdir} has checkpoints (newest: step 1), so '
        'the run resumes from its own.', 'Resumed from step 1.'])

    # Another source on resume is another run: refused as a change of the seed is.
    config.init_from = os.path.join(root, 'elsewhere')
    with self.assertRaisesRegex(errors.InputError, r'may not change .*init_from: "' + source):
      trainer.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  absltest.main()
