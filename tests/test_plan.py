"""`launch.py --dry_run` on 1, 2 and 8 devices, and a job started the way SLURM starts it."""

import json
import os
import random
import re
import socket
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import XLA_TEST_FLAGS
from tests.test_train import digits_dir
from tests.test_train import read_metrics
from tests.test_train import tiny_config
from tests.test_train import write_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_env(devices: int, **extra: str) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {XLA_TEST_FLAGS}',
             **extra)
  return env


def launch(args, env, timeout=300):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def number(pattern: str, text: str) -> int:
  match = re.search(pattern, text)
  assert match, f'{pattern!r} not in plan:\n{text}'
  return int(match.group(1).replace(',', ''))


class DryRunTest(parameterized.TestCase):

  @parameterized.parameters((1, 1), (2, 2), (8, 2))
  def test_plan_numbers(self, devices, model_axis):
    data_dir = digits_dir()
    workdir = self.create_tempdir().full_path
    args = ['--config=configs/digits.py', f'--workdir={workdir}', '--dry_run',
            f'--config.data.dir={data_dir}', f'--config.mesh.model={model_axis}']
    proc = launch(args, launch_env(devices))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    out = proc.stdout

    # Independent figures: the digits config, the dataset's own description, the layer shapes.
    batch, data_axis = 64, devices // model_axis
    with open(os.path.join(data_dir, 'dataset.json')) as f:
      train_size = json.load(f)['splits']['train']
    # width 0.25: convs 24, 64, 96, 96, 64 (11x11x3, 5x5x12, 3x3x64, 3x3x48, 3x3x48 kernels
    # in the two-tower net), 64-px crops -> 1x1x64 at pool5, fc 1024, 10 classes.
    params = (11 * 11 * 3 * 24 + 24 + 5 * 5 * 12 * 64 + 64 + 3 * 3 * 64 * 96 + 96
              + 3 * 3 * 48 * 96 + 96 + 3 * 3 * 48 * 64 + 64
              + 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10)
    self.assertEqual(number(r'batch: global (\d+)', out), batch)
    self.assertEqual(number(r'per process (\d+)', out), batch)
    self.assertEqual(number(r'per device (\d+)', out), batch // data_axis)
    self.assertEqual(number(r'mesh data=(\d+)', out), data_axis)
    self.assertEqual(number(r'x model=(\d+)', out), model_axis)
    self.assertEqual(number(r'steps per epoch (\d+)', out), train_size // batch)
    self.assertEqual(number(r'total steps (\d+)', out), 20 * (train_size // batch))
    self.assertEqual(number(r'parameters: ([\d,]+)', out), params)
    # Every weight's output dimension is split over the model axis: 1/model of 4-byte floats.
    self.assertEqual(number(r'params\s+([\d,]+) bytes', out), params * 4 // model_axis)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))

  @parameterized.parameters(
      (8, ['--config.mesh.model=3'], '8 devices cannot be split by config.mesh.model=3'),
      (8, ['--config.mesh.data=3', '--config.mesh.model=2'], 'needs 6 devices, but 8'),
      (2, ['--config.batch_size=63', '--config.mesh.model=1'], 'config.batch_size=63'),
  )
  def test_impossible_mesh(self, devices, overrides, message):
    proc = launch(['--config=configs/digits.py', f'--workdir={self.create_tempdir().full_path}',
                   '--dry_run', f'--config.data.dir={digits_dir()}', *overrides],
                  launch_env(devices))
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn(message, errors[0])
    self.assertNotIn('Traceback', proc.stderr)


def free_slurm_port() -> int:
  """A free port in the range JAX derives from SLURM_JOB_ID (61440 + job id % 4096)."""
  for _ in range(100):
    port = random.randint(61440, 65535)
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        continue
      return port
  raise RuntimeError('no free port in 61440-65535')


class SlurmStyleRunTest(absltest.TestCase):

  def test_two_slurm_tasks_match_one_process(self):
    """Two processes with the variables a SLURM step sets (as scripts/slurm_gpu.sbatch runs
    them: `srun python launch.py ...`, no distributed flags) train like one 2-device process."""
    data = digits_dir()
    config = tiny_config(data, num_train_steps=4, final_eval_crops=1)
    config_file = write_config_file(os.path.join(self.create_tempdir().full_path, 'c.py'), config)
    single, multi = self.create_tempdir().full_path, self.create_tempdir().full_path

    proc = launch([f'--config={config_file}', f'--workdir={single}'], launch_env(2))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])

    job_id = str(free_slurm_port() - 61440)
    procs = []
    for rank in range(2):
      env = launch_env(1, SLURM_JOB_ID=job_id, SLURM_NTASKS='2', SLURM_PROCID=str(rank),
                       SLURM_LOCALID='0', SLURM_STEP_NODELIST='localhost')
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={config_file}',
           f'--workdir={multi}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
      for p in procs:
        outputs.append(p.communicate(timeout=300))
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    for p, (_, err) in zip(procs, outputs):
      self.assertEqual(p.returncode, 0, err[-3000:])
    self.assertIn('JAX process 1 of 2', outputs[1][1])

    losses = lambda w: [(r['step'], r['loss']) for r in read_metrics(w) if r['kind'] == 'train']
    self.assertEqual([s for s, _ in losses(multi)], [1, 2, 3, 4])
    np.testing.assert_allclose([l for _, l in losses(multi)], [l for _, l in losses(single)],
                               rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
