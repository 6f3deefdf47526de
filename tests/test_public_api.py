"""The project uses JAX's public API only: no private module is imported anywhere.

JAX's private modules (`jax._src`, jaxlib's compiled internals, `jax.lib`'s
XLA bindings) change without notice from one release to the next; code that
imports them breaks on the next JAX. Every .py file of the package, launch.py,
configs/, benchmarks/ and tests/ is parsed (AST) and its imports, including
those inside functions and `importlib.import_module('...')` calls, are checked.
jaxlib's version metadata (`importlib.metadata.version('jaxlib')`) is no import
and stays allowed.
"""

import ast
import os

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ('alexnet_jax', 'launch.py', 'configs', 'benchmarks', 'tests')


def private_jax(module: str) -> bool:
  """Whether importing `module` reaches into JAX's or jaxlib's internals."""
  parts = module.split('.')
  if parts[0] == 'jax':
    # jax._src, and any other underscored module of jax (jax._something, jax.x._y).
    return any(p.startswith('_') for p in parts[1:]) or parts[1:2] == ['lib']
  return parts[0] == 'jaxlib'


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
  """(line, module) of every import in `tree`: `import a.b`, `from a import b` (as a.b too)
  and `importlib.import_module('a.b')` / `__import__('a.b')` with a literal name."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.append((node.lineno, node.module))
      found += [(node.lineno, f'{node.module}.{alias.name}') for alias in node.names]
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and ((isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module')
               or (isinstance(node.func, ast.Name) and node.func.id == '__import__'))):
      found.append((node.lineno, node.args[0].value))
  return sorted(found)


def python_files(root: str) -> list[str]:
  paths = []
  for entry in SCANNED:
    path = os.path.join(root, entry)
    if path.endswith('.py'):
      paths += [path] if os.path.exists(path) else []
      continue
    for folder, _, names in os.walk(path):
      paths += [os.path.join(folder, n) for n in sorted(names) if n.endswith('.py')]
  return paths


def private_imports(root: str) -> list[str]:
  """'path:line: module' of every private JAX import under `root`."""
  bad = []
  for path in python_files(root):
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for line, module in imported_modules(tree):
      if private_jax(module):
        bad.append(f'{os.path.relpath(path, root)}:{line}: {module}')
  return bad


class PublicApiTest(absltest.TestCase):

  def test_no_private_jax_import(self):
    self.assertEqual(private_imports(REPO), [])

  def test_every_scanned_place_has_files(self):
    # A folder renamed away would make the scan pass by scanning nothing.
    files = [os.path.relpath(p, REPO) for p in python_files(REPO)]
    for entry in SCANNED:
      self.assertTrue(any(f == entry or f.startswith(entry + os.sep) for f in files), entry)
    self.assertIn(os.path.join('alexnet_jax', 'distributed', 'startup.py'), files)

  def test_private_imports_are_caught(self):
    root = self.create_tempdir().full_path
    package = os.path.join(root, 'alexnet_jax')
    os.makedirs(package)
    with open(os.path.join(package, 'planted.py'), 'w') as f:
      f.write('import jax\n'
              'import jax.numpy as jnp\n'
              'from jax.experimental import multihost_utils\n'
              'import importlib.metadata\n'
              "version = importlib.metadata.version('jaxlib')\n"
              'def f():\n'
              '  from jax._src import distributed\n'
              '  from jax._src.lib import _jax\n'
              '  import jaxlib.xla_client\n'
              '  from jax.lib import xla_bridge\n'
              '  from jax import _src\n'
              "  importlib.import_module('jax._src.clusters')\n")
    self.assertEqual(private_imports(root), [
        'alexnet_jax/planted.py:7: jax._src',
        'alexnet_jax/planted.py:7: jax._src.distributed',
        'alexnet_jax/planted.py:8: jax._src.lib',
        'alexnet_jax/planted.py:8: jax._src.lib._jax',
        'alexnet_jax/planted.py:9: jaxlib.xla_client',
        'alexnet_jax/planted.py:10: jax.lib',
        'alexnet_jax/planted.py:10: jax.lib.xla_bridge',
        'alexnet_jax/planted.py:11: jax._src',
        'alexnet_jax/planted.py:12: jax._src.clusters',
    ])


if __name__ == '__main__':
  absltest.main()
