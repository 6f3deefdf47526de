"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as a JAX/Flax training pipeline."""

import os as _os
import re as _re
import sys as _sys

__version__ = '0.1.0'  # the package's version (pyproject.toml reads it; `pip show alexnet-jax`)


def _import_jax() -> None:
  """Imports JAX first, so that an environment variable JAX refuses ends in one line.

  JAX parses its JAX_* environment variables when it is imported, and refuses a value
  it cannot read (JAX_ENABLE_X64=maybe) with a ValueError. Every command imports JAX
  before its own error handling exists, and this package's root runs before any of
  them, so here that error becomes the commands' `error: ...` line and exit status 2
  (docs/bad_input.md); ALEXNET_JAX_TRACEBACK=1 keeps the traceback.
  """
  try:
    import jax  # pylint: disable=g-import-not-at-top,unused-import
  except ValueError as e:
    named = _re.search(r"environment '(\w+)'|JAX flag (\w+)", str(e))
    name = (named.group(1) or named.group(2)).upper() if named else ''
    if name not in _os.environ or _os.environ.get('ALEXNET_JAX_TRACEBACK', '') not in ('', '0'):
      raise
    print(f'error: the environment variable {name}={_os.environ[name]!r} is not a value JAX '
          f'accepts ({type(e).__name__}: {str(e).strip()}); unset it or set it to one JAX '
          'documents', file=_sys.stderr)
    raise SystemExit(2) from None


_import_jax()
