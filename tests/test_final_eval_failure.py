"""A final evaluation that fails (a damaged val shard) keeps the steps trained since the last save.

A tiny run whose only checkpoint would be the last step trains on a copy of the digits
set whose val shard is damaged once the run has started (after the start's dataset
fingerprint read every label): the final evaluation fails with one user error, the
last step is saved all the same, and once the shard is restored a rerun evaluates
that step without training again. The rerun starts from another directory with the
same relative config.data.dir: it resumes on the dataset the run started with, not a
new preparation there.
"""

import contextlib
import json
import os
import shutil
from unittest import mock

from absl.testing import absltest

from alexnet_jax.core import errors
from alexnet_jax.data import fingerprint
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import metric_log
from alexnet_jax.training import trainer
from tests import trained_run


def _damage(path: str) -> None:
  """What a bad disk does to a shard: most of its records overwritten with zeros."""
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(1024)
    f.write(bytes(size // 2))


class FinalEvaluationFailureTest(absltest.TestCase):

  def test_the_last_step_is_saved_and_evaluated_on_rerun(self):
    root = self.create_tempdir().full_path
    data = os.path.join(root, 'data')
    shutil.copytree(os.path.join(os.path.dirname(trained_run.workdir()), 'data'), data)
    val = sorted(n for n in os.listdir(data) if n.startswith('val.array_record'))[0]
    shutil.copy(os.path.join(data, val), os.path.join(root, 'val_backup'))
    of_dataset = fingerprint.of_dataset

    def fingerprint_then_damage(*args, **kwargs):  # the disk goes bad during the run
      found = of_dataset(*args, **kwargs)
      _damage(os.path.join(data, val))
      return found
    # data.dir relative, as configs/digits.py has it: the rerun below starts elsewhere.
    config = trained_run.tiny_config('data')
    config.checkpoint.every_steps = 1000  # no save before the end
    workdir = os.path.join(root, 'run')
    with contextlib.chdir(root), self.assertRaisesRegex(errors.UserError, 'is damaged'), \
        mock.patch.object(fingerprint, 'of_dataset', fingerprint_then_damage):
      trainer.train_and_evaluate(config, workdir)
    steps = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                       read_only=True).all_steps()
    self.assertEqual(steps, [trained_run.STEPS])

    shutil.copy(os.path.join(root, 'val_backup'), os.path.join(data, val))
    elsewhere = self.create_tempdir().full_path
    with contextlib.chdir(elsewhere):
      last = trainer.train_and_evaluate(config, workdir)
    # The relative data.dir named root/data when the run started: not prepared again here.
    self.assertFalse(os.path.exists(os.path.join(elsewhere, 'data')))
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['data']['dir'], data)
    self.assertEqual(last['step'], trained_run.STEPS)
    records = metric_log.read_metrics(workdir)
    self.assertEqual([r['step'] for r in records if r['kind'] == 'eval'], [trained_run.STEPS])
    # Not trained again: each step's train record was written once, by the first run.
    train_steps = [r['step'] for r in records if r['kind'] == 'train']
    self.assertEqual(train_steps, sorted(set(train_steps)))


if __name__ == '__main__':
  absltest.main()
