"""Resuming a workdir with another number of processes: 2 -> 1 and 1 -> 2, through launch.py.

Real processes on localhost, one CPU device each (`--coordinator_address`,
`--num_processes`, `--process_id`). A run stops after STOP steps (its last step
is checkpointed) and is resumed to STEPS by the other process count; the
uninterrupted yardstick runs all STEPS in one process. Since every process count
reads the same global batch sequence, each resumed step must see the same
examples as the yardstick: its logged train loss (the mean over the global batch)
equals the yardstick's to float tolerance (a skipped or repeated batch changes it
by orders of magnitude more), and so do the final parameters.

All runs share a persistent XLA compilation cache, so each program compiles once.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from alexnet_jax.storage import checkpointing
from tests import XLA_TEST_FLAGS
from tests.helpers import REPO
from tests.helpers import subprocesses
from tests.helpers import training

STEPS = 4
STOP = 2
TIMEOUT_S = 300


def env() -> dict[str, str]:
  """One CPU device per process, the shared compilation cache of test_reliability."""
  return subprocesses.launch_env(compile_cache=True, XLA_FLAGS=XLA_TEST_FLAGS)


def run(config_file: str, workdir: str, processes: int, steps: int) -> list[tuple[int, str]]:
  """launch.py in `processes` processes (a local coordinator when > 1); (status, output) each."""
  common = [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={config_file}',
            f'--workdir={workdir}', f'--config.num_train_steps={steps}']
  if processes == 1:
    commands = [common]
  else:
    port = subprocesses.free_port()
    commands = [common + [f'--coordinator_address=127.0.0.1:{port}',
                          f'--num_processes={processes}', f'--process_id={i}']
                for i in range(processes)]
  procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  try:
    return [(p.wait(timeout=TIMEOUT_S), p.stdout.read()) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      p.stdout.close()


def train_losses(workdir: str) -> dict[int, float]:
  return {r['step']: r['loss'] for r in training.read_metrics(workdir, while_running=True)
          if r['kind'] == 'train'}


class ElasticResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='test_elastic_resume_')
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    # Batch 16, a loss logged every step, checkpoints at STOP (the stopped run's last step).
    cls.config = training.tiny_config(training.digits_dir(), num_train_steps=STEPS,
                                        final_eval_crops=1)
    cls.config_file = training.write_config_file(os.path.join(cls.root, 'cfg.py'), cls.config)
    cls.reference = os.path.join(cls.root, 'reference')
    results = run(cls.config_file, cls.reference, processes=1, steps=STEPS)
    if results[0][0] != 0:
      raise AssertionError(f'the reference run failed:\n{results[0][1][-3000:]}')

  def check_resume(self, first: int, then: int) -> None:
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    for processes, steps in ((first, STOP), (then, STEPS)):
      results = run(self.config_file, workdir, processes, steps)
      for i, (status, output) in enumerate(results):
        self.assertEqual(status, 0, f'{processes} processes to step {steps}, process {i}:\n'
                                    f'{output[-3000:]}')
        self.assertNotIn('Traceback', output)
    output = results[0][1]
    self.assertIn(f'Resumed from step {STOP}.', output)
    self.assertIn(f'The data continues at global batch {STOP}.', output)
    self.assertIn(f'was written by {first} processes and is resumed by {then}', output)
    folder = os.path.join(workdir, 'checkpoints')
    self.assertFalse(os.path.exists(os.path.join(folder, checkpointing.DAMAGED_DIR)),
                     'a healthy checkpoint was moved aside')
    want, got = train_losses(self.reference), train_losses(workdir)
    self.assertEqual(sorted(got), list(range(1, STEPS + 1)))
    self.assertEqual(sorted(want), sorted(got))
    for step in got:
      self.assertAlmostEqual(got[step], want[step], delta=1e-5 * abs(want[step]),
                             msg=f'step {step}: not the same examples as the uninterrupted run')
    ref_state, ref_meta = training.final_params(self.config, self.reference)
    state, meta = training.final_params(self.config, workdir)
    self.assertEqual((meta['step'], meta[checkpointing.DATA_POSITION]), (STEPS, STEPS))
    self.assertEqual(meta[checkpointing.PROCESS_COUNT], then)
    self.assertEqual(ref_meta[checkpointing.PROCESS_COUNT], 1)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

  def test_two_processes_then_one(self):
    self.check_resume(2, 1)

  def test_one_process_then_two(self):
    self.check_resume(1, 2)


if __name__ == '__main__':
  absltest.main()
