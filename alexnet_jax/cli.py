"""Shared command-line behaviour: user mistakes become one line and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from absl import logging

# Errors that describe something the user gave us (a path, a config value, an image):
# they get one clear line, not a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               FileExistsError, KeyError)
EXIT_USER_ERROR = 2


def report_user_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl `main` so a user error prints `error: ...` and exits with status 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> None:
    try:
      main(argv)
    except USER_ERRORS as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      logging.flush()
      print(f'error: {message}', file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)

  return wrapped
