"""The test suite's own layout: no module under tests/ imports a test module.

Shared fixtures live in tests/helpers (and the helper modules tests/trained_run.py and
tests/tiny_training.py); a test module that imported another would run that module's
imports and set-up, and tie two test files together that pytest runs apart.
"""

import ast
import glob
import os

from absl.testing import absltest

from tests.helpers import REPO


def is_test_module(name: str) -> bool:
  """Whether a dotted module name (relative to tests/ or absolute) is a test module."""
  parts = name.split('.')
  if parts[0] == 'tests':
    parts = parts[1:]
  return bool(parts) and parts[0].startswith('test_')


def imported_test_modules(source: str) -> list[str]:
  """The test modules `source` imports: `import tests.test_x`, `from tests import test_x`,
  `from tests.test_x import y`, and the relative forms of the last two."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if is_test_module(a.name)]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level == 0 and base != 'tests' and not base.startswith('tests.'):
        continue  # not a module of this suite
      if is_test_module(base):
        found.append(base)
      elif base in ('', 'tests'):
        found += [a.name for a in node.names if is_test_module(a.name)]
  return found


def suite_files() -> list[str]:
  return sorted(glob.glob(os.path.join(REPO, 'tests', '**', '*.py'), recursive=True))


class NoTestModuleImportsAnotherTest(absltest.TestCase):

  def test_the_parser_finds_every_form(self):
    source = ('import tests.test_a\nfrom tests import test_b, helpers\nfrom tests.test_c import x\n'
              'from . import test_d\nfrom .test_e import y\nimport test_f\n'
              'from tests.helpers import training\nfrom tests import trained_run\n'
              'from alexnet_jax import test_g\nimport os\n')
    self.assertEqual(imported_test_modules(source),
                     ['tests.test_a', 'test_b', 'tests.test_c', 'test_d', 'test_e', 'test_f'])

  def test_no_module_under_tests_imports_a_test_module(self):
    files = suite_files()
    self.assertIn(os.path.join(REPO, 'tests', 'helpers', 'training.py'), files)
    offenders = []
    for path in files:
      with open(path) as f:
        names = imported_test_modules(f.read())
      offenders += [f'{os.path.relpath(path, REPO)} imports {n}' for n in names]
    self.assertEqual(offenders, [], 'move what they share into tests/helpers')


if __name__ == '__main__':
  absltest.main()
