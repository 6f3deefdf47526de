"""The one status line of a preparation: parts, images, rate and ETA (on stderr)."""

from __future__ import annotations

import sys
import time

from alexnet_jax.core import progress


class ProgressLine:
  """Parts, images, rate and ETA of a preparation on one status line (stderr)."""

  def __init__(self, total_work: int, total_parts: int, enabled: bool = True):
    self._total_work = max(total_work, 1)
    self._total_parts = total_parts
    self._line = None
    if enabled:
      # Redrawn twice a second on a terminal; a log file gets a line every 30 s.
      tty = sys.stderr.isatty()
      self._line = progress.StatusLine(sys.stderr if tty else None,
                                       min_interval=0.5 if tty else 30.0)
    self._start = time.monotonic()
    self.work = self.parts = self.images = 0

  def update(self, work: int, images: int) -> None:
    self.work += work
    self.parts += 1
    self.images += images
    if self._line is None:
      return
    final = self.parts == self._total_parts
    self._line.show(self._text(time.monotonic() - self._start), force=final)
    if final:
      self._line.close()

  def _text(self, elapsed: float) -> str:
    eta = progress.eta_seconds(self.work, self._total_work - self.work, elapsed)
    return (f'prepare: {100 * self.work / self._total_work:5.1f}%  '
            f'parts {self.parts}/{self._total_parts}  {self.images} images  '
            f'{self.images / max(elapsed, 1e-9):.0f} img/s  '
            f'elapsed {progress.format_duration(elapsed)}  '
            f'ETA {progress.format_duration(eta)}')
