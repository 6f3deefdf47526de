"""A checkpoint read stopped by a Ctrl-C or by a lost process is that stop, not damage.

Orbax wraps a KeyboardInterrupt that lands while it reads an array shard in an
Exception of its own; with several processes a restore is collective (orbax's
barriers, the reduction of the checksums), so a kill -9 of one process fails the
read of the others. In both cases the folder is as complete as before: it must
stay where it is for the next start, neither moved to checkpoints/damaged/ by
the first save's read-back nor by a resume. Each fault is planted where it
strikes: a KeyboardInterrupt inside orbax's shard read, a failed collective
where the checksums are compared.
"""

import os
import threading
import types
from unittest import mock

from absl.testing import absltest
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import serialization

from alexnet_jax.core import errors
from alexnet_jax.distributed import watch
from alexnet_jax.storage import checkpoint_files
from alexnet_jax.storage import checkpoint_integrity
from alexnet_jax.storage import checkpointing
from tests.helpers import checkpoints

LOST = 'process 1 of 2 was lost'


def lost_session() -> types.SimpleNamespace:
  """What watch.lost_peer reads once the watch has seen a process die."""
  lost = threading.Event()
  lost.set()
  return types.SimpleNamespace(lost=lost, lost_message=LOST)


def failing_collective():
  return mock.patch.object(checkpoint_integrity, 'verify', side_effect=RuntimeError(
      'Gloo AllReduce failed: Connection closed by peer'))


def ctrl_c_in_shard_read():
  """Ctrl-C (the default SIGINT action) while orbax awaits the read of an array shard."""
  async def interrupted(**_):
    raise KeyboardInterrupt
  return mock.patch.object(serialization, '_read_shard', side_effect=interrupted)


def abstract_of(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


class ReadThatFailsWithoutDamageTest(checkpoints.CheckpointTestCase):

  def assert_nothing_moved(self, ckpt: checkpointing.Checkpointer, steps: list[int]) -> None:
    self.assertEqual(checkpoint_files.step_folders(ckpt.directory), steps)
    self.assertFalse(os.path.exists(os.path.join(ckpt.directory, checkpointing.DAMAGED_DIR)))

  def saved_two(self, **kwargs) -> tuple[checkpointing.Checkpointer, dict]:
    ckpt = self.checkpointer(**kwargs)
    state = checkpoints.make_state(self.mesh)
    for step in (1, 2):
      ckpt.save(step, state, meta={'epoch': step})
    ckpt.wait()
    return ckpt, abstract_of(state)

  def test_orbax_wraps_a_ctrl_c_in_its_shard_read(self):
    # The premise: what reaches the Checkpointer is not a KeyboardInterrupt.
    ckpt, abstract = self.saved_two()
    errors.ignore_aborted_reads()  # as every Checkpointer.restore: the reads left unawaited
    with ctrl_c_in_shard_read(), ocp.StandardCheckpointer() as reader:
      with self.assertRaises(Exception) as caught:
        reader.restore(os.path.join(ckpt.step_path(2), 'state'), abstract)
    self.assertNotIsInstance(caught.exception, KeyboardInterrupt)
    self.assertTrue(errors.caused_by_ctrl_c(caught.exception))

  def test_ctrl_c_in_the_first_save_read_back_keeps_the_folder(self):
    ckpt = self.checkpointer()
    with ctrl_c_in_shard_read():
      with self.assertRaises(KeyboardInterrupt):
        ckpt.save(1, checkpoints.make_state(self.mesh), meta={'epoch': 1})
    self.assert_nothing_moved(ckpt, [1])

  def test_ctrl_c_in_a_resume_moves_no_checkpoint(self):
    ckpt, abstract = self.saved_two(start_fresh_if_unusable=True)
    with ctrl_c_in_shard_read():
      with self.assertRaises(KeyboardInterrupt):
        ckpt.restore(abstract)
      with self.assertRaises(KeyboardInterrupt):  # a reader asking for one step
        ckpt.restore(abstract, step=1)
    self.assert_nothing_moved(ckpt, [1, 2])
    _, meta = ckpt.restore(abstract)  # uninterrupted, the newest is restored as it was
    self.assertEqual(meta, {'epoch': 2})

  def test_lost_peer_in_the_first_save_read_back_is_reported_and_keeps_the_folder(self):
    ckpt = self.checkpointer()
    with mock.patch.object(watch, '_session', lost_session()), failing_collective():
      with self.assertRaises(watch.PeerLost) as caught:
        ckpt.save(1, checkpoints.make_state(self.mesh), meta={'epoch': 1})
    self.assertEqual(str(caught.exception), LOST)
    self.assert_nothing_moved(ckpt, [1])

  def test_the_same_read_back_failure_without_a_lost_peer_is_damage(self):
    ckpt = self.checkpointer()
    with failing_collective():
      with self.assertRaisesRegex(checkpointing.CheckpointError, 'does not read back'):
        ckpt.save(1, checkpoints.make_state(self.mesh), meta={'epoch': 1})
    self.assertEqual(checkpoint_files.step_folders(ckpt.directory), [])

  def test_lost_peer_in_a_resume_is_reported_and_moves_no_checkpoint(self):
    ckpt, abstract = self.saved_two(start_fresh_if_unusable=True)
    with mock.patch.object(watch, '_session', lost_session()), failing_collective():
      with self.assertRaises(watch.PeerLost):
        ckpt.restore(abstract)
    self.assert_nothing_moved(ckpt, [1, 2])
    _, meta = ckpt.restore(abstract)  # the peer back: the newest is restored as it was
    self.assertEqual(meta, {'epoch': 2})


class CausedByCtrlCTest(absltest.TestCase):

  def test_follows_causes_and_contexts(self):
    try:
      try:
        raise KeyboardInterrupt
      except BaseException as e:
        raise ValueError('wrapped') from e
    except ValueError as wrapped:
      self.assertTrue(errors.caused_by_ctrl_c(wrapped))
    try:
      try:
        raise KeyboardInterrupt
      except BaseException:
        raise RuntimeError('raised while handling it')  # pylint: disable=raise-missing-from
    except RuntimeError as during:
      self.assertTrue(errors.caused_by_ctrl_c(during))
    self.assertFalse(errors.caused_by_ctrl_c(OSError('truncated file')))


if __name__ == '__main__':
  absltest.main()
