"""Console progress shared by training (metrics.ProgressReporter) and prepare.

Durations print as '02:03:04' ('1d 02:03:04' past a day, '?' when unknown), ETAs
extrapolate the pace measured so far, and `StatusLine` is the one status line: redrawn
in place on a terminal, or logged now and then where '\\r' would only garble a file.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, TextIO

from absl import logging


def format_duration(seconds: Optional[float]) -> str:
  """'1d 02:03:04', '02:03:04' or '?' for an unknown duration."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(round(seconds))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  clock = f'{hours:02d}:{minutes:02d}:{secs:02d}'
  return f'{days}d {clock}' if days else clock


def eta_seconds(done: float, remaining: float, elapsed: float) -> Optional[float]:
  """Seconds for `remaining` units at the pace of `done` units in `elapsed` seconds.

  None until there is a pace (nothing done yet, or no time passed).
  """
  if done <= 0 or elapsed <= 0:
    return None
  return remaining * elapsed / done


def bar(fraction: float, width: int) -> str:
  """'[#####.....]': `fraction` (clipped to [0, 1]) of `width` cells filled."""
  fraction = min(max(fraction, 0.0), 1.0)
  filled = int(round(fraction * width))
  return f'[{"#" * filled}{"." * (width - filled)}]'


class StatusLine:
  """One line of progress, shown at most every `min_interval` seconds.

  With a `stream` the line is redrawn in place ('\\r'); without one (stderr is a
  file or a pipe) each shown line is logged at INFO instead, so a log keeps a
  sparse record rather than thousands of carriage returns.
  """

  def __init__(self, stream: Optional[TextIO], *, min_interval: float,
               clock: Callable[[], float] = time.monotonic):
    self._stream = stream
    self._min_interval = min_interval
    self._clock = clock
    self._last_shown = -math.inf
    self._drawn = ''  # The text on the terminal's current line, if any.

  def show(self, text: str, *, force: bool = False) -> None:
    """Shows `text` unless the last one went out under `min_interval` ago (and not `force`)."""
    now = self._clock()
    if not force and now - self._last_shown < self._min_interval:
      return
    self._last_shown = now
    if self._stream is None:
      logging.info('%s', text)
      return
    self._stream.write('\r' + text)
    self._stream.flush()
    self._drawn = text

  def clear(self) -> None:
    """Erases the drawn line (so a log line can take its place); the next `show` draws."""
    if self._drawn:
      self._stream.write('\r' + ' ' * len(self._drawn) + '\r')
      self._stream.flush()
      self._drawn = ''
    self._last_shown = -math.inf

  def close(self) -> None:
    """Ends the drawn line, leaving its last text on the terminal."""
    if self._drawn:
      self._stream.write('\n')
      self._stream.flush()
      self._drawn = ''
