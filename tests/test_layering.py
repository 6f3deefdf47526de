"""The package's layering: imports point down only, and the step needs no data stack.

The table of docs/design.md, "Layers" is the one source: this test reads it (it holds
no copy), maps every module under alexnet_jax/ to its package's row and checks every
import against it. A new package or command module needs only its row there.
"""

import ast
import dataclasses
import os
import re
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = 'alexnet_jax'
DESIGN = os.path.join(REPO, 'docs', 'design.md')
TRAIN_LOOP = 'alexnet_jax.training.trainer'

# What the step module may not pull in: the data stack, checkpoints, plots, codecs.
HEAVY = ('grain', 'orbax', 'matplotlib', 'cv2', 'tensorboardX', 'PIL', 'simplejpeg',
         'array_record', 'tensorflow_datasets')

_NAME = re.compile(r'`(\w+)`')
_PEERS = re.compile(r'`\w+`(, `\w+`)*')


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: a package's layer and the packages of that layer it may import."""
  layer: int
  peers: frozenset[str]


def layers_section(text: str) -> str:
  """The lines of design.md's `## Layers` section, up to the next `## ` heading."""
  lines = text.splitlines()
  start = lines.index('## Layers')
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')),
             len(lines))
  return '\n'.join(lines[start + 1:end])


def parse_table(text: str) -> dict[str, Row]:
  """package -> Row, from the table of the Layers section of design.md's `text`.

  Raises ValueError for a row that does not read as `| L<n> ... | `name` | none or
  `a`, `b` | purpose |`, or for a package given two rows, so that a typo cannot
  silently drop a row or a permission.
  """
  rows = {}
  for line in layers_section(text).splitlines():
    if not line.startswith('|') or line.startswith('|---') or line.startswith('| layer '):
      continue
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    layer = re.match(r'L(\d+)\b', cells[0])
    name = _NAME.fullmatch(cells[1]) if len(cells) > 2 else None
    peers = cells[2] if len(cells) > 2 else ''
    if not (layer and name and (peers == 'none' or _PEERS.fullmatch(peers))):
      raise ValueError(f'design.md, "Layers": cannot read the row {line!r}')
    if name.group(1) in rows:
      raise ValueError(f'design.md, "Layers": two rows for {name.group(1)!r}')
    rows[name.group(1)] = Row(int(layer.group(1)), frozenset(_NAME.findall(peers)))
  if not rows:
    raise ValueError('design.md, "Layers" has no table')
  return rows


def design_table() -> dict[str, Row]:
  with open(DESIGN) as f:
    return parse_table(f.read())


def module_files(repo: str = REPO) -> dict[str, str]:
  """Dotted name -> path of every module and package under alexnet_jax/."""
  found = {}
  for directory, subdirs, files in os.walk(os.path.join(repo, ROOT)):
    subdirs[:] = sorted(d for d in subdirs if d != '__pycache__')
    package = os.path.relpath(directory, repo).replace(os.sep, '.')
    for name in sorted(files):
      if name == '__init__.py':
        found[package] = os.path.join(directory, name)
      elif name.endswith('.py'):
        found[f'{package}.{name[:-3]}'] = os.path.join(directory, name)
  return found


def package_of(module: str) -> str | None:
  """The table row a module belongs to: its subpackage, or itself for a command module."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else None  # None: the package root


def resolve(name: str, known: set[str]) -> str:
  """The longest prefix of dotted `name` that is a module (`pkg.mod.func` -> `pkg.mod`)."""
  parts = name.split('.')
  while len(parts) > 1 and '.'.join(parts) not in known:
    parts.pop()
  return '.'.join(parts)


def project_imports(path: str, module: str, known: set[str]) -> set[str]:
  """alexnet_jax modules that `module` (the file at `path`) imports, anywhere in the file."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = os.path.basename(path) == '__init__.py'
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {resolve(a.name, known) for a in node.names if a.name.split('.')[0] == ROOT}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from the module's own package, up `level - 1` packages
        package = module.split('.') if is_package else module.split('.')[:-1]
        base = '.'.join(package[:len(package) - node.level + 1] + ([base] if base else []))
      if base.split('.')[0] != ROOT:
        continue
      for alias in node.names:  # `from pkg import mod` names a module; else pkg is one
        found.add(resolve(f'{base}.{alias.name}', known))
  found.discard(module)
  return found


def import_graph(repo: str = REPO) -> dict[str, set[str]]:
  """Module -> the alexnet_jax modules it imports, for every module under alexnet_jax/."""
  files = module_files(repo)
  return {m: project_imports(path, m, set(files)) for m, path in files.items()}


def short(module: str) -> str:
  return module.removeprefix(f'{ROOT}.')


def rowless(table: dict[str, Row], graph: dict[str, set[str]]) -> list[str]:
  """Packages and command modules without a row, and rows that name none of them."""
  packages = {package_of(m) for m in graph} - {None}
  stale = sorted(set(table) - packages)
  return ([f'{p} has no row' for p in sorted(packages - set(table))] +
          [f'the row {p} names no package or command module' for p in stale])


def layering_violations(table: dict[str, Row], graph: dict[str, set[str]]) -> list[str]:
  """'a (pkg, Ln) -> b (pkg, Lm)' for every import that the table does not allow."""
  bad = []
  for module in sorted(graph):
    source = package_of(module)
    for target in sorted(graph[module]):
      dest = package_of(target)
      if source is None:  # every import of any module runs the root's __init__.py first
        bad.append(f'{ROOT} (the package root) -> {short(target)}')
      elif dest is None or dest == source or source not in table or dest not in table:
        continue  # the root holds nothing; a package's own modules; rowless() reports
      elif table[dest].layer > table[source].layer or (
          table[dest].layer == table[source].layer and dest not in table[source].peers):
        bad.append(f'{short(module)} ({source}, L{table[source].layer}) -> '
                   f'{short(target)} ({dest}, L{table[dest].layer})')
  return bad


def misplaced_peers(table: dict[str, Row], graph: dict[str, set[str]]) -> list[str]:
  """Same-layer permissions that name another layer's package, or one never imported."""
  used = {(package_of(m), package_of(t)) for m, targets in graph.items() for t in targets}
  bad = []
  for name, row in sorted(table.items()):
    for peer in sorted(row.peers):
      if peer not in table:
        bad.append(f'{name} may import {peer}, which has no row')
      elif table[peer].layer != row.layer:
        bad.append(f'{name} (L{row.layer}) may import {peer}, which is not on L{row.layer}')
      elif (name, peer) not in used:
        bad.append(f'{name} may import {peer} but does not')
  return bad


def cycles(graph: dict[str, set[str]]) -> list[str]:
  """'a -> b -> a' for each import cycle among modules that a depth-first walk meets."""
  found, done, path = [], set(), []

  def visit(module: str) -> None:
    path.append(module)
    for target in sorted(graph.get(module, ())):
      if target in path:
        found.append(' -> '.join(map(short, path[path.index(target):] + [target])))
      elif target not in done:
        visit(target)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    if module not in done:
      visit(module)
  return found


def replace_row(text: str, package: str, row: str | None) -> str:
  """design.md's `text` with the Layers row of `package` replaced by `row` (None: removed)."""
  pattern = re.compile(rf'^\|[^|\n]*\| `{package}` \|.*\n', re.MULTILINE)
  changed, count = pattern.subn('' if row is None else row + '\n', text)
  assert count == 1, (package, count)
  return changed


def heavy_modules_loaded_by(module: str) -> str:
  """The HEAVY modules a fresh interpreter has loaded after importing `module`."""
  code = (f'import sys; import {module}; '
          f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=True)
  return result.stdout.strip()


class LayeringTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    with open(DESIGN) as f:
      self.design = f.read()
    self.table = parse_table(self.design)
    self.graph = import_graph()

  def test_every_package_has_a_row(self):
    self.assertEmpty(rowless(self.table, self.graph),
                     'give each package and command module of alexnet_jax/ one row in '
                     'docs/design.md, "Layers"')

  def test_imports_point_down(self):
    self.assertEmpty(layering_violations(self.table, self.graph),
                     'an import goes up, or to a package of its own layer that the third '
                     'column of docs/design.md, "Layers" does not name')

  def test_same_layer_permissions_are_used(self):
    self.assertEmpty(misplaced_peers(self.table, self.graph))

  def test_modules_import_in_no_cycle(self):
    self.assertEmpty(cycles(self.graph))

  def test_entry_points_do_not_import_the_train_loop(self):
    self.assertIn(TRAIN_LOOP, self.graph)
    users = sorted(m for m, targets in self.graph.items() if TRAIN_LOOP in targets)
    self.assertEmpty(users, f'only launch.py runs {TRAIN_LOOP}')

  def test_step_imports_no_data_stack(self):
    self.assertEqual(heavy_modules_loaded_by('alexnet_jax.learning.step_fns'), '[]')


class TheChecksBiteTest(absltest.TestCase):
  """Each check reports a fault planted in a copy of the table or in a made-up graph."""

  def setUp(self):
    super().setUp()
    with open(DESIGN) as f:
      self.design = f.read()
    self.graph = import_graph()

  def test_an_upward_import_is_reported(self):
    table = parse_table(replace_row(self.design, 'model', '| L3 | `model` | none | x |'))
    self.assertIn('sharding.meshes (sharding, L2) -> model.alexnet (model, L3)',
                  layering_violations(table, self.graph))

  def test_an_unnamed_same_layer_import_is_reported(self):
    # figures moved up to plot's layer, where plot does not name it.
    table = parse_table(replace_row(self.design, 'figures', '| L7 | `figures` | none | x |'))
    self.assertIn('plot (plot, L7) -> figures.run_figures (figures, L7)',
                  layering_violations(table, self.graph))

  def test_a_missing_or_stale_row_is_reported(self):
    text = replace_row(self.design, 'distributed', None)
    text = replace_row(text, 'core', '| L0 | `core` | none | x |\n| L0 | `platform` | none | x |')
    self.assertEqual(rowless(parse_table(text), self.graph),
                     ['distributed has no row',
                      'the row platform names no package or command module'])

  def test_a_wrong_permission_is_reported(self):
    text = replace_row(self.design, 'sharding', '| L2 | `sharding` | `training` | x |')
    text = replace_row(text, 'summary', '| L7 | `summary` | `predict` | x |')
    self.assertEqual(misplaced_peers(parse_table(text), self.graph),
                     ['sharding (L2) may import training, which is not on L2',
                      'summary may import predict but does not'])

  def test_an_unreadable_or_repeated_row_is_refused(self):
    for row in ('| L2 | sharding | none | x |', '| two | `sharding` | none | x |',
                '| L2 | `sharding` | model | x |', '| L1 | `model` | none | x |'):
      with self.subTest(row=row), self.assertRaises(ValueError):
        parse_table(replace_row(self.design, 'sharding', row))

  def test_a_cycle_is_reported(self):
    graph = {'alexnet_jax.a.x': {'alexnet_jax.a.y'}, 'alexnet_jax.a.y': {'alexnet_jax.b.z'},
             'alexnet_jax.b.z': {'alexnet_jax.a.x'}, 'alexnet_jax.c': set()}
    self.assertEqual(cycles(graph), ['a.x -> a.y -> b.z -> a.x'])

  def test_every_import_form_is_seen(self):
    path = self.create_tempfile('mod.py', content=(
        'import os\n'
        'import alexnet_jax.storage.checkpointing\n'
        'from alexnet_jax.core import errors\n'
        'from alexnet_jax.data.input_pipeline import DatasetInfo\n'
        'from alexnet_jax import prepare, data\n'
        'from . import dry_run\n'
        'from ..model.alexnet import AlexNet\n'
        'def f():\n'
        '  from alexnet_jax.figures import run_figures\n')).full_path
    known = set(module_files())
    self.assertEqual(
        sorted(project_imports(path, 'alexnet_jax.training.mod', known)),
        ['alexnet_jax.core.errors', 'alexnet_jax.data', 'alexnet_jax.data.input_pipeline',
         'alexnet_jax.figures.run_figures', 'alexnet_jax.model.alexnet', 'alexnet_jax.prepare',
         'alexnet_jax.storage.checkpointing', 'alexnet_jax.training.dry_run'])

  def test_the_subprocess_check_sees_an_import(self):
    # The same probe on the module that does read data must report grain.
    self.assertIn("'grain'", heavy_modules_loaded_by('alexnet_jax.data.input_pipeline'))


if __name__ == '__main__':
  absltest.main()
