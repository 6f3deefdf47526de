"""Imported torchvision and Caffe weights give the source network's outputs; exports round-trip.

The references are independently written PyTorch networks (tests/helpers/torch_alexnet.py)
fed with each source's own test-time preprocessing; tiny widths keep each forward pass at
milliseconds. Each imported run is read back the way evaluate and predict read any run
(evaluation.finished_run), and its logits come from predict's views and the on-device
normalisation (data.preprocess.normalize) before the run's model.
"""

import filecmp
import os

from absl.testing import absltest
import jax
import numpy as np
import torch

from alexnet_jax import export_weights
from alexnet_jax import import_weights
from alexnet_jax import predict
from alexnet_jax.core import errors
from alexnet_jax.data import preprocess
from alexnet_jax.evaluation import finished_run
from alexnet_jax.weights import layout
from alexnet_jax.weights import run_writer
from tests.helpers import files
from tests.helpers import torch_alexnet

TV_WIDTHS, CAFFE_WIDTHS, HIDDEN, CLASSES = (8, 16, 24, 16, 16), (8, 16, 24, 24, 16), 32, 10


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
  """uint8 (n, 256, 256, 3) with different content in each channel (a channel swap shows)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (n, 16, 16, 3))
  images = coarse.repeat(16, axis=1).repeat(16, axis=2)
  return np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype(np.uint8)


def run_logits(workdir: str, images: np.ndarray) -> np.ndarray:
  """Centre-crop logits of the run in `workdir`, through predict's views and normalize."""
  run = finished_run.load_run(workdir)
  crop = run.config.data.crop_size
  views = [predict.views_of(im, crop, 1) for im in images]
  batch = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
  x = preprocess.normalize(batch['image'], batch['crop'], batch['flip'],
                           np.zeros((len(images), 3), np.float32), run.mean_image)
  return np.asarray(run.model.apply({'params': run.params}, x, train=False))


def torch_logits(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
  with torch.no_grad():
    return net.eval()(x).numpy()


class TorchvisionImportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = files.make_tempdir()
    torch.manual_seed(0)
    cls.net = torch_alexnet.he_init(torch_alexnet.TorchvisionAlexNet(CLASSES, TV_WIDTHS, HIDDEN))
    cls.pth = os.path.join(cls.tmp, 'alexnet.pth')
    torch.save(cls.net.state_dict(), cls.pth)
    cls.workdir = os.path.join(cls.tmp, 'run')
    import_weights.import_weights('torchvision', cls.pth, cls.workdir)
    cls.images = smooth_images(3)

  def test_logits_equal_torchvision_preprocessing_and_network(self):
    want = torch_logits(self.net, torch_alexnet.torchvision_input(self.images))
    got = run_logits(self.workdir, self.images)
    self.assertGreater(np.std(want, axis=0).min(), 0.1)  # each class's logit varies by image
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

  def test_predict_probabilities_equal_torch_softmax(self):
    paths = []
    for i, image in enumerate(self.images):
      paths.append(os.path.join(self.tmp, f'image{i}.png'))
      torch_alexnet.save_png(image, paths[-1])
    results = predict.predict(self.workdir, paths, crops=1)
    want = torch.softmax(torch.from_numpy(
        torch_logits(self.net, torch_alexnet.torchvision_input(self.images))), -1).numpy()
    np.testing.assert_allclose(np.stack([p for p, _ in results]), want, atol=1e-5)
    self.assertEqual([s.label for s in results[0][1]],
                     list(np.argsort(-want[0], kind='stable')[:5]))

  def test_run_config_records_the_source_preprocessing(self):
    config = finished_run.load_config(self.workdir)
    self.assertEqual((config.model.towers, config.model.use_lrn, config.data.crop_size,
                      config.model.conv1_padding, config.data.mean), (1, False, 224, 2, 'channel'))
    np.testing.assert_allclose(config.model.input_std, [58.395, 57.12, 57.375], rtol=1e-6)
    run = finished_run.load_run(self.workdir)
    np.testing.assert_allclose(run.mean_image, [123.675, 116.28, 103.53], rtol=1e-6)

  def test_torchvision_export_is_the_imported_state_dict_bitwise(self):
    out = os.path.join(self.tmp, 'exported.pth')
    export_weights.export_weights(self.workdir, 'torchvision', out)
    original, exported = torch.load(self.pth), torch.load(out)
    self.assertEqual(list(original), list(exported))
    for key in original:
      self.assertTrue(torch.equal(original[key], exported[key]), key)
      self.assertEqual(original[key].dtype, exported[key].dtype)

  def test_safetensors_export_import_export_is_bitwise(self):
    first = os.path.join(self.tmp, 'a.safetensors')
    second = os.path.join(self.tmp, 'b.safetensors')
    export_weights.export_weights(self.workdir, 'safetensors', first)
    again = os.path.join(self.tmp, 'from_safetensors')
    import_weights.import_weights('safetensors', first, again)
    export_weights.export_weights(again, 'safetensors', second)
    self.assertTrue(filecmp.cmp(first, second, shallow=False))
    a, b = finished_run.load_run(self.workdir), finished_run.load_run(again)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(a.mean_image, b.mean_image)
    self.assertEqual(a.config.to_dict(), b.config.to_dict())

  def test_import_refuses_a_workdir_holding_a_run(self):
    with self.assertRaisesRegex(errors.InputError, 'already holds a run'):
      import_weights.import_weights('torchvision', self.pth, self.workdir)


class CaffeLayoutTest(absltest.TestCase):
  """The Caffe family's mapping (BGR conv1, groups, LRN k=1 and alpha/5, 227 crops, mean)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = files.make_tempdir()
    torch.manual_seed(1)
    cls.net = torch_alexnet.he_init(torch_alexnet.CaffeAlexNet(CLASSES, CAFFE_WIDTHS, HIDDEN))
    with torch.no_grad():
      # conv1 outputs in the hundreds on 0-255 pixels: LRN1 divides them several times over,
      # so its k and alpha show; fc8 scaled down to logits of order 10 (the tolerance is
      # absolute).
      cls.net.conv1.reset_parameters()
      cls.net.conv1.weight.mul_(8.0)
      cls.net.fc8.weight.div_(10.0)
    foreign = layout.ForeignNet(layout.CAFFE, cls.net.layers(),
                                {'conv1': 1, 'conv2': 2, 'conv3': 1, 'conv4': 2, 'conv5': 2})
    weights = layout.as_run(foreign)
    cls.workdir = os.path.join(cls.tmp, 'caffe_run')
    run_writer.write_run(cls.workdir, weights.config, weights.params,
                         mean_image=weights.mean_image, source_note='test')
    cls.foreign, cls.images = foreign, smooth_images(2, seed=1)

  def test_logits_equal_caffe_preprocessing_and_network(self):
    want = torch_logits(self.net, torch_alexnet.caffe_input(self.images))
    got = run_logits(self.workdir, self.images)
    self.assertGreater(np.std(want, axis=0).min(), 0.02)  # each class's logit varies by image
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

  def test_from_flax_inverts_to_flax_bitwise(self):
    run = finished_run.load_run(self.workdir)
    back = layout.from_flax(jax.device_get(run.params), run.config)
    self.assertEqual(back.family, layout.CAFFE)
    self.assertEqual(back.groups, self.foreign.groups)
    for name in layout.LAYERS:
      for got, want in zip(back.layers[name], self.foreign.layers[name]):
        np.testing.assert_array_equal(got, want, err_msg=name)

  def test_torchvision_export_refuses_two_towers_with_lrn(self):
    with self.assertRaisesRegex(errors.InputError, r'2 towers .*LRN'):
      export_weights.export_weights(self.workdir, 'torchvision', os.path.join(self.tmp, 'x.pth'))


if __name__ == '__main__':
  absltest.main()
