"""Test suite. Eight CPU devices for the sharding tests, set before JAX starts its backend.

Every test module is imported through this package first, so the count holds for the
whole run; tests that need one device use `jax.devices()[0]` (the default placement).
"""

import jax

jax.config.update('jax_num_cpu_devices', 8)
