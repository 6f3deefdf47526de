"""Workdir files that are not what the program wrote: one line, or set aside, never a traceback.

A lock file of bytes no run writes is taken over; a folder where the lock goes is refused
(by the run and by its dry run); a checkpoint whose metrics or metadata file is not the
JSON orbax wrote is moved to checkpoints/damaged/ by a resume and refused in one line by
a reader; config.json, the config history and dataset_info.json of the wrong shape are
one line naming the file.
"""

import json
import os
import shutil
import time

from absl.testing import absltest
import jax.numpy as jnp

from alexnet_jax.core import errors
from alexnet_jax.storage import checkpoint_files
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import lockfile
from alexnet_jax.storage import metric_log
from alexnet_jax.storage import workdir_files


class DamagedLockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    self.path = os.path.join(self.folder, 'run.lock')

  def write(self, data: bytes) -> None:
    with open(self.path, 'wb') as f:
      f.write(data)

  def test_non_utf8_lock_is_taken_over_at_once(self):
    self.write(b'\xff\xfe\x80 not a lock \xc3')
    lock = lockfile.Lock(self.path)
    gone = lock.acquire()
    try:
      self.assertEqual(gone.host, 'unknown')
      with open(self.path) as f:
        self.assertEqual(lockfile.Holder.parse(f.read()).token, lock.holder.token)
    finally:
      lock.release()
    self.assertFalse(os.path.exists(self.path))

  def test_json_of_another_shape_is_taken_over(self):
    for text in (b'[1, 2]', b'nope', b'{"format": "alexnet_jax.lock/1", "pid": 99999999999}'):
      self.write(text)
      lock = lockfile.Lock(self.path)
      self.assertIsNotNone(lock.acquire(), text)
      lock.release()

  def test_a_lock_being_written_is_not_taken_over(self):
    for text in (b'', b'{"format": "alexnet_jax.lock/1", "ho'):
      self.write(text)
      with self.assertRaises(lockfile.LockHeld):
        lockfile.Lock(self.path).acquire()

  def test_dry_run_status_names_a_damaged_lock(self):
    self.write(b'\xff\xfe')
    self.assertEqual(workdir_files.lock_status(self.folder),
                     'a damaged lock file that no run wrote (stale: it will be taken over)')

  def test_a_folder_where_the_lock_goes_is_one_line(self):
    os.makedirs(os.path.join(self.path, 'inside'))
    expected = (f'{self.path} is not a regular file (a folder, link, FIFO or socket), so no '
                f'run can lock the workdir {self.folder}: a run writes its lock file there. '
                'Move it away, or use another --workdir')
    with self.assertRaisesWithLiteralMatch(errors.UserError, expected):
      with workdir_files.hold_lock(self.folder):
        pass
    with self.assertRaisesWithLiteralMatch(errors.UserError, expected):
      workdir_files.lock_status(self.folder)
    self.assertTrue(os.path.isdir(os.path.join(self.path, 'inside')))

  def test_a_fifo_where_the_lock_goes_is_refused_without_opening_it(self):
    os.mkfifo(self.path)
    start = time.monotonic()
    with self.assertRaises(errors.UserError):
      workdir_files.lock_status(self.folder)
    self.assertLess(time.monotonic() - start, 10)


class DamagedCheckpointFilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = os.path.join(self.create_tempdir().full_path, 'checkpoints')
    with checkpointing.Checkpointer(self.folder, async_save=False) as ckpt:
      for step, error in ((1, 0.5), (2, 0.4)):
        ckpt.save(step, {'w': jnp.full((2,), step, jnp.float32)}, meta={'epoch': step},
                  val_error=error)
    self.metrics = os.path.join(self.folder, '2', 'metrics', 'metrics')

  def damage(self, relative: str, data) -> None:
    path = os.path.join(self.folder, '2', relative)
    (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
    if data is None:
      os.makedirs(path)
    else:
      with open(path, 'wb') as f:
        f.write(data)

  def test_resume_moves_a_checkpoint_with_a_bad_metrics_file_aside(self):
    self.damage(os.path.join('metrics', 'metrics'), b'nope\n')
    with checkpointing.Checkpointer(self.folder, async_save=False) as ckpt:
      self.assertEqual(ckpt.all_steps(), [1])
      state, meta = ckpt.restore({'w': jnp.zeros((2,), jnp.float32)})
    self.assertEqual(meta, {'epoch': 1})
    self.assertEqual(state['w'].tolist(), [1.0, 1.0])
    moved = os.listdir(os.path.join(self.folder, checkpointing.DAMAGED_DIR))
    self.assertLen(moved, 1)
    self.assertStartsWith(moved[0], '2-')

  def test_a_reader_refuses_in_one_line_and_moves_nothing(self):
    self.damage(os.path.join('metrics', 'metrics'), b'nope\n')
    with self.assertRaises(checkpointing.CheckpointError) as caught:
      checkpointing.Checkpointer(self.folder, read_only=True)
    self.assertEqual(str(caught.exception).splitlines()[0], str(caught.exception))
    self.assertIn(f'{self.metrics} is not JSON', str(caught.exception))
    self.assertEqual(sorted(os.listdir(self.folder)), ['1', '2'])

  def test_each_wrong_shape_is_found(self):
    metadata = os.path.join(self.folder, '2', '_CHECKPOINT_METADATA')
    for relative, data, problem in (
        (os.path.join('metrics', 'metrics'), b'[1]', 'holds a JSON list, not an object'),
        (os.path.join('metrics', 'metrics'), b'{"val_error": "x"}',
         "holds val_error='x', not a number"),
        (os.path.join('metrics', 'metrics'), None, 'is not a regular file'),
        ('_CHECKPOINT_METADATA', b'\xff\xfe', 'is not JSON (UnicodeDecodeError: '),
        ('_CHECKPOINT_METADATA', b'7', 'holds a JSON int, not an object')):
      self.damage(relative, data)
      found = checkpoint_files.unreadable_open_files(self.folder)
      self.assertLen(found, 1, relative)
      step, path, what = found[0]
      self.assertEqual((step, path), (2, os.path.join(self.folder, '2', relative)))
      self.assertStartsWith(what, problem)
      self.damage(relative, b'{}')
    self.assertEqual(checkpoint_files.unreadable_open_files(self.folder), [])
    self.assertTrue(os.path.isfile(metadata))


class WorkdirJsonFilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = self.create_tempdir().full_path

  def put(self, name: str, data) -> str:
    path = os.path.join(self.workdir, name)
    if data is None:
      os.makedirs(path)
    else:
      with open(path, 'wb') as f:
        f.write(data)
    return path

  def test_config_json(self):
    for data in (None, b'\xff\xfe', b'[1]'):
      path = self.put('config.json', data)
      with self.assertRaises(errors.InputError) as caught:
        workdir_files.load_config_dict(self.workdir)
      self.assertStartsWith(str(caught.exception), path)
      (os.rmdir if data is None else os.remove)(path)

  def test_config_history(self):
    for data in (None, b'\xff\n', b'[1]\n', b'{"step": "x", "changes": {}}\n', b'{"st\n'):
      path = self.put('config_history.jsonl', data)
      with self.assertRaises(errors.InputError) as caught:
        workdir_files.read_config_history(self.workdir)
      self.assertStartsWith(str(caught.exception), path)
      (os.rmdir if data is None else os.remove)(path)
    # A last line cut short without its newline is a start killed while writing it: skipped.
    self.put('config_history.jsonl', json.dumps({'step': 3, 'changes': {}}).encode() + b'\n{"st')
    self.assertEqual(workdir_files.read_config_history(self.workdir), [{'step': 3, 'changes': {}}])

  def test_metrics_jsonl(self):
    self.put('metrics.jsonl', b'{}\n[1]\n\xff\xfe\n{"kind": "train", "step": 2}\n7\n')
    self.assertEqual(metric_log.read_metrics(self.workdir), [{'kind': 'train', 'step': 2}])
    os.remove(os.path.join(self.workdir, 'metrics.jsonl'))
    path = self.put('metrics.jsonl', None)
    with self.assertRaisesWithLiteralMatch(
        errors.InputError, f"{path} is not a regular file; it should hold the run's metrics "
        '(one JSON record a line): move it away'):
      metric_log.read_metrics(self.workdir)

  def test_dataset_info(self):
    for data in (None, b'\xff\xfe', b'[1]', b'7'):
      path = self.put('dataset_info.json', data)
      with self.assertRaisesRegex(errors.InputError, 'dataset description stored in'):
        workdir_files.load_dataset_info(self.workdir)
      (os.rmdir if data is None else os.remove)(path)


if __name__ == '__main__':
  absltest.main()
