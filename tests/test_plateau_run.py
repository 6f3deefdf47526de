"""The paper's learning-rate schedule inside real `launch.py` runs, and across a kill -9.

Section 5 of the paper: "divide the learning rate by 10 when the validation error rate
stopped improving with the current learning rate", three times. These runs use
configs/imagenet.py's plateau fields as shipped (patience 2, factor 0.1, at most 3
drops) on a dataset the test makes: 20 noise images in 10 classes, one step per epoch
at batch 16, an evaluation after every epoch. The learning rate is so small that
nothing is learned, so the validation error stalls from the first evaluation on and
the drops fall at known steps.
"""

import os
import shutil
import signal
import tempfile
import time

from absl.testing import absltest
import numpy as np
from PIL import Image

from alexnet_jax import prepare
from tests.helpers import faults
from tests.helpers import training

EPOCHS = 10  # One step each: drops after evaluations 3, 5 and 7; the cap shows at 9.
BASE_LR = 1e-7  # Small enough that no prediction changes: the error stalls.
PAPER_FACTOR = 0.1  # Section 5: "divide the learning rate by 10".
PAPER_DROPS = 3  # Section 5: "reduced three times prior to termination".
_DATA = {}


def noise_dataset() -> str:
  """A prepared ImageFolder of 10 classes x 2 train + 1 val noise images, made once."""
  if 'dir' not in _DATA:
    root = tempfile.mkdtemp(prefix='test_plateau_run_')
    _DATA['root'] = root
    rng = np.random.default_rng(0)
    for split, count in (('train', 2), ('val', 1)):
      for c in range(10):
        folder = os.path.join(root, 'source', split, f'class{c}')
        os.makedirs(folder)
        for j in range(count):
          image = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
          Image.fromarray(image).save(os.path.join(folder, f'{j}.png'))
    _DATA['dir'] = os.path.join(root, 'prepared')
    prepare.prepare(os.path.join(root, 'source'), _DATA['dir'], image_size=72, progress=False)
  return _DATA['dir']


def tearDownModule():
  if 'root' in _DATA:
    shutil.rmtree(_DATA['root'], ignore_errors=True)


def plateau_config():
  return training.tiny_config(
      noise_dataset(), num_train_steps=-1, num_epochs=EPOCHS, final_eval_crops=1,
      eval_every_epochs=1, **{'optim.schedule': 'plateau', 'optim.learning_rate': BASE_LR,
                              'checkpoint.every_steps': 1000})


def expected_lr(step: int, patience: int = 2) -> float:
  """The rate of `step` when every evaluation after the first fails to improve.

  Evaluation e follows step e. The first sets the best error; each later one is a
  miss, and every `patience` misses divide the rate by 10, at most three times.
  """
  misses = step - 2  # evaluations 2 .. step - 1 came before this step
  drops = min(max(misses, 0) // patience, PAPER_DROPS)
  return BASE_LR * PAPER_FACTOR ** drops


class PlateauRunTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = plateau_config()
    cls.root = tempfile.mkdtemp(dir=_DATA['root'])
    cls.config_file = training.write_config_file(os.path.join(cls.root, 'cfg.py'), cls.config)
    cls.reference = os.path.join(cls.root, 'reference')
    proc = faults.launch(cls.config_file, cls.reference)
    if proc.returncode != 0:
      raise AssertionError(f'the reference run failed:\n{proc.stderr[-3000:]}')
    cls.trains, cls.evals = faults.records(cls.reference)

  def test_the_error_stalls(self):
    """The premise of the schedule test: every evaluation has the first one's error."""
    self.assertEqual([e['step'] for e in self.evals], list(range(1, EPOCHS + 1)))
    errors = {e['val_top1_err'] for e in self.evals}
    self.assertLen(errors, 1, 'the validation error moved: the drops would not be where '
                              'expected_lr puts them')

  def test_lr_divided_by_ten_after_the_patience_at_most_three_times(self):
    lrs = [t[4] for t in self.trains]
    self.assertEqual([t[0] for t in self.trains], list(range(1, EPOCHS + 1)))
    for step, lr in enumerate(lrs, start=1):
      self.assertAlmostEqual(lr / expected_lr(step), 1.0, delta=1e-6, msg=f'lr of step {step}')
    distinct = sorted(set(lrs), reverse=True)
    self.assertLen(distinct, PAPER_DROPS + 1, f'section 5: three drops, got rates {distinct}')
    for high, low in zip(distinct, distinct[1:]):
      self.assertAlmostEqual(high / low, 1 / PAPER_FACTOR, delta=1e-5, msg='section 5: /10')
    # Two misses more after the third drop: a fourth would have come at step 10.
    self.assertEqual(lrs[-1], lrs[-3])

  def test_kill_9_and_resume_across_a_drop_equals_the_uninterrupted_run(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    log = os.path.join(self.create_tempdir().full_path, 'killed.log')
    checkpoints = os.path.join(workdir, 'checkpoints')
    with open(log, 'w') as log_file:
      proc = faults.start_launch(self.config_file, workdir, log_file)
      try:
        # Step 4 runs at the first dropped rate; its finished checkpoint holds the
        # schedule's state after that drop.
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
          if os.path.isdir(os.path.join(checkpoints, '4')):
            break
          time.sleep(0.02)
        self.assertIsNone(proc.poll(), 'the run ended before it could be killed')
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
      finally:
        if proc.poll() is None:
          proc.kill()
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    steps = [t[0] for t in faults.records(workdir)[0]]
    self.assertLess(max(steps), EPOCHS, 'the kill came after the last step')
    resumed = faults.launch(self.config_file, workdir)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    restored = int(resumed.stderr.split('Resumed from step ')[1].split('.')[0])
    self.assertGreaterEqual(restored, 4, 'the resume must start after the first drop')
    trains, evals = faults.records(workdir)
    self.assertEqual(trains, self.trains)  # bitwise, lr included
    self.assertEqual(evals, self.evals)
    for got, want in zip(faults.params_of(self.config, workdir),
                         faults.params_of(self.config, self.reference)):
      np.testing.assert_array_equal(got, want)


if __name__ == '__main__':
  absltest.main()
