"""configs/paper: each ablation is one documented change, builds the network its claim
describes (parameter counts written out below), and trains and evaluates end to end."""

import importlib
import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.model import alexnet
from alexnet_jax.training import trainer
from configs import digits
from configs import imagenet
from configs.paper import ABLATIONS
from configs.paper import digits as paper_digits
from tests.helpers import REPO
from tests.helpers import training

# The paper's two-tower net at a 224 crop (docs/design.md, "The network"):
#   conv1 11*11*3*96 + 96 = 34,944       conv2 5*5*48*256 + 256 = 307,456 (grouped)
#   conv3 3*3*256*384 + 384 = 885,120    conv4 3*3*192*384 + 384 = 663,936 (grouped)
#   conv5 3*3*192*256 + 256 = 442,624    fc6 6*6*256*4096 + 4096 = 37,752,832 (grouped)
#   fc7 4096*4096 + 4096 = 16,781,312    fc8 4096*1000 + 1000 = 4,097,000
TWO_TOWERS = (11 * 11 * 3 * 96 + 96 + 5 * 5 * 48 * 256 + 256 + 3 * 3 * 256 * 384 + 384
              + 3 * 3 * 192 * 384 + 384 + 3 * 3 * 192 * 256 + 256 + 6 * 6 * 256 * 4096 + 4096
              + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
# The one-GPU comparison net (section 3.2 and its footnote): one tower, conv1-conv4 halved,
# conv5 and the fully connected layers at full width:
#   conv1 11*11*3*48 + 48 = 17,472       conv2 5*5*48*128 + 128 = 153,728
#   conv3 3*3*128*192 + 192 = 221,376    conv4 3*3*192*192 + 192 = 331,968
#   conv5 3*3*192*256 + 256 = 442,624    fc6, fc7, fc8 as above
ONE_TOWER = (11 * 11 * 3 * 48 + 48 + 5 * 5 * 48 * 128 + 128 + 3 * 3 * 128 * 192 + 192
             + 3 * 3 * 192 * 192 + 192 + 3 * 3 * 192 * 256 + 256 + 6 * 6 * 256 * 4096 + 4096
             + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)

# ablation -> (the fields it changes from configs/imagenet.py, with their new values;
#              the parameter count of the network it builds at a 224 crop)
EXPECTED = {
    'one_tower': ({'model.towers': 1, 'model.conv_widths': (48, 128, 192, 192, 256),
                   'mesh.model': 1}, ONE_TOWER),
    'no_lrn': ({'model.use_lrn': False}, TWO_TOWERS),
    # s = z = 2 keeps the maps 55 -> 27 -> 13 -> 6 (as s = 2, z = 3), so the weights too.
    'non_overlapping_pool': ({'model.pool_size': 2}, TWO_TOWERS),  # stride stays 2
    'no_augmentation': ({'data.random_crop': False, 'data.flip': False}, TWO_TOWERS),
    'no_lighting': ({'data.lighting_std': 0.0}, TWO_TOWERS),
    'no_dropout': ({'model.dropout_rate': 0.0}, TWO_TOWERS),
}


def flat(config) -> dict:
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update({f'{key}.{k}': v for k, v in flat(value).items()})
    else:
      out[key] = value
  return out


def changes(base, config) -> dict:
  a, b = flat(base), flat(config)
  return {k: b[k] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def param_count(config) -> int:
  model = alexnet.from_config(config.model)
  x = jax.ShapeDtypeStruct((1, config.data.crop_size, config.data.crop_size, 3), jnp.float32)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))['params']
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


class PaperConfigTest(parameterized.TestCase):

  def test_the_list_is_the_folder(self):
    folder = os.path.join(REPO, 'alexnet_jax', 'configs', 'paper')
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith('.py')} - {'__init__', 'digits'}
    self.assertEqual(modules, set(ABLATIONS))
    self.assertEqual(set(EXPECTED), set(ABLATIONS))
    self.assertEqual(TWO_TOWERS, 60_965_224)
    self.assertEqual(ONE_TOWER, 59_798_312)

  @parameterized.named_parameters((name, name) for name in ABLATIONS)
  def test_one_change_and_its_network(self, name):
    module = importlib.import_module(f'alexnet_jax.configs.paper.{name}')
    config = module.get_config()
    fields, count = EXPECTED[name]
    self.assertEqual(changes(imagenet.get_config(), config), fields)
    self.assertIn('Section ', module.__doc__.splitlines()[0])
    config.data.dir = '/data/imagenet_prepared'
    config = resolution.load(config)  # validates, as launch.py does
    self.assertEqual(param_count(config), count)
    # The digits version makes the same change to configs/digits.py (where a field
    # already has the value, e.g. digits never flips, nothing changes).
    base = flat(digits.get_config())
    self.assertEqual(changes(digits.get_config(), paper_digits.get_config(name)),
                     {k: v for k, v in fields.items() if base[k] != v})
    self.assertNotEmpty({k: v for k, v in fields.items() if base[k] != v})

  @parameterized.parameters(
      ('model.pool_stride', 0, 'config.model.pool_stride must be a positive integer, got 0'),
      ('model.pool_size', 2.5, 'config.model.pool_size must be a positive integer, got 2.5'),
      ('model.conv_widths', (48, 128, 192, 192),
       r'config.model.conv_widths must be None or five positive integers \(conv1-conv5\), got '
       r'\(48, 128, 192, 192\)'),
      ('data.random_crop', 'no', "config.data.random_crop must be True or False, got 'no'"))
  def test_validation_of_the_new_fields(self, field, value, message):
    config = imagenet.get_config()
    config.data.dir = '/data/imagenet_prepared'
    group, name = field.split('.')
    with config.unlocked(), config[group].ignore_type():
      config[group][name] = value
    with self.assertRaisesRegex(ValueError, message):
      resolution.load(config)

  def test_digits_baseline_and_unknown_names(self):
    self.assertEqual(changes(digits.get_config(), paper_digits.get_config()), {})
    self.assertEqual(changes(digits.get_config(), paper_digits.get_config('baseline')), {})
    with self.assertRaisesRegex(ValueError, "unknown ablation 'no_relu'"):
      paper_digits.get_config('no_relu')


class PaperConfigTrainsTest(parameterized.TestCase):
  """A few steps of each digits ablation, at 1/8 width on the prepared digits, end to end."""

  @parameterized.named_parameters((name, name) for name in ABLATIONS)
  def test_trains_and_evaluates(self, name):
    config = paper_digits.get_config(name)
    config.batch_size = 16
    config.num_train_steps = 2
    config.model.width = 0.125
    config.model.dtype = 'float32'
    config.data.dir = training.digits_dir()
    config.data.prepare_from = ''
    config.data.num_threads = 1
    config.log.every_steps = 1
    config.log.tensorboard = False
    config.log.progress = False
    workdir = self.create_tempdir().full_path
    result = trainer.train_and_evaluate(config, workdir)
    records = training.read_metrics(workdir)
    losses = [r['loss'] for r in records if r['kind'] == 'train']
    self.assertLen(losses, 2)
    self.assertTrue(np.all(np.isfinite(losses)), losses)
    self.assertBetween(result['val_top1_err'], 0.0, 1.0)
    self.assertEqual(result['step'], 2)
    # The run trained what the ablation asked for: its stored config has the change.
    fields, _ = EXPECTED[name]
    with open(os.path.join(workdir, 'config.json')) as f:
      run_config = flat(json.load(f))
    for key, value in fields.items():
      want = list(value) if isinstance(value, tuple) else value
      self.assertEqual(run_config[key], want, key)


if __name__ == '__main__':
  absltest.main()
