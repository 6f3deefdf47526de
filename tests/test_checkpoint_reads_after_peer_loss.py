"""A checkpoint read that fails because another process of the run died is that loss, not damage.

With several processes a restore is collective (orbax's barriers, the reduction of
the checksums), so a kill -9 of one process fails the read of the others. The
folder is as complete as before: it must stay where it is for the next start,
neither moved to checkpoints/damaged/ by the first save's read-back nor by a
resume. The cross-process failure is planted where the checksums are compared.
"""

import os
import threading
import types
from unittest import mock

from absl.testing import absltest
import jax

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


class ReadAfterPeerLossTest(checkpoints.CheckpointTestCase):

  def assert_nothing_moved(self, ckpt: checkpointing.Checkpointer, steps: list[int]) -> None:
    self.assertEqual(checkpoint_files.step_folders(ckpt.directory), steps)
    self.assertFalse(os.path.exists(os.path.join(ckpt.directory, checkpointing.DAMAGED_DIR)))

  def test_first_save_read_back_reports_the_peer_and_keeps_the_folder(self):
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

  def test_resume_reports_the_peer_and_moves_no_checkpoint(self):
    ckpt = self.checkpointer(start_fresh_if_unusable=True)
    state = checkpoints.make_state(self.mesh)
    for step in (1, 2):
      ckpt.save(step, state, meta={'epoch': step})
    ckpt.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    with mock.patch.object(watch, '_session', lost_session()), failing_collective():
      with self.assertRaises(watch.PeerLost):
        ckpt.restore(abstract)
    self.assert_nothing_moved(ckpt, [1, 2])
    _, meta = ckpt.restore(abstract)  # the peer back: the newest is restored as it was
    self.assertEqual(meta, {'epoch': 2})


if __name__ == '__main__':
  absltest.main()
