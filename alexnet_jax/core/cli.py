"""Shared command-line behaviour: user mistakes become one line and a non-zero exit.

Every command's `main` is wrapped by `report_user_errors`: a `errors.UserError`
prints `error: ...` and exits with status 2, Ctrl-C prints one `interrupted: ...`
line and exits with status 130, and anything else (a bug) keeps its traceback.
Set the environment variable ALEXNET_JAX_TRACEBACK=1 to see the traceback above a
user error's line too, for a bug report.

The wrapper also sets up the console: log lines are the message alone (warnings
and errors begin `WARNING:` or `ERROR:`), without absl's prefix of level, time,
thread and file:line; ALEXNET_JAX_LOG_PREFIX=1 keeps that prefix. INFO lines of
orbax, grain and jax stay off the console, and so does orbax's notice on every
read-only checkpoint reader.
"""

from __future__ import annotations

import functools
import logging as py_logging
import os
import pathlib
import re
import runpy
import sys
import textwrap
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections.config_flags import config_path as ml_config_path

from alexnet_jax.core import errors
from alexnet_jax.core import xla_flags

# Set to 1 to see the traceback above a user error's one line (for reporting bugs).
TRACEBACK_ENV = 'ALEXNET_JAX_TRACEBACK'
# Set to 1 to keep absl's prefix (level, time, thread, file:line) on console log lines.
LOG_PREFIX_ENV = 'ALEXNET_JAX_LOG_PREFIX'


# Libraries whose INFO lines (every async save, every backend probe) would bury the
# run's own progress lines; their warnings and errors still show.
QUIET_LIBRARIES = (f'{os.sep}orbax{os.sep}', f'{os.sep}grain{os.sep}', f'{os.sep}jax{os.sep}')
# Warnings of those libraries that report a choice of this program, not a problem: orbax
# warns on every CheckpointManager opened read-only (predict, evaluate, plot do).
QUIET_WARNINGS = ('Given directory is read only',)


class _QuietLibraries(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    library = any(part in record.pathname for part in QUIET_LIBRARIES)
    if record.levelno >= py_logging.WARNING:
      return not (library and str(record.msg).startswith(QUIET_WARNINGS))
    return not library


class ConsoleFormatter(py_logging.Formatter):
  """A log record as the user reads it: the message; warnings and errors say which they are.

  Upper case, so that a logged error never reads as the one `error: ...` line of a
  user mistake.
  """

  def format(self, record: py_logging.LogRecord) -> str:
    message = super().format(record)  # the message, and the traceback of logging.exception
    if record.levelno >= py_logging.WARNING:
      return f'{record.levelname}: {message}'
    return message


def plain_console_logs() -> None:
  """Console log lines without absl's prefix, unless ALEXNET_JAX_LOG_PREFIX asks for it."""
  if os.environ.get(LOG_PREFIX_ENV, '') not in ('', '0'):
    return
  logging.get_absl_handler().setFormatter(ConsoleFormatter())


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


def _config_flag_value(argv: list[str]) -> str:
  """The value of --config in `argv` (the config file), or '' when it is not there."""
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


# The configs the package ships (alexnet_jax/configs/): `--config=NAME` needs no checkout.
SHIPPED_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def shipped_config_names() -> list[str]:
  """The names `--config` accepts for the shipped configs: 'digits', 'paper/no_lrn', ..."""
  return sorted(p.relative_to(SHIPPED_CONFIGS).with_suffix('').as_posix()
                for p in SHIPPED_CONFIGS.rglob('*.py') if p.name != '__init__.py')


def config_path(value: str) -> str:
  """A --config value with a shipped config's name (`digits`, `paper/digits:no_lrn`) replaced
  by that file; a path (ending in .py, or an existing file) stays as given."""
  path, colon, arg = value.partition(':')
  if path.endswith('.py') or os.path.isfile(path):
    return value
  shipped = SHIPPED_CONFIGS / f'{path}.py'
  if path not in shipped_config_names():
    raise errors.MissingInputError(
        f'--config={value}: no such config file, and no shipped config named {path!r} '
        f'(give a path to a .py file, or one of: {", ".join(shipped_config_names())})')
  return f'{shipped}{colon}{arg}'


def _with_config_paths(argv: list[str]) -> list[str]:
  """`argv` with each --config value passed through `config_path`."""
  out = list(argv)
  for i, arg in enumerate(out[1:], 1):
    if arg.startswith('--config='):
      out[i] = '--config=' + config_path(arg.split('=', 1)[1])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


# ml_collections' own suggestion (difflib) for a name a config lacks, and the path it
# reports where a value is indexed as if it were a section.
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')
_QUOTED_NAME = re.compile(r"""^\W*'([^'\\]+)""")
_LOOKUP = re.compile(r'Attempting to lookup: ([\w.]+)')


def _unknown_override(argv: list[str], error: Exception) -> str | None:
  """One line for a --config.FIELD override naming no field, with the nearest field.

  ml_collections says it as a KeyError, or an AttributeError holding one, whose text
  carries the missing name and its own "Did you mean" suggestion. None when no
  override of `argv` names what the error does (an error of the config file itself).
  """
  text = str(error)
  paths = [a[2:].split('=', 1)[0].split('.', 1)[1] for a in argv[1:]
           if a.startswith('--config.')]
  lookup = _LOOKUP.search(text)
  if lookup:  # a value that is not a section: optim.learning_rate.x
    path = lookup.group(1)
    return f'--config.{path}: config.{path} is not a config field' if path in paths else None
  suggestion = _DID_YOU_MEAN.search(text)
  quoted = _QUOTED_NAME.search(text)
  wrong = suggestion.group(2) if suggestion else (quoted.group(1) if quoted else '')
  path = next((p for p in paths if wrong in p.split('.')), None)
  if path is None:
    return None
  message = f'--config.{path}: config.{path} is not a config field'
  if suggestion:
    parts = [suggestion.group(1) if part == wrong else part for part in path.split('.')]
    message += f' (did you mean config.{".".join(parts)}?)'
  return message


def _refuse(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(errors.EXIT_USER_ERROR)


def _through_a_leaf(error: KeyError, argv: list[str]) -> str | None:
  """The line for an override that names a field inside a plain value (--config.a.b.c where
  a.b is a number or string), which ml_collections reports as a KeyError from its parser."""
  text = str(error.args[0]) if error.args else ''
  match = re.match(r"Attribute <class '(\w+)'>\.(\S+) does not exist.*Attempting to lookup: "
                   r'(\S+)', text)
  if not match:
    return None
  kind, inner, path = match.groups()
  cut = (path + '.').rfind(f'.{inner}.')  # the leaf is the path before the name inside it
  leaf = path[:cut] if cut > 0 else path
  flag = next((a.split('=')[0] for a in argv[1:] if a.startswith(f'--config.{path}')),
              f'--config.{path}')
  return (f'{flag}: config.{leaf} is a single value (a {kind}), not a group of fields; set it '
          f'as --config.{leaf}=VALUE')


def _config_argument_refused(message: str, argv: list[str]) -> str | None:
  """The line for a --config=FILE:ARG whose get_config() takes no argument."""
  if 'get_config() takes 0 positional arguments' not in message:
    return None
  value = _config_flag_value(argv)
  filename, argument = (value.split(':', 1) + [''])[:2]
  return (f'the --config file {filename} has a get_config() that takes no argument, but '
          f'--config={value} passes it {argument!r} (the text after the colon); give '
          f'--config={filename} and set fields with --config.FIELD=VALUE')


def _typo_line(argv: list[str], error: Exception) -> str | None:
  override = _unknown_override(argv, error)
  return None if override is None else f'{override}; the fields are those of configs/imagenet.py'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, plus one line for what ml_collections reports from inside it.

  A shipped config's name given to --config becomes its file first (`config_path`).
  A --config.FIELD override naming no field (a typo, with ml_collections' nearest
  field) and a config file without a `get_config` function arrive as an
  AttributeError or KeyError, an override through a plain value
  (--config.optim.momentum.x) as a KeyError, a field path that is not names and dots
  (--config.batch_size.0) as a ValueError, a --config=FILE:ARG whose get_config()
  takes no argument as a flag error holding a traceback, a file that is not Python as
  a SyntaxError: each becomes one `error:` line and status 2. Other flag errors keep
  absl's FATAL line (status 1). One function: the except clauses are one table of
  the parser's failure kinds, each a few lines.
  """
  config_file = _config_flag_value(argv).split(':', 1)[0]
  if config_file and os.path.exists(config_file) and not os.path.isfile(config_file):
    # Loading it would read a FIFO (waiting forever for a writer) or a device.
    _refuse(f'the --config file {config_file} is not a regular file; give a config file like '
            'configs/imagenet.py')
  try:
    argv = _with_config_paths(argv)
  except errors.MissingInputError as e:
    _refuse(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    line = _config_argument_refused(str(e), argv)
    if line:
      _refuse(line)
    message = str(e)
    message = f'\n{textwrap.indent(message, "  ")}' if '\n' in message else f' {message}'
    sys.stderr.write(f'FATAL Flags parsing error:{message}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.stderr.flush()
    sys.exit(1)  # what absl's parse_flags_with_usage exits with
  except SyntaxError as e:  # a --config file that is not Python (a text file, a binary)
    where = f'{e.filename}, line {e.lineno}' if e.lineno else e.filename
    _refuse(f'the --config file {_config_flag_value(argv)} is not a Python config file '
            f'({where}: {e.msg}); give a file like configs/imagenet.py')
  except TypeError as e:  # ml_collections indexing a plain value, or a tuple from a number
    if not any('ml_collections' in frame.filename
               for frame in traceback.extract_tb(e.__traceback__)):
      raise
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    failing = _overrides_failing(argv, overrides)
    which = failing[0] if len(failing) == 1 else f'one of {", ".join(failing or overrides)}'
    _refuse(f'{which}: cannot be applied to the config ({errors.first_line(e)}): an override '
            'names one field (names joined by dots) and gives it a value of that field\'s type')
  except ValueError as e:  # a field path that is not names joined by dots (a.0, a.b[)
    bad_path = re.match(r"Could not parse '(.*)': ", str(e))
    if bad_path is None:
      raise
    _refuse(f'--config.{bad_path.group(1)}: not a config field (a field is names joined by dots, '
            'as in --config.optim.momentum=0.9)')
  except KeyError as e:
    line = _through_a_leaf(e, argv) or _typo_line(argv, e)
    unknown = re.match(r"'([^']*)'", str(e.args[0]) if e.args else '')
    if line is None and unknown is None:
      raise
    _refuse(line or _no_such_field(unknown.group(1), argv))  # KeyError: an unknown group
  except AttributeError as e:
    if "has no attribute 'get_config'" in str(e):
      _refuse(f'the --config file {_config_flag_value(argv)} defines no get_config() function (a '
              'config file returns its ml_collections.ConfigDict from get_config(); see '
              'configs/imagenet.py)')
    _refuse(_typo_line(argv, e) or _no_such_field(str(e).strip('"\''), argv))


def _overrides_failing(argv: list[str], overrides: list[str]) -> list[str]:
  """Those of `overrides` whose field path does not resolve in the --config file's config
  ([] where the file cannot be loaded again)."""
  try:
    config = runpy.run_path(_config_flag_value(argv).split(':', 1)[0])['get_config']()
  except Exception:  # pylint: disable=broad-exception-caught
    return []
  failing = []
  for flag in overrides:
    try:
      ml_config_path.get_value(flag[len('--config.'):], config)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError):
      failing.append(flag)
  return failing


def _no_such_field(name: str, argv: list[str]) -> str:
  overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  flag = next((o for o in overrides if name in o.split('.')), '--config override')
  return f'{flag}: the config has no field {name!r} (see the config file for the fields)'


def config_from_flag(name: str = 'config') -> ml_collections.ConfigDict:
  """The ConfigDict of a --config flag; a file whose get_config() returns another type is
  a user error naming the file (ml_collections accepts any object)."""
  config = getattr(flags.FLAGS, name)
  if not isinstance(config, ml_collections.ConfigDict):
    getattr(config, 'keys', None)  # a file that failed to load raises its deferred error here
    filename = flags.FLAGS[name].config_filename
    raise errors.InputError(
        f'get_config() of the --{name} file {filename} returned a {type(config).__name__}, not '
        'an ml_collections.ConfigDict; return ml_collections.ConfigDict({...}) (see '
        'configs/imagenet.py)')
  return config


# The most CPU devices a command lets JAX make. JAX builds every one when its backend starts
# (10,000 took 52 s and 1.2 GB on a 2-core host), so a mistyped count would hold a command
# for minutes before it prints anything; no host has this many cores.
MAX_CPU_DEVICES = 4096
_FORCED_DEVICES = re.compile(r'--xla_force_host_platform_device_count=(\S*)')


def check_cpu_devices() -> None:
  """Refuses, before JAX's backend starts, more CPU devices than MAX_CPU_DEVICES."""
  import jax  # pylint: disable=g-import-not-at-top
  asked = [('JAX_NUM_CPU_DEVICES', str(jax.config.jax_num_cpu_devices))]
  asked += [('XLA_FLAGS --xla_force_host_platform_device_count', m.group(1))
            for m in _FORCED_DEVICES.finditer(os.environ.get('XLA_FLAGS', ''))]
  for name, value in asked:
    if value.isdigit() and int(value) > MAX_CPU_DEVICES:
      raise errors.InputError(
          f'{name}={value} asks JAX for {int(value)} CPU devices; at most {MAX_CPU_DEVICES} are '
          'accepted (JAX makes every one as it starts: 10,000 take about a minute and a GB)')


def start_backend() -> None:
  """Starts JAX's backend now, so that a platform it cannot start is one line, not a traceback.

  JAX_PLATFORMS=gpu on a machine without a GPU (or without jax built for it)
  fails inside JAX with a long traceback that names backends the user never asked for.
  Too many CPU devices asked for are refused first (check_cpu_devices).
  """
  import jax  # pylint: disable=g-import-not-at-top
  check_cpu_devices()
  try:
    jax.devices()
  except RuntimeError as e:
    asked = os.environ.get('JAX_PLATFORMS') or jax.config.jax_platforms or '(any)'
    raise errors.UserError(
        f'JAX cannot start the platform JAX_PLATFORMS={asked} asks for on this machine (no such '
        'device, or jax not installed for it); unset JAX_PLATFORMS to use what is here, or '
        'install jax for the accelerator (requirements-cuda.txt, requirements-tpu.txt)') from e


def start_reader() -> None:
  """The start of a command that reads a run (predict, plot, evaluate).

  The XLA:CPU options go in before JAX's backend starts; the backend starts
  now (a missing platform is one line); orbax's INFO line for every array read
  is kept off the console unless --verbosity asks for it.
  """
  xla_flags.configure_xla_cpu()
  start_backend()
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def report_user_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl `main`: a user error prints `error: ...` and exits with status 2, Ctrl-C
  prints `interrupted: ...` and exits with status 130; a bug keeps its traceback."""

  def fail(message: object, prefix: str = 'error',
           status: int = errors.EXIT_USER_ERROR) -> None:
    logging.flush()
    if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
      traceback.print_exc()  # for a bug report: where the user error was raised
    print(f'{prefix}: {message}', file=sys.stderr, flush=True)
    errors.silence_after_user_error()
    sys.exit(status)

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> None:
    quiet_library_logs()
    plain_console_logs()
    try:
      main(argv)
    except errors.USER_ERRORS as e:
      fail(e)
    except errors.Interrupted as e:
      fail(e, 'interrupted', errors.EXIT_INTERRUPTED)
    except KeyboardInterrupt:
      # Ctrl-C where the command installs no handler of its own (start-up, set-up): what
      # was written before stays as it was, and writes in progress are temporary files.
      fail('Ctrl-C; stopped before finishing (files written so far are complete; rerun the '
           'same command to go on)', 'interrupted', errors.EXIT_INTERRUPTED)
    except app.UsageError as e:  # absl would print the whole --help text above it
      fail(f'{e} (--helpshort lists the flags)')
    except OSError as e:
      reason = _config_file_error(e)
      if reason is None:
        raise
      fail(f'cannot load the --config file: {reason}')

  return wrapped
