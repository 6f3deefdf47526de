"""`python -m tests.fuzz [--profile=long|fast] [--only=CLASS,...]`: runs the fuzz tests.

Prints every case that broke a property, the expected failures of other features
(long profile), and exits non-zero when any case of these classes failed.
"""

import os
import sys
import unittest

from absl import app
from absl import flags

flags.DEFINE_enum('profile', 'long', ['fast', 'long'], 'How many cases per class (suite.py).')
flags.DEFINE_list('only', [], 'Classes to run (config, plan, path, name, workdir_file, env); '
                  'default all.')


def main(argv: list[str]) -> None:
  del argv
  os.environ['ALEXNET_FUZZ_PROFILE'] = flags.FLAGS.profile
  from tests.fuzz import suite  # pylint: disable=g-import-not-at-top
  names = {'config': 'test_config_overrides', 'plan': 'test_plan_numbers',
           'path': 'test_path_flags', 'name': 'test_odd_names',
           'workdir_file': 'test_workdir_files', 'env': 'test_environment'}
  chosen = flags.FLAGS.only or list(names)
  tests = unittest.TestSuite(suite.FuzzTest(names[c]) for c in chosen)
  outcome = unittest.TextTestRunner(verbosity=2).run(tests)
  print(f'\n{len(suite.FuzzTest.expected)} expected failures (another feature\'s defects):')
  for line in suite.FuzzTest.expected:
    print(line, end='\n\n')
  sys.exit(0 if outcome.wasSuccessful() else 1)


if __name__ == '__main__':
  app.run(main)
