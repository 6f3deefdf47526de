"""Writing a workdir file so that a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable


def atomic_write(path: str, write: Callable[[IO[Any]], Any], mode: str = 'w', *,
                 fsync: bool = False) -> None:
  """Calls `write(f)` on a temporary file beside `path`, then renames it to `path`.

  The file gets mode 0644 like the workdir's other files (mkstemp creates 0600).
  fsync: also flush it to the disk before the rename (for a file being replaced
  whose old content is about to be dropped).
  """
  folder = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
