"""What a failed checkpoint write or read was: the disk, a lost process, a Ctrl-C, or damage.

A write that fails is one line naming the cause and the checkpoints that are intact. A
read that fails is damage (the caller moves the folder aside) only when nothing else
explains it: a Ctrl-C or the loss of another process leaves the files as complete as
they were.
"""

from __future__ import annotations

import errno
from typing import Optional

from alexnet_jax.core import errors
from alexnet_jax.distributed import watch
from alexnet_jax.storage import checkpoint_files


class CheckpointError(errors.UserError, RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointWriteError(CheckpointError, OSError):
  """A checkpoint could not be written (a full disk, a lost mount); earlier ones are intact."""


def raise_if_not_damage(error: BaseException) -> None:
  """Raises what a failed read was when it says nothing of the checkpoint's files.

  A Ctrl-C that lands inside orbax's read of an array comes back as orbax's own
  Exception: it is raised as the KeyboardInterrupt it was. With several processes
  a restore is collective (orbax's barriers, the checksums' reduction), so it also
  fails when another process dies: watch.PeerLost (a failure the watch has no news of
  within its wait is the checkpoint's). Either way the folder is as complete as
  before; taken for damage, it would be moved aside and lost to the resume.
  """
  if errors.caused_by_ctrl_c(error):
    raise KeyboardInterrupt() from error
  lost = watch.lost_peer()
  if lost is not None:
    raise watch.PeerLost(lost) from error


def write_error(directory: str, step: Optional[int], error: BaseException
                ) -> CheckpointWriteError | watch.PeerLost:
  """A one-line report of a failed write (a full disk, a lost mount) of checkpoint `step`.

  In a multi-process run a write also fails when another process dies; then the
  disk is not the cause, and the watch of the processes reports the lost one.
  """
  lost = watch.lost_peer()
  if lost is not None:
    return watch.PeerLost(lost)
  text = str(error)
  if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left on device' in text:
    reason = f'no space left on the device of {directory}'
  else:
    reason = errors.first_line(error, 200)
  # From the folder, not orbax's list: a failed save leaves out of that list the
  # checkpoints its retention policy was about to delete, still on disk and restorable.
  kept = [s for s in checkpoint_files.step_folders(directory) if s != step]
  if kept:
    outcome = (f'the checkpoints written before it ({", ".join(map(str, kept))}) are intact: '
               f'make room and rerun to resume from step {kept[-1]}')
  else:
    outcome = 'no earlier checkpoint exists'
  what = 'a checkpoint' if step is None else f'checkpoint of step {step}'
  return CheckpointWriteError(f'{what} could not be written ({reason}); {outcome}')

