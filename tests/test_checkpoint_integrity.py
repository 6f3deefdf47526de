"""Checkpoints verified after write and before use.

Checksums of the arrays (checked against an independent numpy computation, and
catching a 4 KB range overwritten inside an OCDBT data file), the first save read
back, folder names orbax cannot keep checkpoints under, the report of a failed
write, and readers beside a live run that deletes checkpoints.
"""

import errno
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint._src.path import atomicity

from alexnet_jax.evaluation import finished_run
from alexnet_jax.core import errors
from alexnet_jax.storage import checkpoint_files
from alexnet_jax.storage import checkpoint_integrity
from alexnet_jax.storage import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tempdir(test: absltest.TestCase) -> str:
  path = tempfile.mkdtemp(prefix='alexnet_integrity_test_')
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def make_state(seed: int, sharded: bool = True) -> dict:
  """A train-state-like pytree, its kernel split over two devices (or on one).

  The kernel is random bits: zstd stores them as they are, so an overwritten byte
  range decodes without an error and only the checksums can tell. Split, its two
  halves are two zstd frames, and the middle of the file is their boundary: the
  byte range tests keep it whole, 128 KB, one zstd block.
  """
  rng = np.random.default_rng(seed)
  mesh = jax.make_mesh((2,), ('model',))
  kernel = rng.integers(0, 2**32, size=(128, 256), dtype=np.uint32).view(np.float32)
  if sharded:
    kernel = jax.device_put(kernel, NamedSharding(mesh, P(None, 'model')))
  return {'step': jnp.int32(seed),
          'params': {'kernel': jnp.asarray(kernel),
                     'bias': jnp.asarray(rng.normal(size=(256,)).astype(np.float32))}}


def abstract_of(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def reference_checksum(x: np.ndarray) -> str:
  """The documented checksum of a 32-bit array, in numpy: no jax, no sharding."""
  words = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
  index = np.arange(words.size, dtype=np.uint32)

  def mix(v):
    v = v ^ (v >> np.uint32(16))
    v = v * np.uint32(0x85EBCA6B)
    v = v ^ (v >> np.uint32(13))
    v = v * np.uint32(0xC2B2AE35)
    return v ^ (v >> np.uint32(16))

  sums = [int(np.sum(mix(words ^ mix(index ^ np.uint32(seed))).astype(np.uint64))) % 2**32
          for seed in (0x9E3779B9, 0x7F4A7C15)]
  return f'{sums[0]:08x}{sums[1]:08x}'


def overwrite_middle_of_largest_data_file(step_dir: str) -> str:
  """4 KB of 0xff (NaN as float32) in the middle of the largest OCDBT data file."""
  files = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
  path = max(files, key=os.path.getsize)
  size = os.path.getsize(path)
  assert size > 8192, size
  with open(path, 'r+b') as f:
    f.seek(size // 2 - 2048)
    f.write(b'\xff' * 4096)
  return path


def reader_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'checkpoint': {
      'keep': 3, 'keep_best': True, 'every_steps': 0, 'start_fresh_if_unusable': False}})


class TestCase(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.assertGreaterEqual(jax.device_count(), 2, 'needs 2 CPU devices (tests/__init__.py)')
    self.workdir = make_tempdir(self)

  def checkpointer(self, folder: str = '', **kwargs) -> checkpointing.Checkpointer:
    ckpt = checkpointing.Checkpointer(
        folder or os.path.join(self.workdir, checkpointing.CHECKPOINT_DIR), **kwargs)
    self.addCleanup(ckpt.close)
    return ckpt

  def save_two(self) -> tuple[checkpointing.Checkpointer, dict, dict]:
    ckpt = self.checkpointer()
    state1, state2 = make_state(1, sharded=False), make_state(2, sharded=False)
    ckpt.save(1, state1, meta={'epoch': 1})
    ckpt.save(2, state2, meta={'epoch': 2})
    ckpt.wait()
    return ckpt, state1, state2


class ChecksumTest(TestCase):

  def test_matches_an_independent_computation_whatever_the_layout(self):
    state = make_state(3)
    host = jax.tree.map(np.asarray, state)
    expected = {"['step']": reference_checksum(host['step']),
                "['params']['kernel']": reference_checksum(host['params']['kernel']),
                "['params']['bias']": reference_checksum(host['params']['bias'])}
    self.assertEqual(checkpoint_integrity.checksums(state), expected)  # sharded over 2 devices
    self.assertEqual(checkpoint_integrity.checksums(host), expected)  # numpy, one device

  def test_every_single_word_change_is_caught(self):
    state = jax.tree.map(np.asarray, make_state(4))
    sums = checkpoint_integrity.checksums(state)
    for flat in (0, 1, 4097, 128 * 256 - 1):
      kernel = state['params']['kernel'].copy()
      kernel.reshape(-1).view(np.uint32)[flat] ^= np.uint32(1)  # the lowest mantissa bit
      changed = {**state, 'params': {**state['params'], 'kernel': kernel}}
      self.assertEqual(checkpoint_integrity.mismatches(sums, changed), ["['params']['kernel']"])


class OverwrittenByteRangeTest(TestCase):

  def test_resume_moves_it_aside_and_uses_the_previous_checkpoint(self):
    ckpt, state1, _ = self.save_two()
    overwrite_middle_of_largest_data_file(ckpt.step_path(2))
    with self.assertLogs('absl', level='WARNING') as logs:
      restored, meta = ckpt.restore(abstract_of(state1))
    self.assertEqual(meta, {'epoch': 1})
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored),
                 jax.tree.map(np.asarray, state1))
    warning = next(line for line in logs.output if 'step 2' in line)
    self.assertIn('damaged data: 1 array differs from the checksums stored at save', warning)
    self.assertNotIn('learning_rate', '\n'.join(logs.output))
    self.assertEqual(ckpt.all_steps(), [1])
    moved = os.listdir(os.path.join(ckpt.directory, checkpointing.DAMAGED_DIR))
    self.assertEqual([name.split('-')[0] for name in moved], ['2'])

  def test_a_reader_reports_it_in_one_line_and_moves_nothing(self):
    ckpt, state1, _ = self.save_two()
    overwrite_middle_of_largest_data_file(ckpt.step_path(2))
    for step in (2, None):  # asked for, and the newest
      with self.assertRaises(checkpointing.CheckpointError) as caught:
        finished_run.restore_state(self.workdir, reader_config(), step, abstract_of(state1))
      message = str(caught.exception)
      self.assertNotIn('\n', message)
      self.assertIn(ckpt.step_path(2), message)
      self.assertIn('damaged data: 1 array differs from the checksums stored at save', message)
      self.assertIn('--step=1 selects the one before it', message)
    self.assertEqual(checkpointing.finished_steps(self.workdir), [1, 2])


class FirstSaveReadBackTest(TestCase):

  def test_a_folder_orbax_cannot_read_back_fails_at_the_first_save(self):
    # Under a name with brackets orbax writes checkpoints it cannot read; with the name
    # check lifted, the read-back is what catches it.
    folder = os.path.join(self.workdir, 'exp[bs256]', checkpointing.CHECKPOINT_DIR)
    with mock.patch.object(checkpoint_integrity, 'GLOB_CHARACTERS', ''):
      ckpt = self.checkpointer(folder)
      with self.assertRaises(checkpointing.CheckpointError) as caught:
        ckpt.save(1, make_state(1), meta={'epoch': 1})
    message = str(caught.exception)
    self.assertNotIn('\n', message)
    self.assertRegex(message, r'^checkpoint of step 1 was written to .* but does not read back')
    self.assertEqual(ckpt.all_steps(), [])

  def test_only_the_first_save_is_read_back(self):
    ckpt = self.checkpointer()
    with mock.patch.object(checkpointing.Checkpointer, '_restore_step',
                           autospec=True, side_effect=checkpointing.Checkpointer._restore_step
                           ) as restore_step:
      for step in (1, 2, 3):
        self.assertTrue(ckpt.save(step, make_state(step), meta={'epoch': step}))
        self.assertEqual(restore_step.call_count, 1)
    self.assertEqual(ckpt.all_steps(), [1, 2, 3])


class GlobCharactersInNameTest(TestCase):

  def test_checkpointer_refuses_before_creating_anything(self):
    workdir = os.path.join(self.workdir, 'exp[bs256]')
    with self.assertRaisesRegex(errors.InputError, r'contains \[ \]: orbax cannot write'):
      checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
    self.assertFalse(os.path.exists(workdir))

  def test_launch_refuses_in_one_line_before_writing(self):
    workdir = os.path.join(self.workdir, 'runs', 'exp[bs256]')
    result = subprocess.run(
        [sys.executable, 'launch.py', '--config=configs/digits.py', f'--workdir={workdir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertRegex(result.stderr.strip().splitlines()[-1],
                     r'^error: .*exp\[bs256\]/checkpoints contains \[ \]: orbax cannot write')
    self.assertNotIn('Traceback', result.stderr)
    self.assertFalse(os.path.exists(os.path.dirname(workdir)))


async def _full_disk(self):  # pylint: disable=unused-argument
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FailedWriteReportTest(TestCase):

  def test_keep_one_names_the_checkpoints_still_on_disk(self):
    for keep_best in (True, False):
      with self.subTest(keep_best=keep_best):
        ckpt = self.checkpointer(os.path.join(self.workdir, f'best_{keep_best}'), keep=1,
                                 keep_best=keep_best)
        ckpt.save(1, make_state(1), meta={}, val_error=0.1)
        ckpt.save(2, make_state(2), meta={}, val_error=0.5)
        ckpt.wait()
        on_disk = checkpoint_files.step_folders(ckpt.directory)
        # The commit of step 3 fails in the background, as on a full disk.
        with mock.patch.object(atomicity.AtomicRenameTemporaryPath, 'finalize', _full_disk):
          with self.assertRaises(checkpointing.CheckpointWriteError) as caught:
            ckpt.save(3, make_state(3), meta={}, val_error=0.7)
            ckpt.wait()
        message = str(caught.exception)
        self.assertNotIn('no earlier checkpoint exists', message)
        kept = ', '.join(map(str, on_disk))
        self.assertIn(f'the checkpoints written before it ({kept}) are intact', message)
        self.assertTrue(message.endswith(f'resume from step {on_disk[-1]}'), message)
        reopened = self.checkpointer(ckpt.directory)
        self.assertEqual(reopened.restore(abstract_of(make_state(1)))[1], {})
        self.assertEqual(reopened.latest_step(), on_disk[-1])


class ReaderBesideALiveRunTest(TestCase):
  """The live run deletes the checkpoint a reader is reading (its retention policy)."""

  def read_while_deleting(self, step):
    ckpt, state1, _ = self.save_two()
    restore = checkpointing.Checkpointer.restore

    def deleted_during_read(self_, *args, **kwargs):
      shutil.rmtree(ckpt.step_path(2), ignore_errors=True)
      return restore(self_, *args, **kwargs)

    with mock.patch.object(checkpointing.Checkpointer, 'restore', deleted_during_read):
      return finished_run.restore_state(self.workdir, reader_config(), step,
                                        abstract_of(state1)), state1

  def test_the_newest_is_read_again(self):
    (state, step), state1 = self.read_while_deleting(None)
    self.assertEqual(step, 1)
    np.testing.assert_array_equal(np.asarray(state['params']['kernel']),
                                  np.asarray(state1['params']['kernel']))

  def test_the_step_asked_for_is_named_in_one_line(self):
    with self.assertRaises(checkpointing.CheckpointError) as caught:
      self.read_while_deleting(2)
    message = str(caught.exception)
    self.assertNotIn('\n', message)
    self.assertRegex(message, r'^checkpoint of step 2 in .* was deleted while it was being read '
                              r'.*; it now has steps \[1\]$')


class HostAndDevicePathTest(absltest.TestCase):
  """One process sums on the host, several on the devices: a checkpoint saved by either
  must verify in the other, so both give the same checksum for every dtype a state holds."""

  def test_the_two_paths_agree(self):
    rng = np.random.default_rng(0)
    arrays = [jnp.asarray(rng.standard_normal((7, 5, 3)).astype(np.float32)),
              jnp.asarray(rng.integers(-5, 5, (11,), dtype=np.int32)),
              jnp.asarray(rng.standard_normal((4, 6)).astype(jnp.bfloat16)),
              jnp.asarray(np.array(3, np.int32)), jnp.asarray(rng.random((3, 3)) > 0.5),
              jax.random.key(3), jax.random.PRNGKey(5)]
    for array in arrays:
      # pylint: disable=protected-access
      with jax.set_mesh(None):
        device = np.asarray(jax.device_get(checkpoint_integrity._jitted_leaf_sums(array)))
      host = checkpoint_integrity._host_leaf_sums(array)
      np.testing.assert_array_equal(host, device, err_msg=str(array.dtype))


if __name__ == '__main__':
  absltest.main()
