"""A config field that no config has is refused in one line naming it and the nearest field.

Wherever the typo comes from: a config file (plain Python, which may set any attribute),
a --config.FIELD override, or a stored config.json (a resume, evaluate, predict). A
resume never records one as an accepted change. A known field that is absent (a config
written before the field existed) stays accepted.
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import ml_collections

from alexnet_jax.config import known_fields
from alexnet_jax.config import resolution
from alexnet_jax.config import resume_changes
from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.evaluation import finished_run
from alexnet_jax.storage import workdir_files
from configs import digits
from configs import imagenet
from configs.paper import ABLATIONS
from configs.paper import digits as paper_digits
from tests.helpers import REPO
from tests.helpers.subprocesses import subprocess_env

TYPO_MESSAGE = ('config.optim.learnin_rate, which is not a config field (did you mean '
                'config.optim.learning_rate?)')


def fields(config) -> set[str]:
  return set(resume_changes.flatten(config.to_dict()))


def with_typo() -> ml_collections.ConfigDict:
  config = digits.get_config()
  config.optim.learnin_rate = 0.5  # a ConfigDict is not locked while a config file builds it
  return config


def plain(config) -> dict:
  return json.loads(config.to_json())


def stored_workdir(test: absltest.TestCase, stored: dict, checkpoint: bool = True) -> str:
  """A workdir whose config.json is `stored`, with a finished checkpoint to resume from."""
  workdir = test.create_tempdir().full_path
  with open(os.path.join(workdir, workdir_files.CONFIG_JSON), 'w') as f:
    json.dump(stored, f)
  if checkpoint:
    os.makedirs(os.path.join(workdir, 'checkpoints', '7'))
  return workdir


def launch(*args: str) -> subprocess.CompletedProcess:
  env = subprocess_env(JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith('error:')]


class SchemaTest(absltest.TestCase):

  def test_the_known_fields_are_the_base_configs(self):
    self.assertEqual(known_fields.FIELDS, fields(imagenet.get_config()))

  def test_every_shipped_config_holds_known_fields_only(self):
    configs = [imagenet.get_config(), digits.get_config()]
    configs += [paper_digits.get_config(name) for name in ABLATIONS]
    for config in configs:
      self.assertEqual(known_fields.unknown(config), [])

  def test_nearest_field(self):
    self.assertEqual(known_fields.nearest('optim.learnin_rate'), 'optim.learning_rate')
    self.assertEqual(known_fields.nearest('optimm.momentum'), 'optim.momentum')
    self.assertEqual(known_fields.nearest('data.crop_sise'), 'data.crop_size')
    self.assertIsNone(known_fields.nearest('zzzz'))


class ConfigFileTest(absltest.TestCase):

  def test_a_typo_in_a_config_is_refused_naming_the_nearest_field(self):
    with self.assertRaises(errors.InputError) as ctx:
      resolution.load(with_typo())
    self.assertIn(TYPO_MESSAGE, str(ctx.exception))
    self.assertLen(str(ctx.exception).splitlines(), 1)

  def test_every_typo_is_named(self):
    config = with_typo()
    config.data.crop_sise = 3
    with self.assertRaises(errors.InputError) as ctx:
      resolution.resolve_auto(config)
    self.assertIn('config.data.crop_sise, which is not a config field (did you mean '
                  'config.data.crop_size?)', str(ctx.exception))
    self.assertIn(TYPO_MESSAGE, str(ctx.exception))

  def test_a_known_field_left_out_is_fine(self):
    config = digits.get_config()
    del config['evals']  # configs written before the field existed
    del config.data['device_prefetch']
    self.assertEqual(known_fields.unknown(config), [])
    resolution.resolve_auto(config)

  def test_launch_refuses_a_config_file_with_a_typo(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'typo.py')
    with open(path, 'w') as f:
      f.write('from configs import digits\n\n\ndef get_config():\n'
              '  c = digits.get_config()\n  c.optim.learnin_rate = 0.5\n'
              # Were the typo let through, the run would stop at the data, in seconds.
              f'  c.data.dir = {os.path.join(folder, "no_data")!r}\n'
              "  c.data.prepare_from = ''\n  return c\n")
    workdir = os.path.join(folder, 'run')
    proc = launch(f'--config={path}', f'--workdir={workdir}')
    self.assertEqual(proc.returncode, errors.EXIT_USER_ERROR, proc.stderr[-2000:])
    self.assertEqual(error_lines(proc.stderr), [f'error: the config sets {TYPO_MESSAGE}; the '
                                                'fields are those of configs/imagenet.py'])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertFalse(os.path.exists(os.path.join(workdir, workdir_files.CONFIG_JSON)))


class OverrideTest(absltest.TestCase):

  def test_an_override_typo_is_one_line_with_the_nearest_field(self):
    folder = self.create_tempdir().full_path
    for override, want in (
        ('optim.learnin_rate', 'config.optim.learnin_rate is not a config field (did you '
         'mean config.optim.learning_rate?); the fields are those of configs/imagenet.py'),
        ('optimm.momentum', 'config.optimm.momentum is not a config field (did you mean '
         'config.optim.momentum?); the fields are those of configs/imagenet.py'),
        ('optim.learning_rate.x', 'config.optim.learning_rate is a single value (a float), not a '
         'group of fields; set it as --config.optim.learning_rate=VALUE')):
      proc = launch('--config=configs/digits.py', f'--workdir={folder}/run',
                    f'--config.{override}=0.5')
      self.assertEqual(proc.returncode, errors.EXIT_USER_ERROR, proc.stderr[-2000:])
      self.assertEqual(error_lines(proc.stderr), [f'error: --config.{override}: {want}'])
      self.assertNotIn('Traceback', proc.stderr)


  def test_an_error_of_the_config_file_itself_is_not_blamed_on_an_override(self):
    # A KeyError raised inside get_config keeps its traceback: it names no override.
    argv = ['launch.py', '--config=mine.py', '--config.optim.learning_rate=0.1']
    self.assertIsNone(cli._unknown_override(argv, KeyError("'num_clases'")))  # pylint: disable=protected-access
    self.assertEqual(
        cli._unknown_override(argv[:2] + ['--config.optim.learnin_rate=1'],  # pylint: disable=protected-access
                              AttributeError(KeyError(
                                  "'learnin_rate'\nDid you mean \"learning_rate\" instead of "
                                  "\"learnin_rate\"?"))),
        '--config.optim.learnin_rate: config.optim.learnin_rate is not a config field (did you '
        'mean config.optim.learning_rate?)')


class StoredConfigTest(absltest.TestCase):

  def test_a_resume_refuses_a_stored_typo_and_records_nothing(self):
    stored = plain(with_typo())
    workdir = stored_workdir(self, stored)
    current = plain(digits.get_config())
    with self.assertRaises(errors.InputError) as ctx:
      workdir_files.check_resume(workdir, current)
    path = os.path.join(workdir, workdir_files.CONFIG_JSON)
    self.assertEqual(str(ctx.exception),
                     f'{path} sets {TYPO_MESSAGE}; rename or remove it in {path} and in '
                     f'{workdir_files.CONFIG_PY} beside it')
    self.assertEqual(workdir_files.read_config_history(workdir), [])

  def test_evaluate_and_predict_refuse_a_stored_typo(self):
    workdir = stored_workdir(self, plain(with_typo()), checkpoint=False)
    with self.assertRaises(errors.InputError) as ctx:
      finished_run.load_config(workdir)
    self.assertIn(TYPO_MESSAGE, str(ctx.exception))

  def test_a_stored_config_without_a_newer_field_resumes(self):
    stored = plain(digits.get_config())
    del stored['evals']
    workdir = stored_workdir(self, stored)
    accepted = workdir_files.check_resume(workdir, plain(digits.get_config()))
    self.assertEqual([c.field for c in accepted], ['evals'])

  def test_compare_never_accepts_an_unknown_field(self):
    # The comparison itself, behind the check of the stored file: either side.
    base = plain(digits.get_config())
    typo = plain(with_typo())
    for stored, current in ((typo, base), (base, typo)):
      refused, accepted = resume_changes.compare(stored, current)
      self.assertEqual([c.field for c in refused], ['optim.learnin_rate'])
      self.assertEqual(accepted, [])


if __name__ == '__main__':
  absltest.main()
