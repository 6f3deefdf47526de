"""The XLA:CPU options the programs set for themselves (alexnet_jax/core/xla_flags.py)."""

import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from alexnet_jax.model import alexnet
from alexnet_jax.core import xla_flags
from tests.helpers import REPO
from tests.helpers.subprocesses import subprocess_env
from tests.helpers.training import digits_dir

OPTION = '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'


class BackendTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # As on a machine where nothing names a platform (JAX reads this only at backend start).
    self.addCleanup(jax.config.update, 'jax_platforms', jax.config.jax_platforms)
    jax.config.update('jax_platforms', None)

  @parameterized.parameters(('cpu', True), ('cpu,cuda', True), (' CPU ', True), ('cuda,cpu', False),
                            ('tpu', False), ('cuda', False))
  def test_jax_platforms_decides(self, platforms, expected):
    self.assertEqual(xla_flags.backend_will_be_cpu({'JAX_PLATFORMS': platforms}), expected)

  def test_an_accelerator_package_means_not_cpu(self):
    with mock.patch.object(xla_flags.importlib.metadata, 'entry_points', return_value=[]), \
         mock.patch.object(xla_flags.importlib.util, 'find_spec',
                           side_effect=lambda name: object() if name == 'libtpu' else None):
      self.assertFalse(xla_flags.backend_will_be_cpu({}))
    with mock.patch.object(xla_flags.importlib.metadata, 'entry_points', return_value=[]), \
         mock.patch.object(xla_flags.importlib.util, 'find_spec', return_value=None):
      self.assertTrue(xla_flags.backend_will_be_cpu({}))

  def test_a_jax_plugin_means_not_cpu(self):
    with mock.patch.object(xla_flags.importlib.metadata, 'entry_points',
                           return_value=['jax_cuda12_plugin']):
      self.assertFalse(xla_flags.backend_will_be_cpu({}))


class JaxlibTest(parameterized.TestCase):

  @parameterized.parameters(('0.10.2', (OPTION,)), ('0.10.0', (OPTION,)), ('0.11.2', ()),
                            ('0.12.0.1', ()), ('0.1.0', ()))
  def test_option_only_for_the_measured_jaxlib(self, version, expected):
    self.assertEqual(xla_flags.cpu_flags(version), expected)

  def test_no_option_means_nothing_added(self):
    env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    with mock.patch.object(xla_flags, 'CPU_FLAGS', ()):
      self.assertEqual(xla_flags.configure_xla_cpu(env), ())
    self.assertEqual(env['XLA_FLAGS'], '--xla_force_host_platform_device_count=2')

  def test_bfloat16_inference_forward_is_right_under_the_options(self):
    # The suite compiles with the options launch.py sets (tests/__init__.py). jaxlib 0.11.2
    # with dot,reduce computed NaN here; the float32 forward is the reference.
    kwargs = dict(num_classes=10, towers=2, width=0.25)
    x = np.random.default_rng(0).normal(0, 50, (4, 64, 64, 3)).astype(np.float32)
    params = alexnet.AlexNet(**kwargs).init(jax.random.key(0), x[:1])['params']
    forward = lambda dtype: np.asarray(jax.jit(
        lambda p, x: alexnet.AlexNet(dtype=dtype, **kwargs).apply({'params': p}, x,
                                                                    train=False))(params, x))
    got, want = forward('bfloat16'), forward('float32')
    self.assertTrue(np.isfinite(got).all(), got)
    self.assertLess(np.linalg.norm(got - want) / np.linalg.norm(want), 3e-2)


class ConfigureTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # What the measured jaxlib gets, whichever jaxlib runs the tests.
    patcher = mock.patch.object(xla_flags, 'CPU_FLAGS', (OPTION,))
    patcher.start()
    self.addCleanup(patcher.stop)

  def test_appends_to_existing_flags_once(self):
    env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    self.assertEqual(xla_flags.configure_xla_cpu(env), xla_flags.CPU_FLAGS)
    self.assertEqual(env['XLA_FLAGS'], f'--xla_force_host_platform_device_count=2 {OPTION}')
    self.assertEqual(xla_flags.configure_xla_cpu(env), ())
    self.assertEqual(env['XLA_FLAGS'].count('ynn_fusion_type'), 1)

  def test_sets_flags_when_there_were_none(self):
    env = {'JAX_PLATFORMS': 'cpu'}
    xla_flags.configure_xla_cpu(env)
    self.assertEqual(env['XLA_FLAGS'], OPTION)

  @parameterized.parameters('--xla_cpu_experimental_ynn_fusion_type=',
                            '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise')
  def test_the_users_choice_wins(self, flags):
    env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': flags}
    self.assertEqual(xla_flags.configure_xla_cpu(env), ())
    self.assertEqual(env['XLA_FLAGS'], flags)

  def test_other_backends_are_left_alone(self):
    env = {'JAX_PLATFORMS': 'cuda'}
    self.assertEqual(xla_flags.configure_xla_cpu(env), ())
    self.assertNotIn('XLA_FLAGS', env)

  def test_too_late_in_this_process_warns_and_changes_nothing(self):
    jax.devices()  # this process's backend has started (the suite's own flags apply)
    before = os.environ.get('XLA_FLAGS')
    with mock.patch.dict(os.environ, {'XLA_FLAGS': '--xla_backend_optimization_level=0',
                                      'JAX_PLATFORMS': 'cpu'}):
      with self.assertLogs(level='WARNING') as logs:
        self.assertEqual(xla_flags.configure_xla_cpu(), ())
      self.assertEqual(os.environ['XLA_FLAGS'], '--xla_backend_optimization_level=0')
    self.assertIn('not applied', '\n'.join(logs.output))
    self.assertEqual(os.environ.get('XLA_FLAGS'), before)


class LaunchTest(absltest.TestCase):
  """launch.py sets the options before JAX starts, and XLA accepts them."""

  def dry_run(self, xla_flags: str) -> subprocess.CompletedProcess:
    env = subprocess_env(JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags)
    args = ['--config=configs/digits.py', f'--workdir={self.create_tempdir().full_path}',
            '--dry_run', f'--config.data.dir={digits_dir()}', '--config.mesh.model=1']
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc

  def test_launch_adds_the_options_and_keeps_the_users(self):
    proc = self.dry_run('--xla_backend_optimization_level=0')
    if xla_flags.CPU_FLAGS:  # this jaxlib's options (none for an unmeasured release)
      self.assertIn(f'XLA:CPU options added to XLA_FLAGS: {" ".join(xla_flags.CPU_FLAGS)}',
                    proc.stderr)
    else:
      self.assertNotIn('XLA:CPU options added', proc.stderr)
    self.assertNotIn('not applied', proc.stderr)
    proc = self.dry_run('--xla_backend_optimization_level=0 '
                        '--xla_cpu_experimental_ynn_fusion_type=')
    self.assertNotIn('XLA:CPU options added', proc.stderr)


if __name__ == '__main__':
  absltest.main()
