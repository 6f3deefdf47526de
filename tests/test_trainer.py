"""train_and_evaluate end to end, the model split, profiling, resume and preemption."""

import glob
import gzip
import json
import os
import re
import signal
import time

from absl.testing import absltest
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from alexnet_jax.learning import experiment
from alexnet_jax.data import input_pipeline
from alexnet_jax.training import trainer
from configs import imagenet
from tests.helpers.images import read_split
from tests.helpers.training import digits_dir
from tests.helpers.training import final_params
from tests.helpers.training import read_metrics
from tests.helpers.training import run_launch
from tests.helpers.training import tiny_config
from tests.helpers.training import train_on_devices
from tests.helpers.training import write_config_file


def numpy_evaluation(config: ml_collections.ConfigDict, params) -> dict[str, float]:
  """The val metrics of `params`, from the stored images: views cut and mean-subtracted here,
  softmax and the errors in numpy (section 4.1's ten views when final_eval_crops=10)."""
  images, labels = read_split(config.data.dir, 'val')
  images, labels = np.stack(images).astype(np.float32), np.asarray(labels)
  mean = input_pipeline.load_info(config.data).mean_image
  s, c = config.data.image_size, config.data.crop_size
  far, mid = s - c, (s - c) // 2
  corners_and_center = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  model = experiment.create_model(config, 10)
  forward = jax.jit(lambda x: model.apply({'params': params}, x, train=False))

  def probabilities(top, left, flip):
    view = images[:, top:top + c, left:left + c] - mean[top:top + c, left:left + c]
    if flip:
      view = view[:, :, ::-1]
    logits = np.concatenate([np.asarray(forward(view[i:i + 128]), np.float64)
                             for i in range(0, len(view), 128)])
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  def metrics(probs, prefix):
    p_true = probs[np.arange(len(labels)), labels]
    rank = (probs >= p_true[:, None]).sum(1) - 1  # ties count against the label
    return {f'{prefix}_loss': float(-np.log(p_true).mean()),
            f'{prefix}_top1_err': float(np.mean(rank >= 1)),
            f'{prefix}_top5_err': float(np.mean(rank >= 5))}

  result = metrics(probabilities(mid, mid, False), 'val')
  if config.final_eval_crops == 10:
    views = [(t, l, f) for f in (False, True) for t, l in corners_and_center]
    result.update(metrics(np.mean([probabilities(*v) for v in views], axis=0), 'val10'))
  return result


class TrainAndEvaluateTest(absltest.TestCase):

  def test_smoke_run_writes_metrics_and_checkpoints(self):
    workdir = self.create_tempdir().full_path
    config = tiny_config(digits_dir())
    result = trainer.train_and_evaluate(config, workdir)
    records = read_metrics(workdir)
    train_steps = [r['step'] for r in records if r['kind'] == 'train']
    self.assertEqual(train_steps, [1, 2, 3, 4, 5, 6])
    for r in records:
      if r['kind'] == 'train':
        self.assertContainsSubset({'loss', 'top1_err', 'top5_err', 'lr', 'epoch',
                                   'images_per_sec'}, r)
    final = [r for r in records if r['kind'] == 'eval'][-1]
    self.assertEqual(final['step'], 6)
    for key in ('val_loss', 'val_top1_err', 'val_top5_err', 'val10_top1_err', 'val10_top5_err'):
      self.assertIn(key, final)
    # The final evaluation, recomputed here from the step-6 checkpoint and the stored images.
    state, _ = final_params(config, workdir)
    want = numpy_evaluation(config, state.params)
    for key, value in want.items():
      self.assertAlmostEqual(final[key], value, places=4 if 'loss' in key else 6, msg=key)
    self.assertEqual(result['val_top1_err'], final['val_top1_err'])
    self.assertTrue(os.path.exists(os.path.join(workdir, 'config.json')))
    self.assertIn('6', os.listdir(os.path.join(workdir, 'checkpoints')))
    self.assertFalse(os.path.exists(os.path.join(workdir, 'profile')))  # profiling is off

  def test_model_split_matches_one_device(self):
    """The paper's split over two devices (data 1 x model 2) trains what one device does."""
    one, two = self.create_tempdir().full_path, self.create_tempdir().full_path
    settings = dict(num_train_steps=3, final_eval_crops=1, **{'mesh.data': 1})
    exp_one = train_on_devices(tiny_config(digits_dir(), **settings), one, 1)
    config = tiny_config(digits_dir(), **settings, **{'mesh.model': 2})
    exp_two = train_on_devices(config, two, 2)
    self.assertEqual(dict(exp_one.mesh.shape), {'data': 1, 'model': 1})
    self.assertEqual(dict(exp_two.mesh.shape), {'data': 1, 'model': 2})
    # Each device holds one tower: half of every conv's and fc's output units.
    fc6_shape = nn.unbox(exp_two.state_shapes.params)['fc6']['kernel'].shape
    fc6 = exp_two.state_shardings.params['fc6']['kernel']
    self.assertEqual(fc6.shard_shape(fc6_shape), (fc6_shape[0], fc6_shape[1] // 2))
    loss = lambda w: [r['loss'] for r in read_metrics(w) if r['kind'] == 'train']
    np.testing.assert_allclose(loss(one), loss(two), rtol=1e-5)
    # Float summation order differs between the meshes; a wrong split would differ by the
    # size of the updates themselves.
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_allclose(
            np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6,
            err_msg=jax.tree_util.keystr(path)),
        final_params(config, one)[0].params, final_params(config, two)[0].params)


class ProfileTest(absltest.TestCase):

  def test_trace_of_the_chosen_steps(self):
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(tiny_config(digits_dir(), num_train_steps=4, final_eval_crops=1,
                                         **{'log.profile_steps': (2, 4)}), workdir)
    runs = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*'))
    self.assertLen(runs, 1)  # one trace, started once
    # TensorBoard's profile plugin reads the XPlane file, Perfetto the trace events.
    xplane = glob.glob(os.path.join(runs[0], '*.xplane.pb'))
    self.assertLen(xplane, 1)
    self.assertGreater(os.path.getsize(xplane[0]), 0)
    perfetto = os.path.join(runs[0], 'perfetto_trace.json.gz')
    with gzip.open(perfetto, 'rt') as f:
      events = json.load(f)
    events = events['traceEvents'] if isinstance(events, dict) else events
    names = [e.get('name', '') for e in events]
    # Steps 2 and 3, and only they, ran inside the trace: two executions of the train step.
    executions = [n for n in names if re.fullmatch(r'\S*Execute \(jit_train_step\)', n)]
    self.assertLen(executions, 2, sorted(set(names)))

  def test_off_by_default(self):
    self.assertEqual(tuple(imagenet.get_config().log.profile_steps), ())


class ResumeTest(absltest.TestCase):

  def test_resume_in_a_fresh_process_equals_uninterrupted_run(self):
    data = digits_dir()
    full, split = self.create_tempdir().full_path, self.create_tempdir().full_path
    config = tiny_config(data, num_train_steps=8, final_eval_crops=1)
    trainer.train_and_evaluate(config, full)
    # Stop after 4 steps (its own end-of-run eval and checkpoint), then resume in a new process.
    trainer.train_and_evaluate(tiny_config(data, num_train_steps=4, final_eval_crops=1), split)
    proc = run_launch(write_config_file(os.path.join(split, 'resume.py'), config), split)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('Resumed from step 4', proc.stderr)

    steps = lambda w: [(r['step'], r['loss']) for r in read_metrics(w) if r['kind'] == 'train']
    self.assertEqual(steps(split), steps(full))  # bitwise: the same batches, the same numbers
    a, meta_a = final_params(config, full)
    b, meta_b = final_params(config, split)
    self.assertEqual(meta_a['step'], 8)
    self.assertEqual(meta_b['step'], 8)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  def test_sigterm_saves_and_resumes(self):
    data = digits_dir()
    workdir = self.create_tempdir().full_path
    config = tiny_config(data, num_train_steps=400, final_eval_crops=1,
                         **{'checkpoint.every_steps': 1000})
    config_file = write_config_file(os.path.join(workdir, 'cfg.py'), config)
    proc = run_launch(config_file, workdir, wait=False)
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and len(read_metrics(workdir)) >= 5:
        break
      time.sleep(0.2)
    self.assertIsNone(proc.poll(), 'the run ended before it could be preempted')
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    stopped = max(r['step'] for r in read_metrics(workdir))
    self.assertLess(stopped, 400)
    _, meta = final_params(config, workdir)
    self.assertEqual(meta['step'], stopped)  # a checkpoint at the step it stopped on
    # Resume and finish a few more steps.
    config.num_train_steps = stopped + 3
    proc = run_launch(write_config_file(config_file, config), workdir)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    train_steps = [r['step'] for r in read_metrics(workdir) if r['kind'] == 'train']
    self.assertEqual(train_steps, list(range(1, stopped + 4)))


class BadInputTest(absltest.TestCase):
  """Each bad input: exit status 2, one `error:` line naming the field or path, no traceback."""

  def check(self, config, expected: str, workdir=None, args=(), prefix='error:', status=2):
    workdir = workdir or self.create_tempdir().full_path
    config_file = write_config_file(os.path.join(self.create_tempdir().full_path, 'c.py'), config)
    proc = run_launch(config_file, workdir, *args)
    self.assertEqual(proc.returncode, status, proc.stderr[-2000:])
    self.assertNotIn('Traceback', proc.stderr)
    errors = [l for l in proc.stderr.splitlines() if l.startswith(prefix)]
    self.assertLen(errors, 1, proc.stderr[-2000:])
    self.assertIn(expected, errors[0])
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))

  def test_bad_inputs(self):
    data = digits_dir()
    self.check(tiny_config(data, **{'optim.learning_rate': -0.1}), 'config.optim.learning_rate')
    self.check(tiny_config(data, batch_size=15),
               'config.batch_size=15 is not divisible')
    self.check(tiny_config(data, **{'data.crop_size': 80}),
               'config.data.image_size must be an integer >= data.crop_size (80)')
    self.check(tiny_config(data, **{'data.crop_size': 80, 'data.image_size': 96}),
               'prepared at image_size 72 but config.data.image_size is 96')
    self.check(tiny_config('/nonexistent/dataset'), '/nonexistent/dataset')
    # A wrong type on the command line is refused by absl's flag parser itself.
    self.check(tiny_config(data), 'flag --config.num_epochs=ten', args=['--config.num_epochs=ten'],
               prefix='FATAL Flags parsing error', status=1)
    self.check(tiny_config(data, **{'model.num_classes': 1000}), 'config.model.num_classes')
    blocker = os.path.join(self.create_tempdir().full_path, 'file')
    open(blocker, 'w').close()
    self.check(tiny_config(data), 'cannot be written', workdir=os.path.join(blocker, 'run'))


if __name__ == '__main__':
  absltest.main()
