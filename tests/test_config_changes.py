"""A resume's config, field by field: every field has a decision, and each decision is kept.

The table (alexnet_jax/resume_changes.py, DECISIONS) must name every field of the
configs; a field added without a decision fails `test_every_config_field_has_a_decision`.
Then, for every field of the table, a changed value on resume is either refused (one
error naming the field, the workdir untouched) or accepted and recorded (a line in
config_history.jsonl with the step, and config.json rewritten).
"""

import copy
import hashlib
import json
import os
import re

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from alexnet_jax.config import resume_changes
from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import workdir_files
from configs import digits
from configs import imagenet
from tests import test_train
from tests import trained_run

STEP = 7  # the step of the fake finished checkpoint the resumes start from


def config_fields(config) -> set[str]:
  return set(resume_changes.flatten(config.to_dict()))


def fields_without_decision(config) -> list[str]:
  return sorted(config_fields(config) - set(resume_changes.DECISIONS))


def changed(value):
  """A different value of the same kind."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value * 2 if value else 1.0
  if isinstance(value, str):
    return value + '_changed'
  if isinstance(value, (list, tuple)):
    return list(value) + [list(value[-1]) if value and isinstance(value[-1], (list, tuple))
                          else 1]
  if value is None:
    return 1
  raise TypeError(f'no changed value for {value!r}')


def set_field(tree: dict, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def digest(folder: str) -> dict[str, str]:
  out = {}
  for dirpath, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(dirpath, name), 'rb') as f:
        out[os.path.relpath(os.path.join(dirpath, name), folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def resumable_workdir(test: absltest.TestCase, stored: dict) -> str:
  """A workdir with `stored` as its config.json and a finished checkpoint of STEP."""
  workdir = test.create_tempdir().full_path
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(stored, f)
  os.makedirs(os.path.join(workdir, 'checkpoints', str(STEP)))
  return workdir


class TableTest(absltest.TestCase):

  def test_every_config_field_has_a_decision(self):
    for config in (imagenet.get_config(), digits.get_config(),
                   test_train.tiny_config('/data'), trained_run.tiny_config('/data')):
      self.assertEqual(fields_without_decision(config), [],
                       'give each new config field a decision in resume_changes.DECISIONS')

  def test_the_walk_catches_a_field_without_a_decision(self):
    config = imagenet.get_config()
    config.data.new_knob = 3
    config.model.pool_size = 3  # in the table already: fields other engineers are adding
    self.assertEqual(fields_without_decision(config), ['data.new_knob'])

  def test_decisions_are_refuse_or_accept_with_a_reason(self):
    for field, rule in resume_changes.DECISIONS.items():
      self.assertIn(rule.action, (resume_changes.REFUSE, resume_changes.ACCEPT), field)
      self.assertGreater(len(rule.reason), 10, field)

  def test_what_the_issue_names(self):
    # Fields that change the computation or the data order are refused; logging, checkpoint
    # cadence, the run's length, the eval cadence and the learning rate are not.
    refuse = ('seed', 'batch_size', 'model.width', 'model.towers', 'data.crop_size',
              'data.flip', 'data.lighting_std', 'data.source', 'optim.momentum',
              'optim.weight_decay', 'optim.schedule', 'data.random_crop', 'model.pool_size',
              'model.pool_stride', 'model.conv_widths')
    accept = ('num_epochs', 'eval_every_epochs', 'checkpoint.every_steps', 'log.every_steps',
              'optim.learning_rate', 'mesh.model', 'mesh.data', 'log.profile_steps')
    for field in refuse:
      self.assertEqual(resume_changes.decision(field).action, resume_changes.REFUSE, field)
    for field in accept:
      self.assertEqual(resume_changes.decision(field).action, resume_changes.ACCEPT, field)


  def test_the_accepted_fields_are_the_ones_docs_list(self):
    # docs/reliability.md, "Resuming with another config" is what the refusal line points at.
    with open(os.path.join(test_train.REPO, 'docs', 'reliability.md')) as f:
      text = f.read()
    section = text[text.index('- **Accepted and recorded**'):]
    section = section[:section.index('\n- **', 1)]
    listed = set(re.findall(r'`([a-z_.]+)`', section)) - {'config.json', 'config.py'}
    accepted = {f for f, d in resume_changes.DECISIONS.items()
                if d.action == resume_changes.ACCEPT}
    self.assertEqual(listed, accepted)


class FieldChangeTest(parameterized.TestCase):
  """For every field of the table: a changed value on resume is refused, or recorded."""

  @parameterized.named_parameters((field.replace('.', '_'), field)
                                  for field in sorted(resume_changes.DECISIONS))
  def test_a_change_is_refused_or_recorded(self, field):
    stored = workdir_files._plain(imagenet.get_config())  # pylint: disable=protected-access
    fields = resume_changes.flatten(stored)
    if field not in fields:  # a field another config (or another branch) adds
      set_field(stored, field, 3)
      fields[field] = 3
    current = copy.deepcopy(stored)
    new_value = changed(fields[field])
    set_field(current, field, new_value)
    workdir = resumable_workdir(self, stored)
    before = digest(workdir)
    line = f'{field}: {json.dumps(fields[field])} -> {json.dumps(new_value)}'
    if resume_changes.decision(field).action == resume_changes.REFUSE:
      with self.assertRaises(errors.InputError) as ctx:
        workdir_files.check_resume(workdir, current)
      self.assertIn(line, str(ctx.exception))
      self.assertIn(f'--config={workdir}/config.py', str(ctx.exception))
      self.assertIn('another --workdir', str(ctx.exception))
      self.assertEqual(digest(workdir), before, 'a refused resume wrote to the workdir')
      return
    accepted = workdir_files.check_resume(workdir, current)
    self.assertEqual([(c.field, c.stored, c.current) for c in accepted],
                     [(field, fields[field], new_value)])
    self.assertEqual(digest(workdir), before, 'checking wrote to the workdir')
    workdir_files.record_config(workdir, current, accepted, step=STEP)
    history = workdir_files.read_config_history(workdir)
    self.assertLen(history, 1)
    self.assertEqual(history[0]['step'], STEP)
    self.assertEqual(history[0]['changes'], {field: [fields[field], new_value]})
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(resume_changes.flatten(json.load(f))[field], new_value)


class ResumeCheckTest(absltest.TestCase):

  def test_every_refused_difference_is_listed_in_one_error(self):
    stored = workdir_files._plain(imagenet.get_config())  # pylint: disable=protected-access
    current = copy.deepcopy(stored)
    current['batch_size'], current['model']['width'] = 64, 0.5
    current['log']['every_steps'] = 7  # accepted: not in the error
    with self.assertRaises(errors.InputError) as ctx:
      workdir_files.check_resume(resumable_workdir(self, stored), current)
    message = str(ctx.exception)
    self.assertIn('batch_size: 128 -> 64; model.width: 1.0 -> 0.5.', message)
    self.assertNotIn('log.every_steps', message)
    self.assertLen(message.splitlines(), 1)

  def test_new_fields_are_accepted(self):
    # An unknown field is refused instead: tests/test_config_typos.py.
    stored = workdir_files._plain(imagenet.get_config())  # pylint: disable=protected-access
    current = copy.deepcopy(stored)
    del stored['data']['random_crop']  # a run started before the program had this field
    self.assertTrue(current['data']['random_crop'])
    accepted = workdir_files.check_resume(resumable_workdir(self, stored), current)
    self.assertEqual(sorted(c.field for c in accepted), ['data.random_crop'])

  def test_without_a_checkpoint_nothing_is_resumed_or_refused(self):
    stored = workdir_files._plain(imagenet.get_config())  # pylint: disable=protected-access
    workdir = resumable_workdir(self, stored)
    os.rmdir(os.path.join(workdir, 'checkpoints', str(STEP)))
    os.makedirs(os.path.join(workdir, 'checkpoints', f'{STEP}.orbax-checkpoint-tmp-1'))
    current = copy.deepcopy(stored)
    current['batch_size'] = 64
    self.assertEqual(workdir_files.check_resume(workdir, current), [])


def _info(**overrides) -> input_pipeline.DatasetInfo:
  fields = dict(num_classes=2, class_names=('cat', 'dog'), class_descriptions=('cat', 'dog'),
                split_sizes={'train': 10, 'val': 4}, image_size=8,
                mean_image=np.full((8, 8, 3), 100, np.float32),
                eigvals=np.ones(3, np.float32), eigvecs=np.eye(3, dtype=np.float32),
                stats_source='/data/a/stats.npz')
  fields.update(overrides)
  return input_pipeline.DatasetInfo(**fields)


class DatasetCheckTest(absltest.TestCase):

  def workdir(self) -> str:
    workdir = self.create_tempdir().full_path
    os.makedirs(os.path.join(workdir, 'checkpoints', '3'))
    workdir_files.save_dataset_info(workdir, _info())
    return workdir

  def test_the_same_dataset_in_another_folder_is_accepted(self):
    workdir_files.check_dataset(self.workdir(), _info(stats_source='/scratch/copy/stats.npz'))

  def test_another_dataset_is_refused(self):
    workdir = self.workdir()
    for other, words in ((_info(class_names=('cat', 'cow')), 'classes 2 (cat, dog) -> 2 (cat, cow)'),
                         (_info(split_sizes={'train': 12, 'val': 4}), 'split sizes'),
                         (_info(mean_image=np.full((8, 8, 3), 101, np.float32)), 'mean image')):
      with self.assertRaises(errors.InputError) as ctx:
        workdir_files.check_dataset(workdir, other)
      self.assertIn(words, str(ctx.exception))
      self.assertIn('point config.data.dir at that dataset', str(ctx.exception))


if __name__ == '__main__':
  absltest.main()
