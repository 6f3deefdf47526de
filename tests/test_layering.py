"""The package's layering: imports point down only, and the step needs no data stack.

docs/design.md, "Layers" draws the same table for readers; this test is what
keeps it true. A new module must be given a layer here, or the test fails.
"""

import ast
import os
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'alexnet_jax')

# module -> (layer, modules of its own layer it may import). Lower layers are always allowed.
LAYERS = {
    # L0 foundation
    'fileio': (0, ()), 'errors': (0, ()), 'progress': (0, ()), 'platform': (0, ()),
    'lockfile': (0, ()),
    # L1 building blocks: numerics, per-record augmentation, codecs, the command line
    'model': (1, ()), 'losses': (1, ()), 'optim': (1, ()), 'augment': (1, ()),
    'preprocess': (1, ()), 'codecs': (1, ()), 'cli': (1, ()), 'cluster': (1, ()),
    # L2 the pure step; devices; the dataset format; what a run writes
    'step': (2, ()), 'sharding': (2, ()), 'dataset_format': (2, ()), 'metrics': (2, ()),
    'checkpoint': (2, ()), 'preemption': (2, ()), 'feed': (2, ()),
    # L3 config and data
    'config_lib': (3, ()), 'config_changes': (3, ()), 'input_pipeline': (3, ()),
    'prepare': (3, ()),
    # L4 assembly of a run
    'experiment': (4, ()), 'workdir': (4, ()),
    # L5 pictures
    'figures': (5, ()),
    # L6 entry points; plot and evaluate use the run predict loads and restores
    'train': (6, ()), 'plan': (6, ()), 'predict': (6, ()), 'summary': (6, ()),
    'plot': (6, ('predict',)), 'evaluate': (6, ('predict',)),
}

# What the step module may not pull in: the data stack, checkpoints, plots, codecs.
HEAVY = ('grain', 'orbax', 'matplotlib', 'cv2', 'tensorboardX', 'PIL', 'simplejpeg',
         'array_record', 'tensorflow_datasets')


def project_imports(path: str) -> set[str]:
  """alexnet_jax modules that the file at `path` imports, at the top or inside functions."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'alexnet_jax':
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('alexnet_jax.'):
      found.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('alexnet_jax.')}
  return found


def modules() -> list[str]:
  return sorted(name[:-3] for name in os.listdir(PACKAGE)
                if name.endswith('.py') and name != '__init__.py')


def upward_imports(layers: dict[str, tuple[int, tuple[str, ...]]]) -> list[str]:
  """'a -> b' for every import that does not point to a lower layer (or a listed peer)."""
  bad = []
  for name in modules():
    layer, peers = layers[name]
    for target in sorted(project_imports(os.path.join(PACKAGE, f'{name}.py'))):
      if layers[target][0] > layer or (layers[target][0] == layer and target not in peers):
        bad.append(f'{name} (L{layer}) -> {target} (L{layers[target][0]})')
  return bad


class LayeringTest(absltest.TestCase):

  def test_every_module_has_a_layer(self):
    self.assertEqual(sorted(LAYERS), modules(),
                     'a module was added or removed: give it a layer in LAYERS and in '
                     'docs/design.md, "Layers"')

  def test_imports_point_down(self):
    self.assertEqual(upward_imports(LAYERS), [])

  def test_the_check_catches_an_upward_import(self):
    # The step importing the trainer would be the hub this layering removed.
    layers = dict(LAYERS, train=(1, ()))
    self.assertIn('train (L1) -> checkpoint (L2)', upward_imports(layers))
    layers = dict(LAYERS, plot=(6, ()))  # a peer import not listed
    self.assertIn('plot (L6) -> predict (L6)', upward_imports(layers))

  def test_entry_points_do_not_import_the_train_loop(self):
    for name in ('predict', 'plan', 'summary', 'plot', 'evaluate', 'experiment', 'step'):
      self.assertNotIn('train', project_imports(os.path.join(PACKAGE, f'{name}.py')), name)

  def test_step_imports_no_data_stack(self):
    code = ('import sys; import alexnet_jax.training.step_fns; '
            f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    self.assertEqual(result.stdout.strip(), '[]', result.stderr[-2000:])

  def test_the_subprocess_check_sees_an_import(self):
    # The same probe on the module that does read data must report grain: the check bites.
    code = ('import sys; import alexnet_jax.data.input_pipeline; '
            f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    self.assertIn("'grain'", result.stdout)


if __name__ == '__main__':
  absltest.main()
