"""XLA options the program sets for itself, before JAX starts its backend.

`configure_xla_cpu()` sets which work XLA:CPU hands to YNNPACK to matrix
multiplications and reductions (`--xla_cpu_experimental_ynn_fusion_type=dot,reduce`)
when the run will use the CPU backend. jaxlib 0.10.2 also hands it every convolution
by default, and for AlexNet's convolutions YNNPACK is about 2x slower than XLA's own:
on a 2-core AMD EPYC (AVX2) the option makes the paper net's train step ~1.9x faster
(batch 64: 0.94x -> 1.86x PyTorch eager). Adding `eltwise` to the list gained nothing
for the paper net and lost ~10% on the one-tower net (benchmarks/README.md). Results
stay bitwise reproducible from run to run.

Only for jaxlib 0.10, where it was measured (`cpu_flags`). On jaxlib 0.11.2 XLA's own
choice ran about as fast as `dot,reduce` (0.94x-1.08x among `dot,reduce`, `reduce` and
the default; 0.79x with YNNPACK off or with 0.10.2's default list; 2 cores, float32,
batch 32), and the option's `dot` fusion makes the jitted bfloat16 inference forward of
the network NaN: there XLA keeps its own choice.

It appends to XLA_FLAGS, and changes nothing when that option is already in XLA_FLAGS
(`--xla_cpu_experimental_ynn_fusion_type=` with nothing after `=` turns YNNPACK off),
when JAX_PLATFORMS names another backend first or an accelerator plugin is installed,
when this jaxlib gets no option, or when this process's JAX backend has already started
(XLA reads XLA_FLAGS once).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import MutableMapping

from absl import logging

YNN_OPTION = '--xla_cpu_experimental_ynn_fusion_type'
MEASURED_JAXLIB = '0.10.'  # the jaxlib releases the option was measured on


def cpu_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
  """The XLA:CPU options for a jaxlib release (default: the installed one)."""
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
      return ()
  if jaxlib_version.startswith(MEASURED_JAXLIB):
    return (f'{YNN_OPTION}=dot,reduce',)
  return ()


CPU_FLAGS = cpu_flags()

# Packages that give JAX a default backend other than the CPU when none is named.
ACCELERATOR_PACKAGES = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin')


def backend_will_be_cpu(environ: MutableMapping[str, str] | None = None) -> bool:
  """Whether JAX's default backend will be the CPU, judged without starting it."""
  env = os.environ if environ is None else environ
  platforms = env.get('JAX_PLATFORMS', '')
  if not platforms:
    import jax  # pylint: disable=g-import-not-at-top
    platforms = jax.config.jax_platforms or ''
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  if importlib.metadata.entry_points(group='jax_plugins'):
    return False
  return not any(importlib.util.find_spec(p) for p in ACCELERATOR_PACKAGES)


def configure_xla_cpu(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
  """Appends CPU_FLAGS to XLA_FLAGS when the CPU backend is coming; returns what it added.

  With no argument it edits os.environ and must run before anything starts JAX's
  backend here (the first jax.devices(), array or jit); pass a copy of the
  environment to configure a child process instead.
  """
  env = os.environ if environ is None else environ
  current = env.get('XLA_FLAGS', '')
  if not CPU_FLAGS or YNN_OPTION in current or not backend_will_be_cpu(env):
    return ()
  if env is os.environ:
    if backend_started():
      logging.warning('JAX started its backend before configure_xla_cpu(): %s not applied.',
                      ' '.join(CPU_FLAGS))
      return ()
  env['XLA_FLAGS'] = ' '.join([current, *CPU_FLAGS]).strip()
  return CPU_FLAGS


def backend_started() -> bool:
  """Whether this process's JAX backend has started (XLA has read XLA_FLAGS).

  JAX has no public query for it, but its public config refuses a new value of
  `jax_num_cpu_devices` once a backend exists: try one and put the old back.
  """
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_num_cpu_devices
  try:
    jax.config.update('jax_num_cpu_devices', current + 1 if current > 0 else 1)
  except RuntimeError:
    return True
  jax.config.update('jax_num_cpu_devices', current)
  return False
