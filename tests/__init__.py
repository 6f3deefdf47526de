"""Test suite. Eight CPU devices for the sharding tests, set before JAX starts its backend.

Every test module is imported through this package first, so the count holds for the
whole run; tests that need one device use `jax.devices()[0]` (the default placement).
"""

import jax

jax.config.update('jax_num_cpu_devices', 8)

# pytest runs these absltest cases without absl's flag parsing; absltest helpers such as
# create_tempdir read flags (--test_tmpdir), so accept the defaults.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
