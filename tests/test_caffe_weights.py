"""Caffe's bvlc_alexnet files read without Caffe: both caffemodel formats, prototxt, mean file.

The caffemodels are written by the test's own wire-format encoder
(tests/helpers/caffe_files.py) with the weights of an independently written PyTorch net
of bvlc_alexnet's layout (tests/helpers/torch_alexnet.py) at small widths; the imported
run's logits must be that net's on Caffe's test-time input (BGR, 0-255, minus the mean,
centre 227 crop).
"""

import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import torch

from alexnet_jax import import_weights
from alexnet_jax.core import errors
from alexnet_jax.weights import caffe
from tests.helpers import caffe_files
from tests.helpers import files
from tests.helpers import run_outputs
from tests.helpers import subprocesses
from tests.helpers import torch_alexnet
from tests.helpers import REPO

WIDTHS, HIDDEN, CLASSES = (8, 16, 24, 24, 16), 32, 10
GROUPS = {'conv1': 1, 'conv2': 2, 'conv3': 1, 'conv4': 2, 'conv5': 2}


def write(folder: str, name: str, data: bytes | str) -> str:
  path = os.path.join(folder, name)
  with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
  return path


def torch_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return net.eval()(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def caffe_input(images: np.ndarray, mean_bgr: np.ndarray) -> np.ndarray:
  """Caffe's test input (n, 3, 227, 227): the centre crop at (256 - 227) // 2, BGR, minus a
  per-channel (3,) or per-pixel (3, 256, 256) BGR mean cut like the crop."""
  top = (256 - 227) // 2
  bgr = images[:, top:top + 227, top:top + 227, ::-1].transpose(0, 3, 1, 2).astype(np.float32)
  mean = mean_bgr.reshape(3, 1, 1) if mean_bgr.ndim == 1 else (
      mean_bgr[:, top:top + 227, top:top + 227])
  return bgr - mean.astype(np.float32)


class CaffemodelTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = files.make_tempdir()
    torch.manual_seed(3)
    cls.net = torch_alexnet.CaffeAlexNet(CLASSES, WIDTHS, HIDDEN)
    with torch.no_grad():  # activations large enough that LRN's sum matters, not k alone
      cls.net.conv1.weight.mul_(8.0)
    cls.weights = cls.net.layers()
    cls.spec = caffe_files.alexnet_spec(WIDTHS, HIDDEN, CLASSES)
    layers = caffe_files.alexnet_layers(cls.weights, cls.spec)
    cls.v1 = write(cls.tmp, 'v1.caffemodel', caffe_files.caffemodel_bytes(layers, v1=True))
    cls.new = write(cls.tmp, 'new.caffemodel', caffe_files.caffemodel_bytes(layers, v1=False))
    cls.bare = write(cls.tmp, 'bare.caffemodel', caffe_files.caffemodel_bytes(
        layers, v1=False, with_settings=False, with_data_layer=False))
    rng = np.random.default_rng(4)
    cls.mean_bgr = (rng.uniform(60, 180, (3, 8, 8)).repeat(32, 1).repeat(32, 2)
                    ).astype(np.float32)
    cls.mean_file = write(cls.tmp, 'mean.binaryproto', caffe_files.mean_file_bytes(cls.mean_bgr))
    cls.images = run_outputs.smooth_images(2, seed=5)

  def assert_weights(self, net):
    self.assertEqual(net.family, 'caffe')
    self.assertEqual(net.groups, GROUPS)
    self.assertEqual(sorted(net.layers), sorted(self.weights))
    for name, (weight, bias) in self.weights.items():
      np.testing.assert_array_equal(net.layers[name][0], weight, err_msg=name)
      np.testing.assert_array_equal(net.layers[name][1], bias, err_msg=name)

  def test_v1_and_new_format_give_the_blobs_bitwise(self):
    for path in (self.v1, self.new):
      with self.subTest(path=os.path.basename(path)):
        self.assert_weights(caffe.read(path))

  def test_prototxt_gives_the_settings_a_caffemodel_lacks(self):
    with self.assertRaisesRegex(errors.InputError, r"no settings for Convolution 'conv1'; give "
                                r'its deploy prototxt \(--prototxt\)'):
      caffe.read(self.bare)
    layers = caffe_files.alexnet_layers(None, self.spec)
    for v1 in (False, True):
      with self.subTest(v1_text=v1):
        prototxt = write(self.tmp, f'deploy{v1}.prototxt', caffe_files.prototxt_text(layers, v1))
        self.assert_weights(caffe.read(self.bare, prototxt=prototxt))

  def test_imported_run_gives_the_caffe_network_logits(self):
    workdir = os.path.join(self.tmp, 'run_v1')
    import_weights.import_weights('caffe', self.v1, workdir)
    want = torch_logits(self.net, caffe_input(self.images, np.float32([104, 117, 123])))
    got = run_outputs.run_logits(workdir, self.images)
    self.assertGreater(np.std(want), 1e-2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

  def test_mean_file_is_the_mean_the_run_subtracts(self):
    workdir = os.path.join(self.tmp, 'run_mean')
    import_weights.import_weights('caffe', self.new, workdir, mean_file=self.mean_file)
    want = torch_logits(self.net, caffe_input(self.images, self.mean_bgr))
    np.testing.assert_allclose(run_outputs.run_logits(workdir, self.images), want,
                               rtol=0, atol=1e-4)

  def test_mean_file_reads_as_caffe_stores_it(self):
    np.testing.assert_array_equal(caffe.read_mean_file(self.mean_file), self.mean_bgr)
    npy = os.path.join(self.tmp, 'mean.npy')
    np.save(npy, self.mean_bgr)
    np.testing.assert_array_equal(caffe.read_mean_file(npy), self.mean_bgr)


class NotBvlcAlexnetTest(absltest.TestCase):
  """Another net, a damaged file or a wrong mean file: one InputError line saying what."""

  def setUp(self):
    super().setUp()
    self.tmp = files.make_tempdir(self)

  def refused(self, spec, pattern, v1=False, weights=None):
    data = caffe_files.caffemodel_bytes(caffe_files.alexnet_layers(weights, spec), v1)
    path = write(self.tmp, 'net.caffemodel', data)
    with self.assertRaisesRegex(errors.InputError, pattern) as caught:
      caffe.read(path)
    self.assertNotIn('\n', str(caught.exception))

  def changed(self, name, **settings):
    spec = caffe_files.alexnet_spec(WIDTHS, HIDDEN, CLASSES)
    return [(n, t, dict(s, **settings) if n == name else s) for n, t, s in spec]

  def test_caffenet_pools_before_normalising(self):
    spec = caffe_files.alexnet_spec(WIDTHS, HIDDEN, CLASSES)
    spec[2], spec[3] = spec[3], spec[2]  # bvlc_reference_caffenet: pool1 then norm1
    self.refused(spec, r"not bvlc_alexnet: computing layer 3 is Pooling 'pool1', where "
                 r"bvlc_alexnet has LRN 'norm1'", v1=True)

  def test_other_settings(self):
    cases = [
        (self.changed('norm1', k=2.0), r"LRN 'norm1' has local_size 5 alpha 0.0001 beta 0.75 "
                                       r'k 2, bvlc_alexnet local_size 5 alpha 0.0001 beta 0.75 k 1'),
        (self.changed('conv2', group=1), r"Convolution 'conv2' has .*group 1, .*group 2"),
        (self.changed('conv1', pad=2), r"Convolution 'conv1' has .*pad 2 group 1, .*pad 0"),
        (self.changed('pool5', pool=1), r"Pooling 'pool5' has not a max-pool"),
    ]
    for spec, pattern in cases:
      with self.subTest(pattern=pattern):
        self.refused(spec, pattern)

  def test_a_layer_after_fc8(self):
    spec = caffe_files.alexnet_spec(WIDTHS, HIDDEN, CLASSES) + [
        ('fc9', 'InnerProduct', dict(num_output=3))]
    self.refused(spec, r"not bvlc_alexnet: it has InnerProduct 'fc9' after fc8")

  def test_weights_that_do_not_chain(self):
    torch.manual_seed(0)
    weights = torch_alexnet.CaffeAlexNet(CLASSES, WIDTHS, HIDDEN).layers()
    spec = self.changed('conv3', num_output=48)  # conv4's blob still reads 24 inputs
    self.refused(spec, r"layer 'conv3' has weights \(24, 16, 3, 3\).*make them "
                 r'\(48, 16, 3, 3\)', weights=weights)

  def test_damaged_and_foreign_files(self):
    garbage = write(self.tmp, 'garbage.caffemodel', b'\xff' * 64)
    with self.assertRaisesRegex(errors.InputError, 'is not a Caffe NetParameter: its bytes do '
                                'not parse as binary protobuf'):
      caffe.read(garbage)
    empty = write(self.tmp, 'empty.caffemodel', b'')
    with self.assertRaisesRegex(errors.InputError, 'holds no layers'):
      caffe.read(empty)
    v0 = write(self.tmp, 'v0.caffemodel', caffe_files.field_bytes(
        2, caffe_files.field_bytes(1, caffe_files.field_string(1, 'conv1'))))
    with self.assertRaisesRegex(errors.InputError, "V0 format; convert it with Caffe's "
                                'upgrade_net_proto_binary'):
      caffe.read(v0)
    with self.assertRaisesRegex(errors.MissingInputError, 'does not exist'):
      caffe.read(os.path.join(self.tmp, 'nowhere.caffemodel'))

  def test_mean_file_of_another_shape(self):
    path = write(self.tmp, 'mean.binaryproto',
                 caffe_files.blob(np.zeros((1, 1, 4, 4), np.float32), v1=True))
    with self.assertRaisesRegex(errors.InputError, r'holds an array of shape \(1, 4, 4\), not '
                                'one 3-channel image'):
      caffe.read_mean_file(path)

  def test_command_refuses_another_net_in_one_line(self):
    spec = caffe_files.alexnet_spec(WIDTHS, HIDDEN, CLASSES)
    spec[2], spec[3] = spec[3], spec[2]
    path = write(self.tmp, 'caffenet.caffemodel', caffe_files.caffemodel_bytes(
        caffe_files.alexnet_layers(None, spec), v1=True))
    workdir = os.path.join(self.tmp, 'run')
    proc = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.import_weights', '--source=caffe',
         f'--input={path}', f'--workdir={workdir}'],
        cwd=REPO, env=subprocesses.subprocess_env(), capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, errors.EXIT_USER_ERROR, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    self.assertEqual(proc.stderr.strip().splitlines()[-1],
                     f"error: {path} is not bvlc_alexnet: computing layer 3 is Pooling "
                     "'pool1', where bvlc_alexnet has LRN 'norm1'")
    self.assertFalse(os.path.exists(workdir))


if __name__ == '__main__':
  absltest.main()
