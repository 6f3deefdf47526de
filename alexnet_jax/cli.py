"""Shared command-line behaviour: user mistakes become one line and a non-zero exit."""

from __future__ import annotations

import functools
import logging as py_logging
import os
import sys
import traceback
from typing import Callable

from absl import app
from absl import logging

from alexnet_jax import errors

# Set to 1 to see the traceback above a user error's one line (for reporting bugs).
TRACEBACK_ENV = 'ALEXNET_JAX_TRACEBACK'


# Libraries whose INFO lines (every async save, every backend probe) would bury the
# run's own progress lines; their warnings and errors still show.
QUIET_LIBRARIES = (f'{os.sep}orbax{os.sep}', f'{os.sep}grain{os.sep}', f'{os.sep}jax{os.sep}')


class _QuietLibraries(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in QUIET_LIBRARIES)


def quiet_library_logs() -> None:
  """Keeps INFO lines of orbax, grain and jax out of the console (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def _config_file_error(error: OSError) -> str | None:
  """The reason, when `error` is ml_collections' deferred failure to load a --config file."""
  # config_flags keeps a missing config file's error until the config is first read,
  # then raises a plain OSError chained to the one that describes each attempted path.
  if not (str(error).startswith('Configuration is not available') and
          isinstance(error.__cause__, OSError)):
    return None
  return str(error.__cause__).strip().splitlines()[-1].strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, plus one line for a --config.FIELD override naming no field.

  ml_collections reports such a typo as an AttributeError from inside the parser,
  which absl would show as a traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as e:
    name = str(e).strip('"\'')
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    flag = next((o for o in overrides if name in o.split('.')), '--config override')
    print(f'error: {flag}: the config has no field {name!r} (see the config file for the fields)',
          file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_USER_ERROR)


def report_user_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl `main` so a user error prints `error: ...` and exits with status 2."""

  def fail(message: object) -> None:
    logging.flush()
    if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
      traceback.print_exc()  # for a bug report: where the user error was raised
    print(f'error: {message}', file=sys.stderr, flush=True)
    errors.silence_after_user_error()
    sys.exit(errors.EXIT_USER_ERROR)

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> None:
    quiet_library_logs()
    try:
      main(argv)
    except errors.USER_ERRORS as e:
      fail(e.args[0] if isinstance(e, KeyError) and e.args else e)
    except app.UsageError as e:  # absl would print the whole --help text above it
      fail(f'{e} (--helpshort lists the flags)')
    except OSError as e:
      reason = _config_file_error(e)
      if reason is None:
        raise
      fail(f'cannot load the --config file: {reason}')

  return wrapped
