"""Temporary folders for tests, made outside absltest's create_tempdir."""

import shutil
import tempfile
from typing import Optional

from absl.testing import absltest


def make_tempdir(test: Optional[absltest.TestCase] = None, prefix: str = 'alexnet_jax_test_',
                 parent: Optional[str] = None) -> str:
  """A new empty folder (under `parent` if given), removed when `test` ends if given.

  Not absltest's create_tempdir: it works outside a test method too (setUpModule, fixtures
  made once per process), and under `parent` a module's folders go in one place.
  """
  path = tempfile.mkdtemp(prefix=prefix, dir=parent)
  if test is not None:
    test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path
