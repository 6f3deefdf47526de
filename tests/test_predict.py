"""predict: the same numbers as evaluation, the 10-crop average, no data needed, clear errors."""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageOps

from alexnet_jax.data import decoding
from alexnet_jax.data import input_pipeline
from alexnet_jax import predict
from alexnet_jax.evaluation import finished_run
from alexnet_jax import prepare
from alexnet_jax.learning import step_fns
from alexnet_jax.storage import workdir_files
from tests import trained_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def paper_views(image_size: int, crop: int) -> list[tuple[int, int, bool]]:
  """Section 4.1's test views, (top, left, flip): the four corner patches and the center
  patch, then their horizontal reflections (the order docs/design.md, "Evaluation" gives)."""
  far, mid = image_size - crop, (image_size - crop) // 2
  places = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  return [(t, l, False) for t, l in places] + [(t, l, True) for t, l in places]


class PredictTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = trained_run.workdir()
    cls.trained = finished_run.load_run(cls.workdir)
    cls.tmp = tempfile.TemporaryDirectory()
    # Two validation digits, stored as lossless PNGs: reading one back gives the
    # stored image exactly (it is already image_size square).
    config = cls.trained.config
    crops = input_pipeline.create_eval_iterator(config.data, 'val', global_batch_size=16,
                                                crops=1)
    batch = next(iter(crops))
    mid = (config.data.image_size - config.data.crop_size) // 2
    center = (mid, mid)
    source = input_pipeline.open_split(config.data, 'val')
    cls.stored, cls.labels, cls.paths = [], [], []
    for i in (0, 1):
      image = decoding.decode(source.parse(source.records[i])[0])
      np.testing.assert_array_equal(image[center[0]:center[0] + 64, center[1]:center[1] + 64],
                                    batch['image'][i, 0])  # the same pixels eval sees
      path = os.path.join(cls.tmp.name, f'val{i}.png')
      Image.fromarray(image).save(path)
      cls.stored.append(image)
      cls.labels.append(int(batch['label'][i]))
      cls.paths.append(path)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_probabilities_sum_to_one_with_named_top5(self):
    results = predict.predict(self.workdir, self.paths, crops=10)
    self.assertLen(results, 2)
    for probs, top5 in results:
      self.assertEqual(probs.shape, (10,))
      self.assertAlmostEqual(float(probs.sum()), 1.0, places=5)
      self.assertTrue(np.all(probs >= 0))
      self.assertLen(top5, 5)
      self.assertEqual([s.label for s in top5], list(np.argsort(-probs, kind='stable')[:5]))
      self.assertEqual([s.prob for s in top5], sorted((s.prob for s in top5), reverse=True))
      for s in top5:
        self.assertAlmostEqual(s.prob, float(probs[s.label]), places=6)
        self.assertEqual(s.name, str(s.label))  # the digits' class names ...
        self.assertEqual(s.description, prepare.DIGIT_NAMES[s.label])  # ... and theirs in words

  def numpy_probabilities(self, image: np.ndarray) -> np.ndarray:
    """The 10-view softmax average of a stored image: views cut, mirrored and
    mean-subtracted here, the model's logits turned into probabilities in numpy."""
    data, mean = self.trained.config.data, self.trained.mean_image
    c = data.crop_size
    x = []
    for top, left, flip in paper_views(data.image_size, c):
      view = image[top:top + c, left:left + c].astype(np.float32) - mean[top:top + c, left:left + c]
      x.append(view[:, ::-1] if flip else view)
    forward = jax.jit(lambda p, x: self.trained.model.apply({'params': p}, x, train=False))
    return softmax(np.asarray(forward(self.trained.params, np.stack(x)), np.float64))

  def test_equals_the_eval_step(self):
    """predict on an image file and the eval step on the eval pipeline's batch of the same
    record agree, each with the softmax average computed here."""
    want = self.numpy_probabilities(self.stored[0]).mean(axis=0)
    probs = predict.predict(self.workdir, self.paths[:1], crops=10)[0][0]
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
    batch = next(iter(input_pipeline.create_eval_iterator(
        self.trained.config.data, 'val', global_batch_size=16, crops=10)))
    batch = {k: v[:1] for k, v in batch.items()}  # record 0: self.stored[0]
    state = step_fns.TrainState(step=jnp.zeros((), jnp.int32), params=self.trained.params,
                                opt_state=None)
    step = jax.jit(lambda s, b: step_fns.eval_step(
        s, b, model=self.trained.model, mean_image=jnp.asarray(self.trained.mean_image)))
    # eval_step reports -log p(label) of the view-averaged softmax: ask it for every label.
    for label in range(10):
      out = step(state, dict(batch, label=np.array([label], np.int32)))
      self.assertAlmostEqual(float(out['loss_sum']), -np.log(want[label]), places=4)
      self.assertEqual(float(out['top1_wrong']), float(label != np.argmax(want)))

  def test_ten_crops_average_the_views(self):
    # Each view cut, mirrored and mean-subtracted by hand, then through the model.
    ten = predict.predict(self.workdir, self.paths[:1], crops=10)[0][0]
    center = predict.predict(self.workdir, self.paths[:1], crops=1)[0][0]
    per_view = self.numpy_probabilities(self.stored[0])
    np.testing.assert_allclose(ten, np.mean(per_view, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(center, per_view[4], rtol=1e-4, atol=1e-6)  # view 4: center
    # Without `crops`, the run's own final test: the center crop for digits.
    _, ((default, _),) = predict.predict_with_run(self.workdir, self.paths[:1], crops=None)
    np.testing.assert_array_equal(default, center)
    self.assertFalse(np.allclose(ten, center, rtol=1e-3))  # the views do differ

  def test_arrays_and_files_agree(self):
    from_file = predict.predict(self.workdir, self.paths[:1], crops=1)[0][0]
    from_array = predict.predict(self.workdir, [self.stored[0]], crops=1)[0][0]
    np.testing.assert_array_equal(from_file, from_array)

  def test_step_selects_the_checkpoint(self):
    run, (result,) = predict.predict_with_run(self.workdir, self.paths[:1], crops=1, step=2)
    self.assertEqual(run.step, 2)
    self.assertEqual(self.trained.step, trained_run.STEPS)
    newest = predict.predict(self.workdir, self.paths[:1], crops=1)[0][0]
    self.assertFalse(np.allclose(result[0], newest))
    with self.assertRaisesRegex(ValueError, r'no checkpoint of step 3 .* steps \[2, 4\]'):
      predict.predict(self.workdir, self.paths[:1], step=3)

  def test_works_without_the_training_data(self):
    with tempfile.TemporaryDirectory() as tmp:
      moved = trained_run.copy_workdir(tmp, dir=os.path.join(tmp, 'no_data_here'))
      expected = predict.predict(self.workdir, self.paths, crops=1)
      got = predict.predict(moved, self.paths, crops=1)
      for (p_expected, top_expected), (p_got, top_got) in zip(expected, got):
        np.testing.assert_array_equal(p_got, p_expected)
        self.assertEqual(top_got, top_expected)
      # A run from before the stored description existed needs its dataset.
      os.remove(os.path.join(moved, workdir_files.INFO_FILE))
      with self.assertRaisesRegex(FileNotFoundError, 'dataset_info.json'):
        predict.predict(moved, self.paths, crops=1)

  def test_stored_description_matches_the_dataset(self):
    stored = workdir_files.load_dataset_info(self.workdir)
    live = input_pipeline.load_info(self.trained.config.data)
    self.assertEqual(stored.class_names, live.class_names)
    self.assertEqual(stored.class_descriptions, live.class_descriptions)
    self.assertEqual(stored.split_sizes, live.split_sizes)
    np.testing.assert_array_equal(stored.mean_image, live.mean_image)
    np.testing.assert_allclose(stored.eigvecs, live.eigvecs)

  def test_format_prediction(self):
    probs, top5 = predict.predict(self.workdir, self.paths[:1], crops=1)[0]
    text = predict.format_prediction(self.paths[0], top5, crops=1).splitlines()
    self.assertEqual(text[0], f'{self.paths[0]} (center crop):')
    best = top5[0]
    self.assertEqual(text[1], f'  1. {best.prob:7.2%}  {best.name}  {best.description}')
    self.assertLen(text, 6)

  def _cli(self, workdir: str, *images: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={workdir}', *images],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))

  def assertOneLineError(self, result: subprocess.CompletedProcess, pattern: str):
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    self.assertLen(lines, 1, result.stderr)
    self.assertRegex(lines[0], '^error: ' + pattern)
    self.assertEqual(result.stdout, '')

  def test_cli_unreadable_image_is_one_line(self):
    bad = os.path.join(self.tmp.name, 'notes.jpg')
    with open(bad, 'w') as f:
      f.write('not an image')
    self.assertOneLineError(self._cli(self.workdir, bad),
                            f'cannot read image {bad}: not an image')

  def test_cli_missing_checkpoint_is_one_line(self):
    with tempfile.TemporaryDirectory() as tmp:
      os.makedirs(os.path.join(tmp, 'run'))
      os.link(os.path.join(self.workdir, 'config.json'), os.path.join(tmp, 'run', 'config.json'))
      self.assertOneLineError(self._cli(os.path.join(tmp, 'run'), self.paths[0]),
                              'no checkpoint in ')


class ViewsTest(absltest.TestCase):

  def test_views_are_the_eval_pipelines(self):
    image = np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8)
    ten = predict.views_of(image, 64, crops=10)
    self.assertEqual(ten['image'].shape, (10, 64, 64, 3))
    expected = paper_views(72, 64)
    np.testing.assert_array_equal(ten['crop'], [(t, l) for t, l, _ in expected])
    np.testing.assert_array_equal(ten['flip'], [f for _, _, f in expected])
    np.testing.assert_array_equal(ten['image'][9], image[4:68, 4:68])  # mirrored on the device
    one = predict.views_of(image, 64, crops=1)
    np.testing.assert_array_equal(one['image'][0], image[4:68, 4:68])
    with self.assertRaisesRegex(ValueError, 'crops must be 1'):
      predict.views_of(image, 64, crops=5)

  def test_read_image_resizes_like_prepare(self):
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'wide.png')
      Image.fromarray(image).save(path)
      np.testing.assert_array_equal(predict.read_image(path, 72),
                                    decoding.resize_center_crop(image, 72))
      with self.assertRaisesRegex(ValueError, 'cannot read image .*missing.png'):
        predict.read_image(os.path.join(tmp, 'missing.png'), 72)


  def test_read_image_turns_photos_upright_like_prepare(self):
    # A picture stored sideways with EXIF orientation 8 (turn 90 degrees counter-clockwise
    # to show): predict classifies what a viewer shows, the image prepare stores.
    image = np.random.default_rng(2).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    with tempfile.TemporaryDirectory() as tmp:
      for fmt in ('PNG', 'JPEG'):
        path = os.path.join(tmp, f'phone.{fmt.lower()}')
        Image.fromarray(image).save(path, fmt, exif=exif.tobytes())
        with open(path, 'rb') as f:
          data = f.read()
        shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert('RGB'))
        self.assertEqual(shown.shape, (80, 50, 3))
        ours = predict.read_image(path, 32)
        stored, turned = prepare.convert_image(data, 32)
        self.assertTrue(turned)
        np.testing.assert_array_equal(ours, stored)
        if fmt == 'PNG':  # lossless: exactly Pillow's upright image, resized as prepare does
          np.testing.assert_array_equal(ours, decoding.resize_center_crop(shown, 32))


if __name__ == '__main__':
  absltest.main()
