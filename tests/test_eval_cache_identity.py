"""evaluate's cache answers only for what produced it: checkpoint, dataset, crops, split.

Planted faults: a cached result of checkpoints since replaced by a new training
in the same workdir, another dataset (40 val labels changed) asked for with
--data_dir, with and without --force, a --data_dir that does not exist, and the
same workdir given twice to an ensemble.
"""

import json
import os
import shutil
import subprocess
import sys

from absl.testing import absltest

from alexnet_jax.core import errors
from alexnet_jax.evaluation import checkpoint_eval
from alexnet_jax.evaluation import ensemble as ensemble_eval
from alexnet_jax.storage import checkpointing
from alexnet_jax.training import trainer
from tests import relabeled_data
from tests import trained_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = trained_run.STEPS
CHANGED = 40


class EvalCacheIdentityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = os.path.join(os.path.dirname(trained_run.workdir()), 'data')

  def copy(self) -> str:
    return shutil.copytree(trained_run.workdir(),
                           os.path.join(self.create_tempdir().full_path, 'run'))

  def test_replaced_checkpoints_are_evaluated_again(self):
    workdir = self.copy()
    first = checkpoint_eval.evaluate_run(workdir, crops=1)
    self.assertIsNone(first.cached)
    self.assertEqual(checkpoint_eval.evaluate_run(workdir, crops=1).cached,
                     os.path.join(workdir, 'eval', f'{STEPS}-1crop.json'))
    # A new training (another seed) replaces the checkpoints in the same workdir.
    shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
    config = trained_run.tiny_config(self.data)
    config.seed = 7
    trainer.train_and_evaluate(config, workdir)
    again = checkpoint_eval.evaluate_run(workdir, crops=1)
    self.assertIsNone(again.cached)
    self.assertNotEqual(again.loss, first.loss)
    with open(os.path.join(workdir, 'eval', f'{STEPS}-1crop.json')) as f:
      self.assertEqual(json.load(f)['loss'], again.loss)

  def test_another_dataset_never_answers_for_the_run_nor_replaces_its_entry(self):
    workdir = self.copy()
    other = relabeled_data.relabeled_copy(
        self.data, os.path.join(self.create_tempdir().full_path, 'other'), 'val', CHANGED, 10)
    own = checkpoint_eval.evaluate_run(workdir, crops=1)
    with self.assertLogs('absl', 'WARNING') as logs:
      theirs = checkpoint_eval.evaluate_run(workdir, crops=1, data_dir=other)
    self.assertIsNone(theirs.cached)  # not the run's own cached result
    self.assertNotEqual(theirs.loss, own.loss)
    self.assertTrue(any(f'val labels differ ({CHANGED} of 364)' in line
                        for line in logs.output), logs.output)
    forced = checkpoint_eval.evaluate_run(workdir, crops=1, data_dir=other, force=True)
    self.assertEqual(forced.loss, theirs.loss)
    # The run's own entry still holds the run's own result.
    plain = checkpoint_eval.evaluate_run(workdir, crops=1)
    self.assertEqual((plain.loss, plain.cached),
                     (own.loss, os.path.join(workdir, 'eval', f'{STEPS}-1crop.json')))
    # The other dataset's result is cached apart, and answers for that dataset only.
    self.assertEqual(checkpoint_eval.evaluate_run(workdir, crops=1, data_dir=other).loss,
                     theirs.loss)
    self.assertLen(os.listdir(os.path.join(workdir, 'eval')), 2)

  def test_the_same_dataset_elsewhere_is_the_runs_own(self):
    workdir = self.copy()
    moved = shutil.copytree(self.data, os.path.join(self.create_tempdir().full_path, 'moved'))
    own = checkpoint_eval.evaluate_run(workdir, crops=1)
    again = checkpoint_eval.evaluate_run(workdir, crops=1, data_dir=moved)
    self.assertEqual((again.loss, again.cached), (own.loss, own.cached or again.cached))
    self.assertIsNotNone(again.cached)

  def test_a_missing_data_dir_is_refused_even_with_a_cached_result(self):
    workdir = self.copy()
    checkpoint_eval.evaluate_run(workdir, crops=1)
    with self.assertRaisesRegex(errors.MissingInputError, 'holds no complete prepared dataset'):
      checkpoint_eval.evaluate_run(workdir, crops=1, data_dir=os.path.join(workdir, 'nowhere'))

  def test_an_entry_of_another_step_does_not_answer(self):
    workdir = self.copy()
    first = checkpoint_eval.evaluate_run(workdir, crops=1)
    path = os.path.join(workdir, 'eval', f'{STEPS}-1crop.json')
    with open(path) as f:
      stored = json.load(f)
    stored['identity']['checkpoint'] = '0' * 16
    stored['loss'] = 123.0
    with open(path, 'w') as f:
      json.dump(stored, f)
    self.assertEqual(checkpoint_eval.evaluate_run(workdir, crops=1).loss, first.loss)


class DuplicateMembersTest(absltest.TestCase):

  def test_the_same_workdir_twice_is_refused(self):
    workdir = trained_run.workdir()
    link = os.path.join(self.create_tempdir().full_path, 'link')
    os.symlink(workdir, link)
    for twice in ([workdir, workdir], [workdir, link]):
      with self.assertRaisesRegex(errors.InputError, 'is given twice'):
        ensemble_eval.evaluate_ensemble(twice, crops=1)

  def test_command_line_says_so_in_one_line(self):
    workdir = trained_run.workdir()
    proc = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={workdir}',
         f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertEqual(proc.stdout, '')
    errors_said = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors_said, 1, proc.stderr)
    self.assertIn('is given twice', errors_said[0])
    self.assertNotIn('Traceback', proc.stderr)


if __name__ == '__main__':
  absltest.main()
