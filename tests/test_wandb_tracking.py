"""Weights & Biases (config.log.wandb): off costs nothing; a killed and resumed run is one W&B run.

Offline (WANDB_MODE=offline): the W&B run files under WORKDIR/wandb/ are read back
with a small reader of their record format (leveldb's log blocks of protobuf
`Record`s), independent of the code under test.
"""

import glob
import json
import os
import shutil
import sys
import tempfile
from unittest import mock

from absl.testing import absltest

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.training import trainer
from tests import trained_run

_ABSENT = object()
_BLOCK = 32768  # leveldb log block
_FILE_HEADER = 7  # ':W&B', magic, version


def wandb_records(path: str) -> list:
  """The protobuf Records of one .wandb file."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  pos, chunks, pending = _FILE_HEADER, [], b''
  while pos + 7 <= len(data):
    if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
      pos += _BLOCK - pos % _BLOCK
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
    if kind == 0:
      break
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind == 1:  # full
      chunks.append(chunk)
    elif kind == 2:  # first
      pending = chunk
    elif kind == 3:  # middle
      pending += chunk
    else:  # last
      chunks.append(pending + chunk)
  return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def offline_runs(workdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*', 'run-*.wandb')))


def metric_lines(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


class WandbOffTest(absltest.TestCase):

  def test_off_and_absent_package_import_nothing(self):
    data = self.create_tempdir().full_path
    config = trained_run.tiny_config(data)
    config.num_train_steps = 1
    # An import of wandb raises while sys.modules maps it to None: nothing tries one. (Only
    # that key is restored after: patch.dict would also drop the modules the run imports.)
    saved = sys.modules.get('wandb', _ABSENT)
    sys.modules['wandb'] = None
    try:
      trainer.train_and_evaluate(config, os.path.join(self.create_tempdir().full_path, 'run'))
      self.assertIsNone(sys.modules['wandb'])
      config.log.wandb.project = 'alexnet'
      with self.assertRaisesRegex(errors.InputError,
                                  r"config.log.wandb.project is 'alexnet' but the wandb package "
                                  'is not installed: pip install wandb'):
        resolution.load(config)
    finally:
      if saved is _ABSENT:
        del sys.modules['wandb']
      else:
        sys.modules['wandb'] = saved

  def test_bad_mode_is_refused(self):
    config = trained_run.tiny_config('unused')
    config.log.wandb.mode = 'sometimes'
    with self.assertRaisesRegex(errors.InputError, 'config.log.wandb.mode must be one of'):
      resolution.load(config)


class WandbResumeTest(absltest.TestCase):
  """A run, killed after it logged step 4 but before its step-4 checkpoint, then resumed."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp(prefix='alexnet_wandb_')
    cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
    cls.workdir = os.path.join(root, 'run')
    config = trained_run.tiny_config(os.path.join(root, 'data'))
    config.log.wandb.project = 'alexnet-test'
    with mock.patch.dict(os.environ, {'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'}):
      trainer.train_and_evaluate(config, cls.workdir)
      cls.first_lines = metric_lines(cls.workdir)
      # The kill: the step-4 checkpoint never completed; its metrics were logged.
      shutil.rmtree(os.path.join(cls.workdir, 'checkpoints', str(trained_run.STEPS)))
      config.log.wandb.name = 'renamed on resume'  # an accepted change
      trainer.train_and_evaluate(config, cls.workdir)
    cls.runs = offline_runs(cls.workdir)
    cls.records = {path: wandb_records(path) for path in cls.runs}

  def of_type(self, kind: str) -> list:
    return [r for rs in self.records.values() for r in rs if r.WhichOneof('record_type') == kind]

  def test_two_starts_are_one_wandb_run(self):
    self.assertLen(self.runs, 2)
    ids = {r.run.run_id for r in self.of_type('run')}
    self.assertLen(ids, 1)
    with open(os.path.join(self.workdir, 'wandb_run.json')) as f:
      self.assertEqual(ids, {json.load(f)['id']})

  def test_each_step_once_and_as_in_metrics_jsonl(self):
    logged = {}  # (step, key) -> value, over both starts
    for record in self.of_type('history'):
      for item in record.history.item:
        key = '/'.join(item.nested_key) or item.key
        if key.startswith('_'):
          continue
        point = (record.history.step.num, key)
        self.assertNotIn(point, logged, 'a step sent twice')
        logged[point] = json.loads(item.value_json)
    want = {}
    for line in metric_lines(self.workdir):
      for key, value in line.items():
        if key not in ('step', 'kind', 'time'):
          want[(line['step'], f'{line["kind"]}/{key}')] = value
    self.assertEqual(set(logged), set(want))
    for point, value in want.items():
      if not point[1].endswith('images_per_sec'):  # timing differs between the two starts
        self.assertEqual(logged[point], value, point)
    self.assertEqual(self.first_lines[-1]['step'], trained_run.STEPS)  # the killed run logged it

  def test_config_and_run_record_uploaded(self):
    config_updates = [{i.key: json.loads(i.value_json) for i in r.config.update}
                      for r in self.of_type('config')]
    with open(os.path.join(self.workdir, 'config.json')) as f:
      stored = json.load(f)
    with open(os.path.join(self.workdir, 'run_record.jsonl')) as f:
      run_records = [json.loads(line) for line in f]
    last = [u for u in config_updates if 'run_record' in u][-1]
    self.assertEqual(json.loads(json.dumps(last['config'])), stored)
    self.assertEqual(last['run_record'], run_records[-1])
    self.assertEqual([r['step'] for r in run_records], [0, trained_run.CHECKPOINT_EVERY])
    saved = [f.path for r in self.of_type('files') for f in r.files.files]
    self.assertIn('run_record.jsonl', saved)


if __name__ == '__main__':
  absltest.main()
