"""config.evals: the evaluators a run makes, when it makes them, and the checks on the field."""

import os

from absl.testing import absltest

from alexnet_jax.config import resolution
from alexnet_jax.config import eval_schema
from alexnet_jax.core import errors
from alexnet_jax.evaluation import evaluators
from alexnet_jax.training import trainer
from configs import digits
from configs import imagenet
from tests.helpers import training

ONLY_VAL = (('val', 'center_crop', 'val', 'every'),)


def names(evals) -> list[str]:
  return [e.prefix for e in evals]


class BuildTest(absltest.TestCase):
  """Which evaluators a config yields; no data or devices needed to build them."""

  def build(self, config):
    return evaluators.build(config, exp=None, eval_step=None, shard=(0, 1))

  def test_the_default_is_the_center_crop_every_time_and_the_paper_test_at_the_end(self):
    config = imagenet.get_config()
    evals = self.build(config)
    self.assertEqual([(e.prefix, e.crops, e.split, e.when) for e in evals],
                     [('val', 1, 'val', 'every'), ('val10', 10, 'val', 'final')])
    self.assertEqual(names(evaluators.due(evals, final=False)), ['val'])
    self.assertEqual(names(evaluators.due(evals, final=True)), ['val', 'val10'])

  def test_final_eval_crops_1_leaves_the_paper_test_out(self):
    self.assertEqual(names(self.build(digits.get_config())), ['val'])

  def test_a_config_that_lists_only_val_builds_only_val(self):
    config = imagenet.get_config()
    config.evals = ONLY_VAL
    self.assertEqual(names(evaluators.due(self.build(config), final=True)), ['val'])

  def test_a_config_without_the_field_gets_the_default(self):
    # A run's config.py written before the field existed.
    config = imagenet.get_config()
    self.assertEqual(config.evals, eval_schema.DEFAULT_EVALS)
    del config['evals']
    self.assertEqual(names(self.build(config)), ['val', 'val10'])

  def test_stored_json_lists_are_read_as_tuples(self):
    config = imagenet.get_config()
    config.evals = [list(e) for e in ONLY_VAL]
    self.assertEqual(names(self.build(config)), ['val'])


class ValidateTest(absltest.TestCase):
  """resolution.load refuses a bad config.evals in one line naming what is wrong."""

  def refused(self, evals) -> str:
    config = digits.get_config()
    config.evals = evals
    with self.assertRaises(errors.InputError) as ctx:
      resolution.load(config, platform='cpu', cpu_count=2, devices=1, processes=1)
    message = str(ctx.exception)
    self.assertLen(message.splitlines(), 1, message)
    return message

  def test_an_unknown_evaluator_is_named(self):
    message = self.refused(ONLY_VAL + (('val10', 'ten_crops', 'val', 'final'),))
    self.assertEqual(message, "config.evals: unknown evaluator 'ten_crops' in 'val10'; known: "
                     'center_crop, ten_crop')

  def test_other_mistakes(self):
    self.assertIn("split of 'v2' must be one of", self.refused(
        ONLY_VAL + (('v2', 'center_crop', 'test', 'every'),)))
    self.assertIn("when of 'v2' must be 'every' or 'final', got 'end'", self.refused(
        ONLY_VAL + (('v2', 'center_crop', 'val', 'end'),)))
    self.assertIn("lists 'val' twice", self.refused(ONLY_VAL + ONLY_VAL))
    self.assertIn('entries must be (name, kind, split, when)', self.refused(
        ONLY_VAL + (('v2', 'center_crop'),)))
    self.assertIn("the name 'val-2' must be a word", self.refused(
        ONLY_VAL + (('val-2', 'center_crop', 'val', 'every'),)))

  def test_val_every_evaluation_is_required(self):
    # The plateau schedule and keep_best rank by val_top1_err.
    for evals in ((('v', 'center_crop', 'val', 'every'),),
                  (('val', 'center_crop', 'val', 'final'),),
                  (('val', 'center_crop', 'train', 'every'),)):
      self.assertIn("config.evals must hold ('val', <kind>, 'val', 'every')", self.refused(evals))

  def test_the_default_and_a_ten_crop_val_pass(self):
    for evals in (eval_schema.DEFAULT_EVALS, (('val', 'ten_crop', 'val', 'every'),)):
      config = digits.get_config()
      config.evals = evals
      resolution.load(config, platform='cpu', cpu_count=2, devices=1, processes=1)


class TrainingRunTest(absltest.TestCase):

  def test_a_run_that_lists_only_val_logs_only_val(self):
    # final_eval_crops=10 would add the paper's test; config.evals leaves it out.
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    config = training.tiny_config(training.digits_dir(), num_train_steps=2,
                                    final_eval_crops=10, evals=ONLY_VAL)
    result = trainer.train_and_evaluate(config, workdir)
    evals = [r for r in training.read_metrics(workdir) if r['kind'] == 'eval']
    self.assertLen(evals, 1)
    self.assertEqual(sorted(evals[0]), ['epoch', 'kind', 'step', 'time', 'val_loss',
                                        'val_top1_err', 'val_top5_err'])
    self.assertEqual(result, evals[0])


if __name__ == '__main__':
  absltest.main()
