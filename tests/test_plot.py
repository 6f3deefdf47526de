"""Plots and the paper's figures 3 and 4: valid PNGs of the expected size, and their numbers."""

import io
import json
import os
import struct
import tempfile
import warnings
import zlib

from absl.testing import absltest
import jax
import numpy as np
from PIL import Image

from alexnet_jax.core import errors
from alexnet_jax.figures import run_figures
from alexnet_jax import plot
from alexnet_jax.evaluation import finished_run
from tests import trained_run


def png_size(path: str) -> tuple[int, int]:
  """(width, height) of a PNG that PIL reads through to its last byte."""
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
  with Image.open(path) as image:
    image.load()
    assert image.format == 'PNG'
    return image.size


def synthetic_metrics(steps_per_epoch: int = 10, epochs: int = 6) -> list[dict]:
  """Train lines every 5 steps, eval lines each epoch (without `epoch`, which
  docs/design.md, "metrics.jsonl" allows),
  the learning rate divided by 10 after epoch 3, and a last 10-crop evaluation."""
  records = []
  for step in range(5, steps_per_epoch * epochs + 1, 5):
    epoch = step / steps_per_epoch
    lr = 0.01 if epoch <= 3 else 0.001
    records.append({'step': step, 'kind': 'train', 'loss': 2.3 / epoch, 'top1_err': 0.9 / epoch,
                    'top5_err': 0.5 / epoch, 'lr': np.float32(lr).item(), 'epoch': epoch,
                    'images_per_sec': None if step == 5 else 1000.0 + step})
    if step % steps_per_epoch == 0:
      records.append({'step': step, 'kind': 'eval', 'val_loss': 2.0 / epoch,
                      'val_top1_err': 0.8 / epoch, 'val_top5_err': 0.4 / epoch})
  records[-1].update(val10_top1_err=0.1, val10_top5_err=0.05)
  return records


class CurvesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = self.create_tempdir().full_path
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'w') as f:
      for record in synthetic_metrics():
        f.write(json.dumps(record) + '\n')
      f.write('{"step": 61, "kind": "tr')  # a line cut short by a crash is skipped

  def test_curves_and_throughput_pngs(self):
    written = run_figures.write_curve_plots(self.workdir)
    plots = os.path.join(self.workdir, 'plots')
    self.assertEqual(written, [os.path.join(plots, 'training_curves.png'),
                               os.path.join(plots, 'throughput.png')])
    self.assertEqual(png_size(written[0]), (1500, 450))
    self.assertEqual(png_size(written[1]), (900, 400))
    for path in written:
      self.assertGreater(os.path.getsize(path), 10_000)  # more than an empty canvas

  def test_learning_rate_drop_sits_at_the_epoch_end(self):
    train, evals = run_figures.split_records(synthetic_metrics())
    # float32 noise in the logged rate (0.01 -> 0.0099999998) is not a drop.
    self.assertEqual(run_figures.learning_rate_drops(train), [(3.0, np.float32(0.01).item(),
                                                           np.float32(0.001).item())])
    np.testing.assert_allclose(run_figures.epochs_of(evals, train), [1, 2, 3, 4, 5, 6])

  def test_plot_command_without_checkpoint_draws_the_curves(self):
    outcomes = {o.name: o for o in plot.write_plots(self.workdir)}
    self.assertIsNotNone(outcomes['training_curves.png'].path)
    self.assertIsNone(outcomes['conv1_kernels.png'].path)
    self.assertRegex(outcomes['conv1_kernels.png'].note, 'config.json')

  def test_nothing_to_plot_is_an_error(self):
    with self.assertRaisesRegex(FileNotFoundError, 'nothing to plot'):
      plot.write_plots(self.create_tempdir().full_path)


class KernelsTest(absltest.TestCase):

  def test_each_kernel_spans_zero_to_one(self):
    kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 8))
    kernel[..., 3] = 0.25  # no contrast: mid-gray
    images = run_figures.normalize_kernels(kernel)
    self.assertEqual(images.shape, (8, 11, 11, 3))
    for i in (0, 1, 2, 4, 5, 6, 7):
      self.assertAlmostEqual(images[i].min(), 0.0)
      self.assertAlmostEqual(images[i].max(), 1.0)
    np.testing.assert_array_equal(images[3], 0.5)

  def test_colour_share(self):
    rng = np.random.default_rng(1)
    gray = np.repeat(rng.normal(size=(11, 11, 1, 1)), 3, axis=2)
    colour = gray * np.array([1.0, -1.0, 0.0])[None, None, :, None]
    shares = run_figures.colour_share(np.concatenate([gray, colour], axis=-1))
    self.assertAlmostEqual(shares[0], 0.0)
    self.assertGreater(shares[1], 0.5)

  def test_towers_own_halves_of_the_output_channels(self):
    self.assertEqual(run_figures.tower_slices(96, 2), [slice(0, 48), slice(48, 96)])
    grid = run_figures.kernel_grid(np.zeros((48, 11, 11, 3)), columns=16)
    self.assertEqual(grid.shape, (3 * 12 + 1, 16 * 12 + 1, 3))  # 3 rows of 16, 1-pixel gaps

  def test_figure_3_png(self):
    path = os.path.join(self.create_tempdir().full_path, 'k.png')
    kernel = np.random.default_rng(2).normal(size=(11, 11, 3, 96))
    run_figures.plot_conv1_kernels(kernel, towers=2, path=path)
    self.assertEqual(png_size(path), (900, 500))


class NeighboursTest(absltest.TestCase):

  def test_nearest_neighbours_match_brute_force(self):
    rng = np.random.default_rng(3)
    queries, base = rng.normal(size=(4, 16)), rng.normal(size=(50, 16))
    order, distances = run_figures.nearest_neighbours(queries, base, k=5)
    brute = np.linalg.norm(queries[:, None] - base[None], axis=-1)
    np.testing.assert_array_equal(order, np.argsort(brute, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :5], rtol=1e-9)


class RunFiguresTest(absltest.TestCase):
  """Figures from the shared tiny trained run (tests/trained_run.py)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = trained_run.workdir()

  def test_training_wrote_its_plots(self):
    plots = os.path.join(self.workdir, 'plots')
    self.assertEqual(png_size(os.path.join(plots, 'training_curves.png')), (1500, 450))
    self.assertEqual(png_size(os.path.join(plots, 'throughput.png')), (900, 400))
    self.assertEqual(png_size(os.path.join(plots, 'conv1_kernels.png')), (900, 500))

  def test_fc7_features_feed_fc8(self):
    # fc8's logits are an affine map of the fc7 activations: the captured ones must be those.
    run = finished_run.load_run(self.workdir)
    crops = run_figures.load_center_crops(run.config.data, 'val', [0, 5, 9])
    features = run_figures.features_of(crops, run.params, model=run.model,
                                   mean_image=run.mean_image, batch=2)  # a padded last batch
    self.assertEqual(features.shape, (3, 512))
    self.assertTrue(np.all(features >= 0))  # after the ReLU
    forward = jax.jit(lambda p, x: run.model.apply({'params': p}, x, train=False))
    logits = forward(run.params, crops.image.astype(np.float32) - run.mean_image[4:68, 4:68])
    fc8 = run.params['fc8']
    np.testing.assert_allclose(features @ np.asarray(fc8['kernel']) + np.asarray(fc8['bias']),
                               logits, rtol=1e-4, atol=1e-4)

  def test_plot_command_writes_all_four(self):
    with tempfile.TemporaryDirectory() as tmp:
      workdir = trained_run.copy_workdir(tmp)
      outcomes = plot.write_plots(workdir, max_train=40, num_queries=2, num_neighbours=3)
      paths = {o.name: o.path for o in outcomes}
      self.assertEqual(set(paths), {'training_curves.png', 'throughput.png',
                                    'conv1_kernels.png', 'nearest_neighbours.png'})
      self.assertEqual(png_size(paths['conv1_kernels.png']), (900, 500))
      # 2 rows (queries) of 1 + 3 cells of 150 x 170 pixels.
      self.assertEqual(png_size(paths['nearest_neighbours.png']), (4 * 150, 2 * 170))

  def test_figure_4_is_skipped_without_the_dataset(self):
    with tempfile.TemporaryDirectory() as tmp:
      workdir = trained_run.copy_workdir(tmp, dir=os.path.join(tmp, 'elsewhere'))
      outcomes = {o.name: o for o in plot.write_plots(workdir)}
      self.assertIsNotNone(outcomes['conv1_kernels.png'].path)
      self.assertIsNone(outcomes['nearest_neighbours.png'].path)
      self.assertRegex(outcomes['nearest_neighbours.png'].note, 'needs the dataset')


def png_header(width: int, height: int) -> bytes:
  """The start of an RGB PNG of width x height: all PIL reads to open it (and judge its size)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


def pil_opens_quietly(width: int, height: int) -> bool:
  """Whether PIL opens a PNG of that size without its decompression-bomb warning."""
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      with Image.open(io.BytesIO(png_header(width, height))) as image:
        return image.size == (width, height)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
      return False


class NeighbourFigureBoundTest(absltest.TestCase):
  """plot refuses, in one line, a figure 4 larger than PIL opens without its bomb warning."""

  def test_the_largest_figure_allowed_opens_in_pil(self):
    # A cell of figure 4 is 150 x 170 pixels (test_plot_command_writes_all_four measures a
    # drawn one): a row per query, the query and its neighbours across.
    for queries in (1, 5, 9):
      most = max(k for k in range(1, 5000) if pil_opens_quietly(150 * (k + 1), 170 * queries))
      plot.check_neighbour_figure(queries, most)
      with self.assertRaisesRegex(errors.InputError, f'at --queries={queries}, --neighbours can '
                                  f'be at most {most}$'):
        plot.check_neighbour_figure(queries, most + 1)
    most = max(q for q in range(1, 5000) if pil_opens_quietly(150 * 2, 170 * q))
    with self.assertRaisesRegex(errors.InputError, f'--queries can be at most {most}$'):
      plot.check_neighbour_figure(most + 1, 1)


if __name__ == '__main__':
  absltest.main()
