"""Environment variables the program and JAX read, set to what they cannot use: one line.

- A value JAX refuses when it is imported (JAX_ENABLE_X64=maybe, JAX_LOGGING_LEVEL=x) ends a
  command with one `error:` line and status 2, before any command module is loaded; with
  ALEXNET_JAX_TRACEBACK=1 JAX's own traceback stays.
- A process count beyond MAX_PROCESSES from a launcher's variables or --num_processes.
- More CPU devices than cli.MAX_CPU_DEVICES (JAX_NUM_CPU_DEVICES, XLA_FLAGS).
- JAX_ENABLE_X64=1 (valid): the mean-image crop of the input still computes, checked
  against numpy.
"""

import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.distributed import environment
from tests.helpers import REPO

SLURM = {'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_PROCID': '0',
         'SLURM_LOCALID': '0'}


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'ALEXNET_JAX_'))}
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env={**environ, **env},
                        capture_output=True, text=True, timeout=300)


class JaxRefusesItsEnvironmentTest(absltest.TestCase):

  def test_one_line_for_each_kind_of_jax_setting(self):
    for name, value, jax_words in (
        ('JAX_ENABLE_X64', 'maybe', "invalid truth value 'maybe' for environment "
                                    "'JAX_ENABLE_X64'"),
        ('JAX_LOGGING_LEVEL', 'x', 'Invalid value "x" for JAX flag jax_logging_level')):
      with self.subTest(name):
        result = _run('import alexnet_jax.core.cli', **{name: value})
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(result.stdout, '')
        self.assertEqual(result.stderr,
                         f'error: the environment variable {name}={value!r} is not a value JAX '
                         f'accepts (ValueError: {jax_words}); unset it or set it to one JAX '
                         'documents\n')

  def test_the_traceback_stays_on_request(self):
    result = _run('import alexnet_jax', JAX_ENABLE_X64='maybe', ALEXNET_JAX_TRACEBACK='1')
    self.assertEqual(result.returncode, 1)
    self.assertIn('Traceback (most recent call last)', result.stderr)
    self.assertNotIn('error: ', result.stderr)


class ProcessCountTest(absltest.TestCase):

  def test_a_launcher_count_beyond_the_maximum_is_one_line(self):
    for name, extra in (('SLURM_NTASKS', SLURM),
                        ('OMPI_COMM_WORLD_SIZE', {'OMPI_MCA_orte_hnp_uri': '1.0;tcp://h:1'})):
      for value in ('99999999999999999999', str(environment.MAX_PROCESSES + 1)):
        with self.subTest(f'{name}={value}'):
          with self.assertRaisesWithLiteralMatch(
              errors.InputError,
              f'the environment variable {name}={value!r} must be at most 65536 (the cluster '
              'launcher sets it; unset it, or fix the job script that sets it)'):
            environment.cluster_process_count({**extra, name: value})
    self.assertEqual(environment.cluster_process_count({**SLURM, 'SLURM_NTASKS': '65536'}),
                     65536)

  def test_num_processes_beyond_the_maximum_is_one_line(self):
    with self.assertRaisesWithLiteralMatch(
        errors.InputError, '--num_processes must be in [1, 65536], got 99999999999999999999'):
      environment.from_flags('localhost:1234', 99999999999999999999, 0)


class CpuDeviceCountTest(absltest.TestCase):

  def test_too_many_cpu_devices_are_refused_before_the_backend(self):
    for env, words in (
        # Just above the maximum: were they not refused, JAX would make them in seconds.
        ({'JAX_NUM_CPU_DEVICES': '4097'}, 'JAX_NUM_CPU_DEVICES=4097 asks JAX for 4097 '),
        ({'XLA_FLAGS': '--xla_force_host_platform_device_count=4097'},
         'XLA_FLAGS --xla_force_host_platform_device_count=4097 asks JAX for 4097 ')):
      with self.subTest(str(env)):
        result = _run(textwrap.dedent('''
            from alexnet_jax.core import cli, errors
            import jax
            try:
              cli.start_backend()
            except errors.InputError as e:
              print(e)
            print(jax.config.jax_num_cpu_devices, end='')
            '''), **env)
        self.assertStartsWith(result.stdout, words)
        self.assertIn(f'at most {cli.MAX_CPU_DEVICES} are accepted', result.stdout)
    self.assertEqual(cli.MAX_CPU_DEVICES, 4096)


class MeanCropUnder64BitTest(absltest.TestCase):

  def test_matches_numpy(self):
    code = textwrap.dedent('''
        import numpy as np
        import jax.numpy as jnp
        from alexnet_jax.data import preprocess
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (2, 3, 3, 3), np.uint8)
        mean = rng.uniform(0, 255, (5, 5, 3)).astype(np.float32)
        crop = np.array([[0, 2], [2, 1]], np.int32)
        flip = np.array([False, True])
        light = np.array([[1, 2, 3], [0, 0, 0]], np.float32)
        out = preprocess.normalize(jnp.asarray(image), jnp.asarray(crop), jnp.asarray(flip),
                                   jnp.asarray(light), jnp.asarray(mean))
        want = []
        for i, ((t, l), f) in enumerate(zip(crop, flip)):
          window = mean[t:t + 3, l:l + 3]
          # The host ships the crop unmirrored; the device mirrors crop and mean window alike.
          diff = image[i].astype(np.float64) - window
          want.append((diff[:, ::-1] if f else diff) + light[i])
        np.testing.assert_allclose(np.asarray(out), np.stack(want), rtol=0, atol=1e-4)
        print('same')
        ''')
    result = _run(code, JAX_ENABLE_X64='1')
    self.assertEqual(result.stdout, 'same\n', result.stderr[-2000:])


if __name__ == '__main__':
  absltest.main()
