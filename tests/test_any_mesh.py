"""Any device count and any class count.

- The shipped configs run on 1 and on 3 devices with mesh.model 'auto'.
- On one device the two-tower network is the same network (its grouped convs run
  on that device): one step there equals the step split over a model pair.
- A class count the model axis does not divide (3, 37) keeps fc8 whole on every
  device; the sharded step still equals the one-device step, and training,
  evaluation, checkpoints and predict work end to end.
"""

import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image

from alexnet_jax.storage import checkpointing
from alexnet_jax.config import resolution
from alexnet_jax.learning import experiment
from alexnet_jax.data import input_pipeline
from alexnet_jax import predict
from alexnet_jax.evaluation import finished_run
from alexnet_jax import prepare
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement
from alexnet_jax.training import trainer
from tests.helpers.checks import assert_trees_close
from tests.helpers.subprocesses import launch
from tests.helpers.subprocesses import launch_env
from tests.helpers.training import digits_dir
from tests.helpers.training import read_metrics
from tests.helpers.training import tiny_config

BATCH = 8


class ShippedConfigsTest(parameterized.TestCase):
  """launch.py with configs/imagenet.py and configs/digits.py on 1 and 3 CPU devices."""

  @parameterized.parameters(('imagenet', 1), ('imagenet', 3), ('digits', 1), ('digits', 3))
  def test_runs_with_auto_mesh(self, name, devices):
    workdir = self.create_tempdir().full_path
    # Tiny overrides only: the mesh settings are the config's own (data -1, model 'auto').
    # The global batch must split over the data axis, hence 12 on 3 devices.
    args = [f'--config=configs/{name}.py', f'--workdir={workdir}',
            f'--config.data.dir={digits_dir()}', '--config.data.image_size=72',
            '--config.data.crop_size=64', '--config.model.num_classes=10',
            '--config.model.width=0.125', '--config.batch_size=12',
            '--config.num_train_steps=2', '--config.data.num_threads=1',
            '--config.log.every_steps=1', '--config.log.tensorboard=False',
            '--config.log.progress=False']
    proc = launch(args, launch_env(devices))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    chose = ("config.mesh.model 'auto' chose 1: 1 device holds both towers" if devices == 1
             else "config.mesh.model 'auto' chose 1: 3 devices, an odd count")
    self.assertIn(chose, proc.stderr)
    records = read_metrics(workdir)
    self.assertEqual([r['step'] for r in records if r['kind'] == 'train'], [1, 2])
    final = [r for r in records if r['kind'] == 'eval'][-1]
    self.assertBetween(final['val_top1_err'], 0.0, 1.0)
    self.assertTrue(np.isfinite(final['val_loss']))


# ----------------------------------------------------------------------------- one step


def fake_info(num_classes: int) -> input_pipeline.DatasetInfo:
  rng = np.random.default_rng(num_classes)
  names = tuple(f'class{i}' for i in range(num_classes))
  return input_pipeline.DatasetInfo(
      num_classes=num_classes, class_names=names, class_descriptions=names,
      split_sizes={'train': 64, 'val': 16}, image_size=72,
      mean_image=rng.uniform(0, 255, (72, 72, 3)).astype(np.float32),
      eigvals=np.array([0.2, 0.02, 0.005], np.float32), eigvecs=np.eye(3, dtype=np.float32),
      stats_source='test')


def fake_batches(num_classes: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A train batch of uint8 crops and an eval batch of one view each, labels in range."""
  rng = np.random.default_rng(100 + num_classes)
  labels = rng.integers(0, num_classes, BATCH).astype(np.int32)
  train_batch = {
      'image': rng.integers(0, 256, (BATCH, 64, 64, 3), dtype=np.uint8),
      'crop': rng.integers(0, 9, (BATCH, 2)).astype(np.int32),
      'flip': rng.integers(0, 2, BATCH).astype(bool),
      'lighting': rng.normal(0, 5, (BATCH, 3)).astype(np.float32),
      'label': labels}
  eval_batch = {
      'image': rng.integers(0, 256, (BATCH, 1, 64, 64, 3), dtype=np.uint8),
      'crop': np.full((BATCH, 1, 2), 4, np.int32), 'flip': np.zeros((BATCH, 1), bool),
      'lighting': np.zeros((BATCH, 1, 3), np.float32), 'label': labels,
      'mask': np.ones(BATCH, bool)}
  return train_batch, eval_batch


def one_step(num_classes: int, devices: int, mesh_model) -> dict:
  """One train step and one eval step of the two-tower tiny net through experiment.setup."""
  config = resolution.load(tiny_config('', **{
      'model.num_classes': num_classes, 'mesh.model': mesh_model, 'batch_size': BATCH}))
  mesh = experiment.create_mesh(config, jax.devices()[:devices])
  exp = experiment.setup(config, fake_info(num_classes), mesh=mesh)
  train_batch, eval_batch = fake_batches(num_classes)
  with meshes.use_mesh(mesh, exp.rules):
    state = exp.init_state(jax.random.key(0))
    init_params = jax.device_get(state.params)
    rng = jax.device_put(jax.random.key(1), placement.replicated(mesh))
    fc8 = exp.state_shardings.params['fc8']['kernel']
    conv2 = exp.state_shardings.params['conv2']['kernel']
    new_state, metrics = exp.train_step()(state, placement.make_global_batch(train_batch, mesh),
                                          rng)
    evaluated = exp.eval_step()(new_state, placement.make_global_batch(eval_batch, mesh))
  return {'mesh': dict(mesh.shape), 'fc8_whole': fc8.is_fully_replicated,
          'fc8_shard': fc8.shard_shape(new_state.params['fc8']['kernel'].shape),
          'conv2_shard': conv2.shard_shape(new_state.params['conv2']['kernel'].shape),
          'init': init_params, 'state': jax.device_get(new_state),
          'loss': float(metrics['loss']), 'eval': jax.device_get(evaluated)}


class AnyClassCountStepTest(parameterized.TestCase):
  """The step on a model pair equals the step on one device, for any class count."""

  @parameterized.named_parameters(('3_classes', 3), ('37_classes', 37))
  def test_split_step_equals_one_device(self, classes):
    one = one_step(classes, 1, 'auto')  # 'auto' on one device: model=1, both towers there
    split = one_step(classes, 2, 2)  # mesh.model=2: a pair, which the classes do not divide
    self.assertEqual(one['mesh'], {'data': 1, 'model': 1})
    self.assertEqual(split['mesh'], {'data': 1, 'model': 2})
    width = one['state'].params['fc8']['kernel'].shape[0]
    self.assertEqual(one['state'].params['fc8']['kernel'].shape, (width, classes))
    self.assertTrue(split['fc8_whole'])
    self.assertEqual(split['fc8_shard'], (width, classes))
    towers = one['state'].params['conv2']['kernel'].shape[-1]
    self.assertEqual(split['conv2_shard'][-1], towers // 2)  # the rest is split as ever
    # Same initial weights, same step: loss, new weights, momentum and eval sums agree
    # up to float order.
    assert_trees_close(split['init'], one['init'], 'init')
    np.testing.assert_allclose(split['loss'], one['loss'], rtol=1e-6)
    assert_trees_close(split['state'].params, one['state'].params, 'params')
    assert_trees_close(split['state'].opt_state, one['state'].opt_state, 'opt_state')
    for key in ('loss_sum', 'top1_wrong', 'top5_wrong', 'count'):
      np.testing.assert_allclose(split['eval'][key], one['eval'][key], rtol=1e-5, err_msg=key)
    # The step moved fc8: equal updates, not two untouched copies.
    self.assertGreater(np.abs(split['state'].params['fc8']['kernel']
                              - split['init']['fc8']['kernel']).max(), 1e-5)


# ----------------------------------------------------------------------------- end to end


def three_class_dataset(root: str) -> str:
  """A prepared 3-class dataset with train (8 per class) and val (2 per class) splits."""
  source = os.path.join(root, 'source')
  rng = np.random.default_rng(3)
  for split, count in (('train', 8), ('val', 2)):
    for c in 'abc':
      folder = os.path.join(source, split, c)
      os.makedirs(folder)
      for i in range(count):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'{i}.JPEG'), quality=90)
  output = os.path.join(root, 'prepared')
  prepare.prepare(source, output, image_size=72, progress=False)
  return output


class ThreeClassRunTest(absltest.TestCase):
  """3 classes on model pairs (8 devices: data=4 x model=2): train, evaluate, resume, predict."""

  def test_train_resume_predict(self):
    root = self.create_tempdir().full_path
    data = three_class_dataset(root)
    workdir = os.path.join(root, 'run')
    config = tiny_config(data, num_train_steps=2, final_eval_crops=10, batch_size=BATCH,
                         **{'model.num_classes': 3, 'mesh.model': 2})
    trainer.train_and_evaluate(config, workdir)
    config.num_train_steps = 3
    result = trainer.train_and_evaluate(config, workdir)  # resumes from step 2's checkpoint
    records = read_metrics(workdir)
    self.assertEqual([r['step'] for r in records if r['kind'] == 'train'], [1, 2, 3])
    self.assertEqual(result['step'], 3)
    self.assertBetween(result['val10_top1_err'], 0.0, 1.0)

    # The checkpoint reads back into the sharded layout (fc8 whole on every device) and
    # onto one device (what predict does), with the same values.
    resolved = resolution.load(config)
    exp = experiment.setup(resolved, input_pipeline.load_info(resolved.data))
    self.assertEqual((exp.mesh.shape['data'], exp.mesh.shape['model']), (4, 2))
    self.assertTrue(exp.state_shardings.params['fc8']['kernel'].is_fully_replicated)
    ckpt = checkpointing.Checkpointer.from_config(workdir, resolved.checkpoint, read_only=True)
    try:
      sharded, _ = ckpt.restore(exp.abstract_state)
    finally:
      ckpt.close()
    run = finished_run.load_run(workdir)
    self.assertEqual(run.step, 3)
    self.assertEqual(run.params['fc8']['kernel'].shape, (512, 3))
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(sharded.params)),
                            jax.tree.leaves(jax.device_get(run.params))):
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))

    image = os.path.join(tempfile.mkdtemp(dir=root), 'x.png')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
                    ).save(image)
    [(probs, top)] = predict.predict(workdir, [image], crops=10)
    self.assertEqual(probs.shape, (3,))
    self.assertAlmostEqual(float(probs.sum()), 1.0, places=5)
    self.assertEqual(sorted(score.name for score in top), ['a', 'b', 'c'])


if __name__ == '__main__':
  absltest.main()
