"""evaluate: the training loop's own numbers, any mesh, the cache, `best`, and ensembles.

Two tiny runs on the real digits set are trained once for the whole file: A
data-parallel over the eight test devices with the paper's 10-crop final test,
B under the paper's model split (mesh.model=2) with another seed and the center
crop. The ensemble is checked against an average of `predict.classify` outputs
taken image by image on one device, in numpy.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from alexnet_jax import predict
from alexnet_jax.data import decoding
from alexnet_jax.data import input_pipeline
from alexnet_jax.evaluation import checkpoint_eval
from alexnet_jax.evaluation import ensemble as ensemble_eval
from alexnet_jax.evaluation import finished_run
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import lockfile
from alexnet_jax.training import trainer
from tests.helpers import REPO
from tests.helpers import subprocesses
from tests.helpers import training

STEPS = 10


def run_config(data: str, **overrides):
  settings = {'num_train_steps': STEPS, 'optim.learning_rate': 0.02}
  settings.update(overrides)
  return training.tiny_config(data, **settings)


def last_eval(workdir: str) -> dict:
  return [r for r in training.read_metrics(workdir) if r['kind'] == 'eval'][-1]


def digests(folder: str) -> dict[str, str]:
  out = {}
  for dirpath, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(dirpath, name), 'rb') as f:
        out[os.path.join(dirpath, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


def numpy_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Loss and top-k errors of predictions, written out: rank = other classes scoring at least
  as high (ties count against the label, docs/design.md, "Top-k errors")."""
  p_label = probs[np.arange(len(labels)), labels]
  rank = (probs >= p_label[:, None]).sum(axis=1) - 1
  return {'loss': float(np.mean(-np.log(p_label))), 'top1_err': float(np.mean(rank >= 1)),
          'top5_err': float(np.mean(rank >= 5))}


def near_ties(probs: np.ndarray, labels: np.ndarray, tolerance: float = 1e-5) -> int:
  """Examples whose label's probability is within `tolerance` of another class's.

  Float error of the order of 1e-7 may rank such a label either way; the
  tiny test networks are close to uniform, so a few such examples occur.
  """
  gap = np.abs(probs - probs[np.arange(len(labels)), labels][:, None])
  gap[np.arange(len(labels)), labels] = np.inf
  return int((gap.min(axis=1) < tolerance).sum())


class EvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = training.digits_dir()
    cls.root = tempfile.mkdtemp(prefix='test_evaluate_')
    cls.a = os.path.join(cls.root, 'a')
    cls.b = os.path.join(cls.root, 'b')
    trainer.train_and_evaluate(run_config(cls.data, final_eval_crops=10), cls.a)
    trainer.train_and_evaluate(run_config(cls.data, final_eval_crops=1, seed=1,
                                        **{'mesh.model': 2}), cls.b)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def copy(self, workdir: str) -> str:
    target = os.path.join(self.create_tempdir().full_path, os.path.basename(workdir))
    shutil.copytree(workdir, target)
    return target

  def test_equals_the_training_loops_own_final_evaluation(self):
    # Bitwise: the same eval step, mesh and batches on the same checkpoint.
    for workdir, crops, prefix in ((self.a, 1, 'val'), (self.a, 10, 'val10'),
                                   (self.b, 1, 'val')):
      with self.subTest(workdir=os.path.basename(workdir), crops=crops):
        result = checkpoint_eval.evaluate_run(workdir, crops=crops, force=True)
        logged = last_eval(workdir)
        self.assertEqual(result.steps, (STEPS,))
        self.assertEqual(result.count, 364)  # the digits' validation split
        self.assertEqual((result.loss, result.top1_err, result.top5_err),
                         (logged[f'{prefix}_loss'], logged[f'{prefix}_top1_err'],
                          logged[f'{prefix}_top5_err']))
    self.assertEqual(checkpoint_eval.evaluate_run(self.b, force=True).mesh, {'data': 4, 'model': 2})

  def test_two_devices_equal_one(self):
    # B's own mesh (model=2) fits two devices; one device falls back to data-parallel.
    two = checkpoint_eval.evaluate_run(self.b, crops=10, devices=jax.devices()[:2], force=True)
    one = checkpoint_eval.evaluate_run(self.b, crops=10, devices=jax.devices()[:1], force=True)
    self.assertEqual(two.mesh, {'data': 1, 'model': 2})
    self.assertEqual(one.mesh, {'data': 1, 'model': 1})
    self.assertAlmostEqual(two.loss, one.loss, delta=1e-5 * one.loss)
    self.assertEqual((two.top1_err, two.top5_err, two.count),
                     (one.top1_err, one.top5_err, one.count))

  def test_answered_from_the_file_unless_forced(self):
    workdir = self.copy(self.a)
    first = checkpoint_eval.evaluate_run(workdir, crops=1)
    path = os.path.join(workdir, 'eval', f'{STEPS}-1crop.json')
    self.assertIsNone(first.cached)
    with open(path) as f:
      stored = json.load(f)
    self.assertEqual((stored['loss'], stored['top1_err'], stored['top5_err'], stored['count']),
                     (first.loss, first.top1_err, first.top5_err, 364))
    self.assertEqual((stored['steps'], stored['crops'], stored['split']), ([STEPS], 1, 'val'))
    # A planted value proves the second answer comes from the file ...
    stored['loss'] = 123.0
    with open(path, 'w') as f:
      json.dump(stored, f)
    again = checkpoint_eval.evaluate_run(workdir, crops=1)
    self.assertEqual((again.loss, again.cached), (123.0, path))
    # ... and --force computes (and stores) the real one again.
    forced = checkpoint_eval.evaluate_run(workdir, crops=1, force=True)
    self.assertEqual(forced.loss, first.loss)
    with open(path) as f:
      self.assertEqual(json.load(f)['loss'], first.loss)
    # Another test of the same step is another file.
    self.assertFalse(os.path.exists(os.path.join(workdir, 'eval', f'{STEPS}-10crop.json')))

  def test_ensemble_of_one_is_the_run(self):
    ensemble = ensemble_eval.evaluate_ensemble([self.a], crops=10, force=True)
    alone = checkpoint_eval.evaluate_run(self.a, crops=10, force=True)
    (member,) = ensemble.members
    self.assertEqual((member.loss, member.top1_err, member.top5_err),
                     (alone.loss, alone.top1_err, alone.top5_err))
    result = ensemble.result
    self.assertEqual((result.top1_err, result.top5_err, result.count),
                     (alone.top1_err, alone.top5_err, alone.count))
    self.assertAlmostEqual(result.loss, alone.loss, delta=1e-6 * alone.loss)

  @classmethod
  def ensemble_of_two(cls) -> ensemble_eval.Ensemble:
    if not hasattr(cls, '_ensemble'):
      cls._ensemble = ensemble_eval.evaluate_ensemble([cls.a, cls.b], crops=10)
    return cls._ensemble

  def test_ensemble_of_two_averages_the_softmax_outputs(self):
    ensemble = self.ensemble_of_two()
    # Independently: every validation image through predict on one device, in numpy.
    run_a, run_b = finished_run.load_run(self.a), finished_run.load_run(self.b)
    source = input_pipeline.open_split(run_a.config.data, 'val')
    images, labels = [], []
    for i in range(len(source.records)):
      data, label = source.parse(source.records[i])
      images.append(decoding.decode(data))
      labels.append(label)
    labels = np.array(labels)
    average = (predict.classify(run_a, images, crops=10).astype(np.float64)
               + predict.classify(run_b, images, crops=10).astype(np.float64)) / 2
    np.testing.assert_array_equal(ensemble.labels, labels)
    np.testing.assert_allclose(ensemble.probabilities, average, rtol=1e-5, atol=1e-7)
    want = numpy_metrics(average, labels)
    result = ensemble.result
    ties = near_ties(average, labels)
    self.assertLess(ties, 10)
    for key in ('top1_err', 'top5_err'):  # counts of wrong examples; near ties may go either way
      self.assertLessEqual(abs(getattr(result, key) - want[key]) * len(labels), ties + 1e-9, key)
    self.assertAlmostEqual(result.loss, want['loss'], delta=1e-5 * want['loss'])
    self.assertEqual(result.count, len(labels))
    # The members are reported alone too, and the average is not one of them.
    self.assertEqual([m.workdirs for m in ensemble.members], [(self.a,), (self.b,)])
    self.assertNotAlmostEqual(result.loss, ensemble.members[0].loss, places=4)
    self.assertNotAlmostEqual(result.loss, ensemble.members[1].loss, places=4)

  def test_command_line_reads_the_runs_and_writes_only_eval(self):
    a, b = self.copy(self.a), self.copy(self.b)
    # A still running in this test process: evaluate only reads, so it needs no lock.
    lock, holder = os.path.join(a, 'run.lock'), lockfile.Holder.of_this_process().to_text()
    with open(lock, 'w') as f:
      f.write(holder)
    before = {**digests(os.path.join(a, 'checkpoints')), **digests(os.path.join(b, 'checkpoints'))}
    output = os.path.join(self.create_tempdir().full_path, 'ensemble.json')
    proc = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={a}', f'--workdir={b}',
         '--crops=10', f'--output={output}'],
        cwd=REPO, env=subprocesses.launch_env(compile_cache=True), capture_output=True, text=True, timeout=600)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    lines = proc.stdout.strip().splitlines()
    self.assertLen(lines, 3, proc.stdout)
    self.assertTrue(lines[0].startswith(f'{a} step {STEPS}, val 10-crop test, 364 images: '),
                    lines[0])
    self.assertTrue(lines[2].startswith('ensemble of 2, val 10-crop test, 364 images: '))
    after = {**digests(os.path.join(a, 'checkpoints')), **digests(os.path.join(b, 'checkpoints'))}
    self.assertEqual(after, before)
    with open(lock) as f:
      self.assertEqual(f.read(), holder)
    self.assertEqual(sorted(os.listdir(os.path.join(a, 'eval'))), [f'{STEPS}-10crop.json'])
    with open(output) as f:
      written = json.load(f)
    want = self.ensemble_of_two().result
    self.assertEqual(written['workdirs'], [a, b])
    self.assertEqual(written['steps'], [STEPS, STEPS])
    for key in ('loss', 'top1_err', 'top5_err'):
      self.assertAlmostEqual(written[key], getattr(want, key), places=6)
    self.assertIn(f'top-1 error {100 * want.top1_err:.2f}%', lines[2])


class ChooseStepTest(absltest.TestCase):
  """`best` is the kept checkpoint with the lowest validation error orbax stored."""

  def save_checkpoints(self, errors: dict[int, float | None]) -> tuple[str, object]:
    config = training.tiny_config('unused')
    workdir = self.create_tempdir().full_path
    state = {'w': np.arange(4, dtype=np.float32)}
    with checkpointing.Checkpointer.from_config(workdir, config.checkpoint) as ckpt:
      for step, error in errors.items():
        ckpt.save(step, state, meta={'step': step}, val_error=error, force=True)
    return workdir, config

  def test_best_newest_and_a_number(self):
    # keep=3: the newest three (6, 8, 10) and the best (4) are kept; 2 was deleted.
    workdir, config = self.save_checkpoints({2: 0.5, 4: 0.05, 6: None, 8: 0.4, 10: 0.3})
    before = digests(workdir)
    self.assertEqual(finished_run.choose_step(workdir, config, 'best'), 4)
    self.assertEqual(finished_run.choose_step(workdir, config, 'newest'), 10)
    self.assertEqual(finished_run.choose_step(workdir, config, 6), 6)
    with self.assertRaisesRegex(ValueError, r'no checkpoint of step 2 in .*; it has steps '
                                r'\[4, 6, 8, 10\]'):
      finished_run.choose_step(workdir, config, 2)
    self.assertEqual(digests(workdir), before)

  def test_best_needs_a_stored_error(self):
    workdir, config = self.save_checkpoints({2: None, 4: None})
    with self.assertRaisesRegex(ValueError, r'no checkpoint in .* has a validation error stored '
                                r'\(steps \[2, 4\]\)'):
      finished_run.choose_step(workdir, config, 'best')

  def test_parse_step(self):
    self.assertEqual([finished_run.parse_step(s) for s in ('newest', 'best', '12', None)],
                     ['newest', 'best', 12, 'newest'])
    with self.assertRaisesRegex(ValueError, "--step must be a checkpoint step, 'newest' or "
                                "'best', got 'last'"):
      finished_run.parse_step('last')


if __name__ == '__main__':
  absltest.main()
