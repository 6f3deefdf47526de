"""ONNX AlexNets: both layouts read and give onnxruntime's outputs; any run exports exactly.

References are onnxruntime's own outputs for files the test writes: a zoo-style graph of
bvlc_alexnet's layout (tests/helpers/onnx_files.py, onnx.helper) and torch.onnx.export's
file of an independently written torchvision-layout net (tests/helpers/torch_alexnet.py).
"""

import json
import os
import sys
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import torch

from alexnet_jax import export_weights
from alexnet_jax import import_weights
from alexnet_jax.core import errors
from alexnet_jax.evaluation import finished_run
from alexnet_jax.model import alexnet
from alexnet_jax.weights import layout
from alexnet_jax.weights import onnx_io
from tests.helpers import files
from tests.helpers import onnx_files
from tests.helpers import run_outputs
from tests.helpers import torch_alexnet
from tests.helpers import training

CAFFE_WIDTHS, TV_WIDTHS, HIDDEN, CLASSES = (8, 16, 24, 24, 16), (8, 16, 24, 16, 16), 32, 10
CAFFE_GROUPS = {'conv1': 1, 'conv2': 2, 'conv3': 1, 'conv4': 2, 'conv5': 2}


def caffe_input(images: np.ndarray) -> np.ndarray:
  """bvlc_alexnet's test input: centre 227 crop, BGR, 0-255 minus 104/117/123, NCHW."""
  top = (256 - 227) // 2
  bgr = images[:, top:top + 227, top:top + 227, ::-1].astype(np.float32)
  return (bgr - np.float32([104, 117, 123])).transpose(0, 3, 1, 2)


class ThirdPartyFilesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = files.make_tempdir()
    torch.manual_seed(7)
    net = torch_alexnet.CaffeAlexNet(CLASSES, CAFFE_WIDTHS, HIDDEN)
    with torch.no_grad():  # activations large enough that LRN's sum matters, not k alone
      net.conv1.weight.mul_(8.0)
    cls.caffe_layers = net.layers()
    cls.zoo = onnx_files.zoo_style_caffe(cls.caffe_layers, os.path.join(cls.tmp, 'zoo.onnx'))
    cls.tv_net = torch_alexnet.TorchvisionAlexNet(CLASSES, TV_WIDTHS, HIDDEN)
    cls.tv = onnx_files.torch_export(cls.tv_net, os.path.join(cls.tmp, 'tv.onnx'))
    cls.images = run_outputs.smooth_images(2, seed=8)

  def test_zoo_graph_gives_its_initializers_bitwise(self):
    declared_224 = onnx_files.zoo_style_caffe(self.caffe_layers,
                                              os.path.join(self.tmp, 'zoo224.onnx'), side=224)
    net = onnx_io.read(declared_224)
    self.assertEqual((net.family, net.groups), ('caffe', CAFFE_GROUPS))
    for name, (weight, bias) in self.caffe_layers.items():
      np.testing.assert_array_equal(net.layers[name][0], weight, err_msg=name)
      np.testing.assert_array_equal(net.layers[name][1], bias, err_msg=name)

  def test_caffe_layout_run_gives_onnxruntime_logits(self):
    workdir = os.path.join(self.tmp, 'zoo_run')
    import_weights.import_weights('onnx', self.zoo, workdir)
    want = onnx_files.run(self.zoo, caffe_input(self.images), output='fc8_1')
    self.assertGreater(np.std(want), 1e-2)
    np.testing.assert_allclose(run_outputs.run_logits(workdir, self.images), want,
                               rtol=0, atol=1e-4)

  def test_torchvision_layout_run_gives_onnxruntime_logits(self):
    workdir = os.path.join(self.tmp, 'tv_run')
    import_weights.import_weights('onnx', self.tv, workdir)
    self.assertEqual(finished_run.load_config(workdir).model.towers, 1)
    want = onnx_files.run(self.tv, torch_alexnet.torchvision_input(self.images).numpy())
    self.assertGreater(np.std(want), 1e-2)
    np.testing.assert_allclose(run_outputs.run_logits(workdir, self.images), want,
                               rtol=0, atol=1e-4)

  def test_export_of_an_imported_run_runs_and_reads_back_bitwise(self):
    workdir = os.path.join(self.tmp, 'zoo_run_for_export')
    import_weights.import_weights('onnx', self.zoo, workdir)
    exported = os.path.join(self.tmp, 'exported.onnx')
    export_weights.export_weights(workdir, 'onnx', exported)
    got = onnx_files.run(exported, run_outputs.model_input(workdir, self.images))
    np.testing.assert_allclose(got, run_outputs.run_logits(workdir, self.images),
                               rtol=0, atol=1e-4)
    again = os.path.join(self.tmp, 'from_export')
    import_weights.import_weights('onnx', exported, again)
    a, b = finished_run.load_run(workdir), finished_run.load_run(again)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(a.mean_image, b.mean_image)
    self.assertEqual(a.config.to_dict(), b.config.to_dict())

  def test_other_graphs_are_refused_in_one_line(self):
    cases = [
        (dict(lrn_bias=2.0), r"not bvlc_alexnet's layout: layer 3 is LRN \(size 5 alpha "
                             r'0.0001 beta 0.75 bias 2\), where .* has LRN \(.*bias 1\)'),
        (dict(extra_node='GlobalAveragePool'), r"node 'extra' \(GlobalAveragePool\) is not a "
                                               'layer of an AlexNet'),
    ]
    for i, (change, pattern) in enumerate(cases):
      with self.subTest(change=change):
        path = onnx_files.zoo_style_caffe(self.caffe_layers,
                                          os.path.join(self.tmp, f'other{i}.onnx'), **change)
        with self.assertRaisesRegex(errors.InputError, pattern):
          onnx_io.read(path)
    garbage = os.path.join(self.tmp, 'garbage.onnx')
    with open(garbage, 'wb') as f:
      f.write(b'\xff' * 64)
    with self.assertRaisesRegex(errors.InputError, 'is not an ONNX model: its bytes do not parse as binary protobuf'):
      onnx_io.read(garbage)
    with self.assertRaisesRegex(errors.InputError, 'a Caffe --mean_file does not apply'):
      onnx_io.read(self.tv, mean_file=garbage)

  def test_without_the_onnx_package_one_line_names_it(self):
    with mock.patch.dict(sys.modules, {'onnx': None}):
      with self.assertRaisesRegex(errors.MissingInputError, r'^reading an ONNX file needs the '
                                  r'onnx package, which is not installed: pip install '
                                  r'onnx==1\.23\.2$'):
        onnx_io.read(self.zoo)


class AnyRunExportTest(absltest.TestCase):
  """A run of this project's own network (paper LRN k=2, conv1 padding 2, 64 crops) exports."""

  def test_onnxruntime_gives_the_network_logits_and_the_file_reads_back_bitwise(self):
    tmp = files.make_tempdir(self)
    config = training.tiny_config(tmp)
    config.model.pool_size = config.model.pool_stride = 2  # the paper's non-overlapping control
    model = alexnet.from_config(config.model)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3)) * 60
    params = jax.device_get(model.init(jax.random.key(1), x)['params'])
    params = jax.tree.map(np.asarray, flax_unbox(params))
    mean = np.random.default_rng(0).uniform(0, 255, (72, 72, 3)).astype(np.float32)
    path = os.path.join(tmp, 'run.onnx')
    with open(path, 'wb') as f:
      f.write(onnx_io.model_of_run(config, params, mean).SerializeToString())
    want = np.asarray(model.apply({'params': params}, x, train=False))
    got = onnx_files.run(path, np.asarray(x).transpose(0, 3, 1, 2) * config.model.input_scale)
    self.assertGreater(np.std(want), 1e-2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    back = onnx_io.read(path)
    self.assertIsInstance(back, layout.RunWeights)
    as_json = lambda c: json.loads(json.dumps(c.to_dict()))  # as a run stores its config
    self.assertEqual(as_json(back.config), as_json(config))
    jax.tree.map(np.testing.assert_array_equal, back.params, params)
    np.testing.assert_array_equal(back.mean_image, mean)


def flax_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)


if __name__ == '__main__':
  absltest.main()
