"""Config overrides and --plan_* numbers a user can get wrong: one `error:` line, status 2.

The flag parser is launch.py's and summary's (`cli.parse_flags`), run here on a flag
set of its own holding the real --config flag and configs/digits.py.
"""

import contextlib
import io
import math
import os
import sys
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
from ml_collections.config_flags import config_flags

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.training import dry_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, 'configs', 'digits.py')


def parse(*args: str) -> tuple[object, int, str]:
  """(the parsed --config or None, exit status or 0, what went to stderr)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=True)
  err = io.StringIO()
  status = 0
  argv = ['prog', *args]
  # ml_collections reads the overrides from sys.argv.
  with mock.patch.object(flags, 'FLAGS', values), mock.patch.object(sys, 'argv', argv), \
       contextlib.redirect_stderr(err):
    try:
      cli.parse_flags(argv)
    except SystemExit as e:
      status = e.code
  return (values.config if status == 0 else None), status, err.getvalue()


class OverrideErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('through_a_leaf', ('--config.optim.momentum.x=1',),
       'error: --config.optim.momentum.x: config.optim.momentum is a single value (a float), '
       'not a group of fields; set it as --config.optim.momentum=VALUE'),
      ('through_a_leaf_twice', ('--config.optim.momentum.x.y=1',),
       'error: --config.optim.momentum.x.y: config.optim.momentum is a single value (a float), '
       'not a group of fields; set it as --config.optim.momentum=VALUE'),
      ('unknown_group', ('--config.nosuch.seed=1',),
       'error: --config.nosuch.seed: config.nosuch.seed is not a config field; the fields are '
       'those of configs/imagenet.py'),
      ('unknown_field', ('--config.optim.lr=1',),
       'error: --config.optim.lr: config.optim.lr is not a config field; the fields are those '
       'of configs/imagenet.py'),
      ('index_path', ('--config.batch_size.0=1',),
       'error: --config.batch_size.0: not a config field (a field is names joined by dots, as in '
       '--config.optim.momentum=0.9)'),
      ('through_a_string', ('--config.model.dtype.x=1',),
       "error: --config.model.dtype.x: cannot be applied to the config (TypeError: string "
       "indices must be integers, not 'str'): an override names one field (names joined by "
       "dots) and gives it a value of that field's type"),
  )
  def test_one_line(self, overrides, expected):
    _, status, err = parse(f'--config={DIGITS}', *overrides)
    self.assertEqual((status, err.strip()), (errors.EXIT_USER_ERROR, expected))

  def test_the_override_that_cannot_be_applied_is_named_among_others(self):
    _, status, err = parse(f'--config={DIGITS}', '--config.seed=3', '--config.model.dtype.x=1')
    self.assertEqual(status, 2)
    self.assertStartsWith(err, 'error: --config.model.dtype.x: cannot be applied')

  def test_config_file_argument_to_a_get_config_without_one(self):
    _, status, err = parse(f'--config={DIGITS}:small')
    self.assertEqual(status, errors.EXIT_USER_ERROR)
    self.assertEqual(err.strip(),
                     f'error: the --config file {DIGITS} has a get_config() that takes no '
                     f"argument, but --config={DIGITS}:small passes it 'small' (the text after "
                     f'the colon); give --config={DIGITS} and set fields with '
                     '--config.FIELD=VALUE')

  def test_a_config_file_that_is_not_python(self):
    path = self.create_tempfile(content='a plain file\n').full_path
    _, status, err = parse(f'--config={path}')
    self.assertEqual((status, err.strip()),
                     (2, f'error: the --config file {path} is not a Python config file ({path}, '
                         'line 1: invalid syntax); give a file like configs/imagenet.py'))

  def test_a_config_path_that_is_not_a_file_is_not_opened(self):
    fifo = os.path.join(self.create_tempdir().full_path, 'fifo')
    os.mkfifo(fifo)
    # /dev/null is a character device, where the machine has one (some sandboxes give a file).
    devices = [os.devnull] if not os.path.isfile(os.devnull) else []
    for path in [fifo, os.path.dirname(fifo), *devices]:
      _, status, err = parse(f'--config={path}')
      self.assertEqual((status, err.strip()),
                       (2, f'error: the --config file {path} is not a regular file; give a '
                           'config file like configs/imagenet.py'))

  def test_other_flag_errors_keep_absl_line_and_status_1(self):
    _, status, err = parse(f'--config={DIGITS}', '--config.num_epochs=ten')
    self.assertEqual(status, 1)
    self.assertEqual(err.splitlines(), [
        "FATAL Flags parsing error: flag --config.num_epochs=ten: invalid literal for int() "
        "with base 10: 'ten'", 'Pass --helpshort or --helpfull to see help on flags.'])

  def test_conv_widths_is_settable(self):
    config, status, _ = parse(f'--config={DIGITS}', '--config.model.conv_widths=(8,16,24,24,16)')
    self.assertEqual(status, 0)
    self.assertEqual(config.model.conv_widths, (8, 16, 24, 24, 16))
    config, _, _ = parse(f'--config={DIGITS}')
    self.assertIsNone(config.model.conv_widths)
    self.assertIsNone(config.to_dict()['model']['conv_widths'])


class PlanNumbersTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('memory_inf', 'device_memory_gib', math.inf, '[1e-06, 1e+06]'),
      ('speed_tiny', 'images_per_sec', 1e-300, '[0.001, 1e+12]'),
      ('speed_huge', 'images_per_sec', 1e300, '[0.001, 1e+12]'),
      ('peak_inf', 'peak_tflops', math.inf, '[0.001, 1e+09]'),
      ('devices_huge', 'devices', 2**40, '[1, 1.04858e+06]'),
  )
  def test_out_of_range(self, name, value, interval):
    target = dry_run.Target(**{name: value})
    with self.assertRaisesWithLiteralMatch(
        errors.InputError, f'--plan_{name} must be in {interval} (beyond that it describes no '
        f'machine), got {value!r}'):
      target.check()

  def test_nan_and_the_bounds(self):
    with self.assertRaisesWithLiteralMatch(
        errors.InputError, '--plan_images_per_sec must be a positive number, got nan'):
      dry_run.Target(images_per_sec=math.nan).check()
    for name, (low, high) in dry_run.PLAN_RANGES.items():
      for value in (low, high):
        extra = {'peak_tflops': {'efficiency': 0.5}}.get(name, {})
        if name in ('processes', 'host_cores'):
          extra = {'devices': int(value), 'platform': 'gpu'}
        if name == 'devices':
          extra = {'platform': 'gpu'}
        dry_run.Target(**{name: value}, **extra).check()


if __name__ == '__main__':
  absltest.main()
