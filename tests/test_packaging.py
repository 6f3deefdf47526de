"""Installing the package like a library: pins, extras, console commands and the built wheel.

pyproject.toml repeats the pins of the requirement files (a checkout installs those), so
the two are compared here requirement by requirement, markers included. The wheel test
builds the wheel as a user's `pip install .` would, installs it into a fresh virtual
environment and runs commands from a folder outside the repository.
"""

import email.parser
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from unittest import mock
import zipfile

from absl.testing import absltest
from packaging import requirements

from alexnet_jax import console
from alexnet_jax.core import cli
from alexnet_jax.core import errors

REPO = pathlib.Path(__file__).resolve().parents[1]
# extra -> the requirement file a checkout installs for it (each starts `-r requirements.txt`).
EXTRA_FILES = {'cuda13': 'requirements-cuda.txt', 'tpu': 'requirements-tpu.txt',
               'test': 'requirements-test.txt'}
EXTRAS = ('cuda13', 'tpu', 'test', 'tensorboard', 'wandb')
COMMANDS = {'alexnet-train': 'alexnet_jax.launch', 'alexnet-prepare': 'alexnet_jax.prepare',
            'alexnet-evaluate': 'alexnet_jax.evaluate', 'alexnet-predict': 'alexnet_jax.predict',
            'alexnet-plot': 'alexnet_jax.plot', 'alexnet-summary': 'alexnet_jax.summary',
            'alexnet-import-weights': 'alexnet_jax.import_weights',
            'alexnet-export-weights': 'alexnet_jax.export_weights'}
TIMEOUT_S = 300


def pyproject() -> dict:
  with open(REPO / 'pyproject.toml', 'rb') as f:
    return tomllib.load(f)


def normal(lines) -> set[str]:
  """Requirement strings in one spelling (name case, quotes, spaces), as a set."""
  return {str(requirements.Requirement(line)) for line in lines}


def file_requirements(name: str) -> list[str]:
  """The requirement lines of a requirements file, without comments and `-r` includes."""
  lines = [line.split('#', 1)[0].strip() for line in (REPO / name).read_text().splitlines()]
  return [line for line in lines if line and not line.startswith('-')]


class PinsTest(absltest.TestCase):

  def test_runtime_dependencies_are_requirements_txt(self):
    self.assertEqual(normal(pyproject()['project']['dependencies']),
                     normal(file_requirements('requirements.txt')),
                     'pyproject.toml [project] dependencies must repeat requirements.txt')

  def test_each_extra_is_its_requirement_file(self):
    extras = pyproject()['project']['optional-dependencies']
    self.assertContainsSubset(EXTRAS, extras)
    for extra, name in EXTRA_FILES.items():
      self.assertEqual(normal(extras[extra]), normal(file_requirements(name)), extra)
      self.assertIn('-r requirements.txt', (REPO / name).read_text().splitlines(), name)

  def test_everything_is_pinned_exactly(self):
    project = pyproject()['project']
    for line in project['dependencies'] + sum(project['optional-dependencies'].values(), []):
      specifiers = list(requirements.Requirement(line).specifier)
      self.assertEqual([s.operator for s in specifiers], ['=='], line)

  def test_tools_are_extras_not_runtime_dependencies(self):
    project = pyproject()['project']
    runtime = {requirements.Requirement(line).name for line in project['dependencies']}
    self.assertNoCommonElements(runtime, {'pytest', 'tensorboard', 'wandb', 'flit_core'})
    extras = {name: {requirements.Requirement(line).name for line in lines}
              for name, lines in project['optional-dependencies'].items()}
    self.assertIn('pytest', extras['test'])
    self.assertIn('tensorboard', extras['tensorboard'])
    self.assertIn('wandb', extras['wandb'])

  def test_the_test_extra_has_the_build_backend(self):
    # The wheel test builds without isolation, with the backend the test extra installs.
    backend = requirements.Requirement(pyproject()['build-system']['requires'][0])
    pins = {requirements.Requirement(line).name: requirements.Requirement(line)
            for line in pyproject()['project']['optional-dependencies']['test']}
    self.assertIn(backend.name, pins)
    [pin] = pins[backend.name].specifier
    self.assertTrue(backend.specifier.contains(pin.version), (backend, pin))


class CommandsTest(absltest.TestCase):

  def test_each_console_command_runs_its_module(self):
    scripts = pyproject()['project']['scripts']
    self.assertContainsSubset(COMMANDS, scripts)
    for command, target in scripts.items():
      module, function = target.split(':')
      self.assertEqual(module, 'alexnet_jax.console', command)
      with mock.patch.object(console.runpy, 'run_module') as run_module:
        getattr(console, function)()
      run_module.assert_called_once_with(COMMANDS[command], run_name='__main__', alter_sys=True)

  def test_each_command_module_runs_as_main(self):
    for module in COMMANDS.values():
      path = REPO / module.replace('.', '/')
      text = (path / '__main__.py' if path.is_dir() else path.with_suffix('.py')).read_text()
      self.assertIn("\nif __name__ == '__main__':\n", text, module)

  def test_ci_runs_the_readme_test_command(self):
    readme = (REPO / 'README.md').read_text()
    ci_lines = (REPO / '.ci' / 'run').read_text().strip().splitlines()
    self.assertIn(f'\n    {ci_lines[-1]}\n', readme)
    self.assertIn('-r requirements-test.txt', ci_lines[-1])


class ConfigNamesTest(absltest.TestCase):

  def test_a_name_is_the_shipped_file(self):
    shipped = REPO / 'alexnet_jax' / 'configs'
    self.assertEqual(cli.config_path('digits'), str(shipped / 'digits.py'))
    self.assertEqual(cli.config_path('paper/digits:no_lrn'),
                     f'{shipped / "paper" / "digits.py"}:no_lrn')

  def test_a_path_stays_a_path(self):
    for value in ('configs/digits.py', 'configs/paper/digits.py:no_lrn', '/elsewhere/my.py'):
      self.assertEqual(cli.config_path(value), value)

  def test_an_unknown_name_lists_the_shipped_ones(self):
    with self.assertRaisesRegex(errors.MissingInputError, 'no shipped config named .nope.*'
                                'digits, imagenet, paper/digits, paper/no_augmentation'):
      cli.config_path('nope')

  def test_the_checkout_configs_point_at_the_shipped_ones(self):
    # One copy of each config: configs/X.py of a checkout only re-exports alexnet_jax/configs/X.
    checkout = sorted(p.relative_to(REPO / 'configs')
                      for p in (REPO / 'configs').rglob('*.py'))
    shipped = sorted(p.relative_to(REPO / 'alexnet_jax' / 'configs')
                     for p in (REPO / 'alexnet_jax' / 'configs').rglob('*.py'))
    self.assertEqual(checkout, shipped)
    for rel in checkout:
      module = 'alexnet_jax.configs.' + '.'.join(rel.with_suffix('').parts)
      code = [line for line in (REPO / 'configs' / rel).read_text().split('"""')[-1].splitlines()
              if line.strip() and not line.lstrip().startswith('#')]
      self.assertEqual(code, [f'from {module.removesuffix(".__init__")} import *'], rel)


def run(args, cwd, env, timeout=TIMEOUT_S) -> str:
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  if result.returncode:
    raise AssertionError(f'{args} exited {result.returncode}:\n{result.stdout}{result.stderr}')
  return result.stdout


class WheelTest(absltest.TestCase):
  """The built wheel, installed into a fresh venv (jax etc. from the system's site-packages)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = pathlib.Path(tempfile.mkdtemp(prefix='test_packaging_'))
    # Nothing of the checkout may leak into the commands: no PYTHONPATH, another folder.
    cls.env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    cls.env['JAX_PLATFORMS'] = 'cpu'
    run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
         '-w', str(cls.dir / 'dist'), str(REPO)], REPO, cls.env)
    [cls.wheel] = (cls.dir / 'dist').glob('*.whl')
    cls.venv = cls.dir / 'venv'
    run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(cls.venv)],
        cls.dir, cls.env)
    run([sys.executable, '-m', 'pip', '--python', str(cls.venv / 'bin' / 'python'), 'install',
         '-q', '--no-deps', '--no-build-isolation', str(cls.wheel)], cls.dir, cls.env)
    cls.elsewhere = cls.dir / 'elsewhere'
    cls.elsewhere.mkdir()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, ignore_errors=True)
    super().tearDownClass()

  def test_wheel_holds_the_package_and_its_configs_only(self):
    names = zipfile.ZipFile(self.wheel).namelist()
    for rel in ('configs/imagenet.py', 'configs/digits.py', 'configs/paper/no_lrn.py',
                'launch.py', 'console.py', 'prepare/__main__.py'):
      self.assertIn(f'alexnet_jax/{rel}', names)
    tops = {n.split('/')[0] for n in names}
    self.assertEqual({t for t in tops if not t.endswith('.dist-info')}, {'alexnet_jax'})
    self.assertEmpty([n for n in names if n.endswith('.pyc')])

  def test_wheel_metadata_requires_the_pins(self):
    with zipfile.ZipFile(self.wheel) as wheel:
      [name] = [n for n in wheel.namelist() if n.endswith('.dist-info/METADATA')]
      metadata = email.parser.Parser().parsestr(wheel.read(name).decode())
    requires = metadata.get_all('Requires-Dist')
    runtime = [r for r in requires if 'extra ==' not in r]
    self.assertEqual(normal(runtime), normal(file_requirements('requirements.txt')))
    self.assertContainsSubset(EXTRAS, metadata.get_all('Provides-Extra'))

  def test_installed_commands_run_outside_the_repository(self):
    bin_dir = self.venv / 'bin'
    for command in COMMANDS:
      self.assertTrue((bin_dir / command).exists(), command)
    where = run([str(bin_dir / 'python'), '-c', 'import alexnet_jax; print(alexnet_jax.__file__)'],
                self.elsewhere, self.env)
    self.assertTrue(where.startswith(str(self.venv)), where)
    by_command = run([str(bin_dir / 'alexnet-summary'), '--config=digits'], self.elsewhere,
                     self.env)
    by_module = run([str(bin_dir / 'python'), '-m', 'alexnet_jax.summary', '--config', 'digits'],
                    self.elsewhere, self.env)
    self.assertEqual(by_command, by_module)
    # The digits net by hand (width 0.25, 64 crops, 10 classes, grouped conv2/4/5; weights +
    # biases): conv1 11*11*3*24+24, conv2 5*5*12*64+64, conv3 3*3*64*96+96, conv4 3*3*48*96+96,
    # conv5 3*3*48*64+64, fc6 (1x1x64 after pool5) 64*1024+1024, fc7 1024*1024+1024,
    # fc8 1024*10+10.
    params = (11 * 11 * 3 * 24 + 24 + 5 * 5 * 12 * 64 + 64 + 3 * 3 * 64 * 96 + 96 +
              3 * 3 * 48 * 96 + 96 + 3 * 3 * 48 * 64 + 64 + 64 * 1024 + 1024 +
              1024 * 1024 + 1024 + 1024 * 10 + 10)
    self.assertIn(f'\n{params:,} parameters', by_command)
    # The training command, planning the quick start for a 2-GPU machine without a dataset.
    plan = run([str(bin_dir / 'alexnet-train'), '--config=digits', '--workdir=run', '--dry_run',
                '--plan_devices=2', '--plan_platform=gpu', '--plan_train_images=1433'],
               self.elsewhere, self.env)
    self.assertIn(f'\nparameters: {params:,}\n', plan)
    self.assertIn('total steps 440', plan)  # 20 epochs of 1433 // 64 = 22 steps


if __name__ == '__main__':
  absltest.main()
