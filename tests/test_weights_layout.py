"""The PyTorch/Caffe layout's mapping to this network, element by element, and its checks.

Each mapping is checked against index arithmetic written out here (numpy), not against
the inverse it is paired with: fc6's row of input (h, w, c) must be torch's column
c*S*S + h*S + w, Caffe's conv1 input channel c must be its BGR channel 2 - c.
"""

import os
import re
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.model import alexnet
from alexnet_jax.weights import layout
from alexnet_jax.weights import optional
from alexnet_jax.weights import run_writer
from alexnet_jax.weights import safetensors_io
from alexnet_jax.weights import torchvision_io
from tests.helpers import files

WIDTHS, HIDDEN, CLASSES = (8, 16, 24, 24, 16), 32, 5


def random_net(family: str, towers: int, seed: int = 0) -> layout.ForeignNet:
  rng = np.random.default_rng(seed)
  groups = {'conv1': 1, 'conv2': towers, 'conv3': 1, 'conv4': towers, 'conv5': towers}
  sizes = {'conv1': 11, 'conv2': 5, 'conv3': 3, 'conv4': 3, 'conv5': 3}
  layers, c_in = {}, 3
  for name, c_out in zip(layout.CONVS, WIDTHS):
    k = sizes[name]
    layers[name] = (rng.standard_normal((c_out, c_in // groups[name], k, k), np.float32),
                    rng.standard_normal(c_out, np.float32))
    c_in = c_out
  f_in = c_in * 36
  for name, f_out in (('fc6', HIDDEN), ('fc7', HIDDEN), ('fc8', CLASSES)):
    layers[name] = (rng.standard_normal((f_out, f_in), np.float32),
                    rng.standard_normal(f_out, np.float32))
    f_in = f_out
  return layout.ForeignNet(family, layers, groups)


class MappingTest(parameterized.TestCase):

  @parameterized.parameters((layout.TORCHVISION, 1), (layout.CAFFE, 2))
  def test_every_element_lands_where_the_index_arithmetic_says(self, family, towers):
    net = random_net(family, towers)
    config = layout.config_for(net)
    params = layout.to_flax(net, config)
    w6, k6 = net.layers['fc6'][0], params['fc6']['kernel']
    c5, side = WIDTHS[-1], 6
    for h, w, c, o in [(0, 0, 1, 0), (2, 5, 7, 3), (5, 1, 15, 31), (3, 3, 0, 9)]:
      self.assertEqual(k6[(h * side + w) * c5 + c, o], w6[o, c * side * side + h * side + w])
    w1, k1 = net.layers['conv1'][0], params['conv1']['kernel']
    for o, c, y, x in [(0, 0, 0, 0), (3, 1, 4, 7), (7, 2, 10, 2)]:
      source_c = 2 - c if family == layout.CAFFE else c  # Caffe's conv1 reads BGR
      self.assertEqual(k1[y, x, c, o], w1[o, source_c, y, x])
    w4, k4 = net.layers['conv4'][0], params['conv4']['kernel']
    for o, i, y, x in [(0, 0, 0, 0), (20, 11, 2, 1)]:
      self.assertEqual(k4[y, x, i, o], w4[o, i, y, x])  # groups keep their channel blocks
    np.testing.assert_array_equal(params['fc8']['kernel'], net.layers['fc8'][0].T)

  @parameterized.parameters((layout.TORCHVISION, 1), (layout.CAFFE, 2))
  def test_the_config_builds_the_shapes_of_the_weights(self, family, towers):
    net = random_net(family, towers)
    config = layout.config_for(net)
    model = alexnet.from_config(config.model)
    self.assertEqual(alexnet.scaled_widths(model.width, model.conv_widths), (WIDTHS, HIDDEN))
    self.assertEqual((model.towers, model.num_classes), (towers, CLASSES))
    if family == layout.CAFFE:
      self.assertEqual((model.lrn_k, model.lrn_alpha, model.conv1_padding, model.input_std,
                        config.data.crop_size), (1.0, 1e-4 / 5, 0, None, 227))
    else:
      self.assertEqual((model.use_lrn, model.conv1_padding, config.data.crop_size),
                       (False, 2, 224))
      np.testing.assert_allclose(model.input_std, np.array([0.229, 0.224, 0.225]) * 255)

  def test_caffe_mean_is_rgb_of_104_117_123_and_a_mean_file_is_flipped_to_rgb_hwc(self):
    net = random_net(layout.CAFFE, 2)
    np.testing.assert_array_equal(layout.mean_image_for(net)[7, 9], [123, 117, 104])
    bgr = np.random.default_rng(1).uniform(0, 255, (3, 256, 256)).astype(np.float32)
    with_file = layout.ForeignNet(net.family, net.layers, net.groups, bgr)
    rgb = layout.mean_image_for(with_file)
    self.assertEqual(rgb[10, 20, 0], bgr[2, 10, 20])
    self.assertEqual(rgb[10, 20, 2], bgr[0, 10, 20])
    self.assertEqual(layout.config_for(with_file).data.mean, 'pixel')


class ImportedClassesTest(absltest.TestCase):

  def test_1000_outputs_are_imagenet_wnids_in_sorted_order(self):
    info = run_writer.imported_info(1000, np.zeros((256, 256, 3), np.float32), 'test')
    # tench and goldfish: class 0 and 1 of torchvision's and Caffe's ImageNet models.
    self.assertEqual(info.class_names[:2], ('n01440764', 'n01443537'))
    self.assertEqual(list(info.class_names), sorted(info.class_names))
    self.assertLen(set(info.class_names), 1000)

  def test_other_class_counts_are_named_by_index(self):
    info = run_writer.imported_info(3, np.zeros((256, 256, 3), np.float32), 'test')
    self.assertEqual(info.class_names, ('class_0', 'class_1', 'class_2'))


class RefusalTest(absltest.TestCase):

  def test_missing_layer(self):
    net = random_net(layout.TORCHVISION, 1)
    del net.layers['fc7']
    with self.assertRaisesRegex(errors.InputError, r"lack layers \['fc7'\]"):
      layout.config_for(net)

  def test_fc6_that_is_not_a_square_map(self):
    net = random_net(layout.TORCHVISION, 1)
    weight, bias = net.layers['fc6']
    net.layers['fc6'] = (weight[:, :-16], bias)
    with self.assertRaisesRegex(errors.InputError, 'fc6 has'):
      layout.to_flax(net, layout.config_for(net))

  def test_grouped_conv3(self):
    net = random_net(layout.CAFFE, 2)
    net.groups['conv3'] = 2
    with self.assertRaisesRegex(errors.InputError, 'groups only conv2, conv4 and conv5'):
      layout.check_net(net)

  def test_write_run_refuses_a_shape_the_config_lacks_before_writing(self):
    weights = layout.as_run(random_net(layout.TORCHVISION, 1))
    weights.params['fc7']['kernel'] = weights.params['fc7']['kernel'][:, :-1]
    workdir = os.path.join(files.make_tempdir(self), 'run')
    with self.assertRaisesRegex(errors.InputError, r"\['fc7'\]\['kernel'\] has shape \(32, 31\)"):
      run_writer.write_run(workdir, weights.config, weights.params,
                           mean_image=weights.mean_image, source_note='test')
    self.assertFalse(os.path.exists(workdir))

  def test_a_safetensors_file_of_another_program_is_refused(self):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    path = os.path.join(files.make_tempdir(self), 'other.safetensors')
    safetensors_numpy.save_file({'conv1.weight': np.zeros((2, 3), np.float32)}, path)
    with self.assertRaisesRegex(errors.InputError, 'not a safetensors file exported by '
                                'alexnet_jax'):
      safetensors_io.read(path)

  def test_without_torch_or_safetensors_each_reader_says_what_to_install(self):
    for module, read, pin in [('torch', torchvision_io.read, 'torch==2.13.0'),
                              ('safetensors', safetensors_io.read, 'safetensors==0.8.0')]:
      hidden = {name: None for name in sys.modules if name.split('.')[0] == module}
      with mock.patch.dict(sys.modules, hidden or {module: None}):
        with self.assertRaisesRegex(errors.MissingInputError,
                                    f'needs the {module} package, which is not installed: '
                                    f'pip install {re.escape(pin)}$'):
          read('weights.file')

  def test_missing_optional_package_is_one_line_with_its_pin(self):
    optional.PINS['no_such_package_here'] = 'no-such-package==1.0'
    try:
      with self.assertRaisesRegex(errors.MissingInputError,
                                  '^reading x needs the no-such-package package, which is not '
                                  r'installed: pip install no-such-package==1\.0$'):
        optional.require('no_such_package_here', 'reading x')
    finally:
      del optional.PINS['no_such_package_here']


class ModelFieldsTest(absltest.TestCase):

  def test_bad_lrn_and_std_values_are_refused_by_the_field_check(self):
    for field, value, pattern in [('lrn_k', 0.0, 'lrn_k must be a number > 0'),
                                  ('lrn_alpha', -1e-4, 'lrn_alpha must be a number >= 0'),
                                  ('input_std', (1.0, 2.0), 'input_std must be None or three'),
                                  ('input_std', (1.0, 0.0, 1.0), 'input_std must be None')]:
      with self.assertRaisesRegex(errors.InputError, pattern):
        alexnet.AlexNet(**{field: value}).check()

  def test_a_stored_config_from_before_the_fields_builds_the_paper_lrn(self):
    stored = {'num_classes': 10, 'towers': 2, 'use_lrn': True, 'dtype': 'float32'}
    model = alexnet.from_config(stored)
    self.assertEqual((model.lrn_k, model.lrn_alpha, model.input_std), (2.0, 1e-4, None))


if __name__ == '__main__':
  absltest.main()
