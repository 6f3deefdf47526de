"""summary: the paper's totals, counts equal to a created model's, MACs from the paper's shapes."""

import os
import subprocess
import sys

from absl.testing import absltest
import jax

from alexnet_jax.model import cost
from alexnet_jax.evaluation import finished_run
from alexnet_jax import summary
from configs import imagenet
from tests import trained_run
from tests.helpers import REPO

# Multiply-adds per 224 image from the paper's layer shapes, written out independently of
# model.layer_table: output pixels x kernel area x input channels per tower x output channels.
PAPER_MACS = {
    'conv1': 55 * 55 * 11 * 11 * 3 * 96,
    'conv2': 27 * 27 * 5 * 5 * 48 * 256,  # 96 inputs in 2 towers
    'conv3': 13 * 13 * 3 * 3 * 256 * 384,
    'conv4': 13 * 13 * 3 * 3 * 192 * 384,
    'conv5': 13 * 13 * 3 * 3 * 192 * 256,
    'fc6': 6 * 6 * 256 * 4096,
    'fc7': 4096 * 4096,
    'fc8': 4096 * 1000,
}


def paper_config():
  config = imagenet.get_config()
  config.model.dtype = 'float32'
  return config


class SummaryTest(absltest.TestCase):

  def test_paper_network_totals(self):
    rows = summary.summarize(paper_config())
    self.assertEqual(sum(r.params for r in rows), 60_965_224)
    self.assertEqual({r.name: r.macs for r in rows if r.macs}, PAPER_MACS)
    self.assertEqual(sum(r.macs for r in rows), 724_406_816)  # the paper's ~0.72 G
    by_name = {r.name: r for r in rows}
    self.assertEqual(by_name['conv1'].output_shape, (55, 55, 96))
    self.assertEqual(by_name['pool5'].output_shape, (6, 6, 256))
    self.assertEqual(by_name['pool5'].params, 0)
    self.assertEqual([by_name[n].groups for n in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')],
                     [1, 2, 1, 2, 2])

  def test_totals_equal_a_created_model(self):
    # The shared tiny run's params were created by model.init and trained (a two-tower
    # net at 1/8 width); its stored config must summarise to exactly their sizes.
    run = finished_run.load_run(trained_run.workdir())
    rows = summary.summarize(run.config)
    self.assertEqual(sum(r.params for r in rows), cost.count_params(run.params))
    for r in rows:
      self.assertEqual(r.params, cost.count_params(run.params.get(r.name, {})), r.name)

  def test_one_tower_variant(self):
    config = paper_config()
    config.model.towers = 1
    self.assertEqual(sum(r.params for r in summary.summarize(config)), 62_378_344)

  def test_weight_sharding_follows_the_rules(self):
    config = paper_config()
    rows = {r.name: r for r in summary.summarize(config)}
    conv2 = rows['conv2'].weights['kernel']
    self.assertEqual(conv2.logical, ('conv_h', 'conv_w', 'conv_in', 'conv_out'))
    self.assertEqual(conv2.mesh, jax.sharding.PartitionSpec(None, None, None, 'model'))
    self.assertEqual(conv2.describe(), 'conv_out->model')
    self.assertEqual(rows['fc6'].weights['kernel'].describe(), 'fc_out->model')
    # Every weight splits its outputs in two: one device holds half of each.
    self.assertEqual(summary.per_device_params(rows.values(), {'data': -1, 'model': 2}),
                     60_965_224 // 2)
    config.mesh.rules = tuple((name, None if name == 'fc_out' else axis)
                              for name, axis in config.mesh.rules)
    rows = {r.name: r for r in summary.summarize(config)}
    self.assertEqual(rows['fc6'].weights['kernel'].describe(), 'replicated')

  def test_command_prints_table_and_totals(self):
    result = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.summary', '--config=configs/imagenet.py'],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))
    self.assertEqual(result.returncode, 0, result.stderr)
    lines = result.stdout.splitlines()
    conv1 = next(line for line in lines if line.startswith('conv1 '))
    self.assertEqual(conv1.split()[:5], ['conv1', '55x55x96', '1', '34,944', '105,415,200'])
    total = next(line for line in lines if line.startswith('total '))
    self.assertEqual(total.split(), ['total', '60,965,224', '724,406,816'])
    self.assertIn('per device: 30,482,612 parameters', result.stdout)


if __name__ == '__main__':
  absltest.main()
