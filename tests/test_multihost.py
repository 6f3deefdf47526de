"""Two processes on localhost, one CPU device each, against one process with two devices.

Each worker (tests/tiny_training.py) joins as launch.py does
(`startup.init_distributed`: the roll call, the watch, `jax.distributed.initialize`)
with a local coordinator, agrees on the config, feeds only its slice of every
batch (`placement.data_shard`) and trains a few steps of the run's own step
(`experiment.setup`, `step_fns.train_step`, the shipped sharding rules) under a
mesh that spans both processes: data-parallel (2, 1), where each process reads
half of each batch, and model-parallel (1, 2), where the two devices hold one
tower each and both processes read the whole batch. The final parameters must
equal those of the same run in one process with two devices (a third worker,
run alongside).

  JAX_PLATFORMS=cpu python3 -m pytest -q tests/test_cluster.py tests/test_multihost.py
"""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from tests import tiny_training as tiny
from tests.helpers.subprocesses import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
TIMEOUT_S = 420


def worker_env() -> dict[str, str]:
  """A worker's environment: no inherited JAX/XLA settings (it sets its device count)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('XLA_FLAGS', 'JAX_'))}
  env['JAX_PLATFORMS'] = 'cpu'
  # LLVM's optimisation takes most of XLA:CPU's compile time (random-normal init
  # ~30 s -> ~5 s here) and this test runs only a few tiny steps.
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO, env.get('PYTHONPATH')]))
  return env


def run_workers(commands: list[list[str]], logdir: str) -> list[tuple[int, str]]:
  """Runs the worker commands at once; (exit code, log tail) of each. Kills stragglers."""
  procs, logs = [], []
  try:
    for i, args in enumerate(commands):
      logs.append(open(os.path.join(logdir, f'worker{i}.log'), 'w'))
      procs.append(subprocess.Popen([sys.executable, '-m', 'tests.tiny_training'] + args,
                                    cwd=REPO, env=worker_env(), stdout=logs[-1],
                                    stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  return [(code, open(log.name).read()[-3000:]) for code, log in zip(codes, logs)]


class MultiProcessTest(absltest.TestCase):

  def test_two_processes_match_two_devices(self):
    with tempfile.TemporaryDirectory(prefix='multihost_') as out:
      self.check_runs_agree(out)

  def check_runs_agree(self, out: str) -> None:
    two, one = os.path.join(out, 'two_processes'), os.path.join(out, 'one_process')
    os.makedirs(two)
    os.makedirs(one)
    port = free_port()
    common = [f'--steps={STEPS}']
    results = run_workers(
        [common + [f'--coordinator=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}',
                   f'--out={two}'] for i in range(2)]
        + [common + ['--num_processes=1', '--local_devices=2', f'--out={one}']], out)
    for i, (code, tail) in enumerate(results):
      self.assertEqual(code, 0, f'worker {i} failed:\n{tail}')
    for name in tiny.MULTIHOST_MESHES:
      got = np.load(os.path.join(two, f'{name}.npz'))
      want = np.load(os.path.join(one, f'{name}.npz'))
      self.assertEqual(sorted(got.files), sorted(want.files), name)
      self.assertNotEmpty(want.files)
      for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7,
                                   err_msg=f'{name} {key}')


if __name__ == '__main__':
  absltest.main()
