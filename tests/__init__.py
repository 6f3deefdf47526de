"""Test suite set-up, run before any test module imports JAX's backend.

- Eight CPU devices for the sharding tests; tests that need one device use
  `jax.devices()[0]` (the default placement).
- XLA's backend optimisation off: the tests' tiny networks spend far more time in
  LLVM compiling than running (model.init compiles ~7x faster).
- The XLA:CPU options launch.py sets for itself (`xla_flags.CPU_FLAGS`), so that the
  code under test compiles as it does in a real run.
Subprocesses that must compare bitwise with in-process runs use the same flags
(`XLA_TEST_FLAGS`).
"""

import os

from alexnet_jax.core import xla_flags

XLA_TEST_FLAGS = ' '.join(['--xla_backend_optimization_level=0', *xla_flags.CPU_FLAGS])
if XLA_TEST_FLAGS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {XLA_TEST_FLAGS}'.strip()

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)

# pytest runs these absltest cases without absl's flag parsing; absltest helpers such as
# create_tempdir read flags (--test_tmpdir), so accept the defaults.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
