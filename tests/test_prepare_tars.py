"""The prepare package on the official ILSVRC-2012 tars: labels, counts, and what it trusts."""

import io
import json
import os
import shutil
import tarfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from tests import fakes

SIZE = fakes.SIZE


class OfficialTarsTest(fakes.StatsAssertions):
  """A fake manual_dir: ILSVRC2012_img_train.tar (tar of <wnid>.tar) + val tar."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = fakes.tempdir()
    cls.source = os.path.join(cls.tmp, 'manual')
    os.makedirs(cls.source)
    val_wnids = prepare.imagenet_validation_wnids()
    # Classes of val images 1-5, plus the first wnid of labels.txt (no val image).
    cls.wnids = sorted(set(val_wnids[:5]) | {prepare.imagenet_wnids()[0]})
    cls.expected_color = {}  # (wnid, name) -> RGB of a solid image.
    index = 0
    with tarfile.open(os.path.join(cls.source, prepare.TRAIN_TAR), 'w') as outer:
      for wnid in reversed(cls.wnids):  # Tar order unlike labels.txt order.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as inner:
          for j, (h, w) in enumerate([(48, 36), (30, 50), (40, 40)]):
            name = f'{wnid}_{j}.JPEG'
            fakes.add_file(inner, name, fakes.jpeg(fakes.solid(fakes.color(index), h, w)))
            cls.expected_color[(wnid, name)] = fakes.color(index)
            index += 1
          if wnid == cls.wnids[0]:
            # The bad inputs of ImageNet itself, and a truncated file.
            fakes.add_file(inner, f'{wnid}_cmyk.JPEG',
                           fakes.cmyk_jpeg(fakes.solid(fakes.color(index), 40, 30)))
            cls.expected_color[(wnid, f'{wnid}_cmyk.JPEG')] = fakes.color(index)
            fakes.add_file(inner, f'{wnid}_png.JPEG',
                           fakes.png(fakes.solid(fakes.color(index + 1), 36, 36)))
            cls.expected_color[(wnid, f'{wnid}_png.JPEG')] = fakes.color(index + 1)
            gray = np.full((30, 40), 90, np.uint8)
            fakes.add_file(inner, f'{wnid}_gray.JPEG', fakes.jpeg(gray))
            cls.expected_color[(wnid, f'{wnid}_gray.JPEG')] = (90, 90, 90)
            broken = fakes.jpeg(np.random.default_rng(0).integers(0, 256, (40, 40, 3),
                                                                  dtype=np.uint8))
            fakes.add_file(inner, f'{wnid}_truncated.JPEG', broken[:len(broken) // 2])
            index += 2
        fakes.add_file(outer, f'{wnid}.tar', buf.getvalue())
    # Val images 1..7; 6 and 7 belong to classes absent from this train tar.
    cls.val_colors = {}
    with tarfile.open(os.path.join(cls.source, prepare.VAL_TAR), 'w') as val:
      for number in (3, 1, 7, 2, 5, 4, 6):  # Stored out of order on purpose.
        color = fakes.color(40 + number)
        cls.val_colors[number] = color
        fakes.add_file(val, f'ILSVRC2012_val_{number:08d}.JPEG',
                       fakes.jpeg(fakes.solid(color, 40, 56)))
    cls.output = os.path.join(cls.tmp, 'prepared')
    cls.report = prepare.prepare(cls.source, cls.output, image_size=SIZE,
                                 progress=False)

  def test_class_order_is_tfds_labels_order(self):
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    order = [w for w in prepare.imagenet_wnids() if w in self.wnids]
    self.assertEqual(description['class_names'], order)
    self.assertEqual(description['num_classes'], 6)
    self.assertEqual(description['image_size'], SIZE)
    self.assertTrue(description['complete'])

  def test_counts_and_report(self):
    # 6 classes x 3 good images + cmyk + png + gray; the truncated one is skipped.
    self.assertEqual(self.report['converted'], {'train': 21, 'val': 5})
    self.assertEqual(self.report['skipped'], {'train': 1, 'val': 0})
    self.assertIn('_truncated.JPEG', self.report['skipped_files'][0][0])
    self.assertEqual(self.report['val_outside_classes'], 2)
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      self.assertEqual(json.load(f)['splits'], {'train': 21, 'val': 5})
    self.assertFalse(os.path.exists(os.path.join(self.output, prepare.PARTIAL_DIR)))

  def test_train_labels_follow_the_synset_tar(self):
    images, labels = fakes.read_split(self.output, 'train')
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      class_names = json.load(f)['class_names']
    by_color = {}
    for (wnid, _), color in self.expected_color.items():
      by_color.setdefault(wnid, []).append(np.float64(color))
    for image, label in zip(images, labels):
      self.assertEqual(image.shape, (SIZE, SIZE, 3))
      mean = image.reshape(-1, 3).mean(0)
      # Its colour is one of the images of the class its label names.
      distance = min(np.abs(mean - c).max() for c in by_color[class_names[label]])
      self.assertLess(distance, 6, f'label {label} has colour {mean}')

  def test_grayscale_cmyk_png_converted(self):
    images, _ = fakes.read_split(self.output, 'train')
    means = [im.reshape(-1, 3).mean(0) for im in images]
    wnid = self.wnids[0]
    for kind in ('cmyk', 'png', 'gray'):
      color = np.float64(self.expected_color[(wnid, f'{wnid}_{kind}.JPEG')])
      self.assertLess(min(np.abs(m - color).max() for m in means), 6, kind)
    gray = min(images, key=lambda im: np.abs(im.reshape(-1, 3).mean(0) - 90).max())
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1)

  def test_val_labels_by_official_file_number(self):
    images, labels = fakes.read_split(self.output, 'val')
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      class_names = json.load(f)['class_names']
    val_wnids = prepare.imagenet_validation_wnids()
    for number, image, label in zip(range(1, 6), images, labels):
      self.assertEqual(class_names[label], val_wnids[number - 1])
      np.testing.assert_allclose(image.reshape(-1, 3).mean(0), self.val_colors[number],
                                 atol=6)

  def test_statistics_match_numpy(self):
    self.assert_stats_match(self.output, fakes.read_split(self.output, 'train')[0])

  def test_non_official_val_names_are_refused(self):
    source = os.path.join(self.tmp, 'renamed_val')
    os.makedirs(source)
    os.link(os.path.join(self.source, prepare.TRAIN_TAR),
            os.path.join(source, prepare.TRAIN_TAR))
    with tarfile.open(os.path.join(source, prepare.VAL_TAR), 'w') as val:
      fakes.add_file(val, 'ILSVRC2012_val_00000001.JPEG',
                     fakes.jpeg(fakes.solid(fakes.color(0), 8, 8)))
      fakes.add_file(val, 'my_photo.JPEG', fakes.jpeg(fakes.solid(fakes.color(1), 8, 8)))
    with self.assertRaisesRegex(ValueError, 'not an official validation file name'):
      prepare.prepare(source, os.path.join(self.tmp, 'renamed_out'), image_size=SIZE,
                      progress=False)
    self.assertFalse(prepared_format.is_complete(os.path.join(self.tmp, 'renamed_out')))

  def test_official_set_counts(self):
    # The official ILSVRC-2012 set: 1000 synsets in the train tar, 50,000 validation images.
    self.assertEqual(self.report['train_synsets'], [6, 1000])
    self.assertEqual(self.report['val_images'], [7, 50000])  # 2 of them outside the 6 classes
    self.assertFalse(self.report['official_complete'])
    self.assertIn('; not the complete official ILSVRC-2012 set: 6 of 1000 synsets, 7 of 50,000 '
                  'validation images (--strict refuses it);', prepare.summary_line(self.report))
    with open(os.path.join(self.output, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    self.assertFalse(description['official_complete'])
    self.assertEqual(description['source_files'], {
        name: os.path.getsize(os.path.join(self.source, name))
        for name in (prepare.TRAIN_TAR, prepare.VAL_TAR)})

  def test_rerun_is_a_noop(self):
    before = {n: os.stat(os.path.join(self.output, n)).st_mtime_ns
              for n in os.listdir(self.output)}
    report = prepare.ensure_prepared(self.source, self.output, image_size=SIZE)
    self.assertTrue(report['noop'])
    report = prepare.prepare(self.source, self.output, image_size=SIZE, progress=False)
    self.assertTrue(report['noop'])
    after = {n: os.stat(os.path.join(self.output, n)).st_mtime_ns
             for n in os.listdir(self.output)}
    self.assertEqual(before, after)
    with self.assertRaisesRegex(ValueError, 'image_size 32, not 64'):
      prepare.prepare(self.source, self.output, image_size=64, progress=False)


class TarChecksTest(absltest.TestCase):
  """What prepare trusts of the official tars (the command-line cases: tests/test_bad_input.py)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.val_wnids = prepare.imagenet_validation_wnids()
    cls.wnids = cls.val_wnids[:2]  # the synsets of validation images 1 and 2
    assert cls.wnids[0] != cls.wnids[1]

  def setUp(self):
    super().setUp()
    self.tmp = fakes.tempdir()

  def test_strict_takes_only_the_whole_official_set(self):
    source = os.path.join(self.tmp, 'src')
    fakes.write_tars(source, self.wnids, (1, 2))
    output = os.path.join(self.tmp, 'out')
    with self.assertRaisesRegex(errors.InputError, 'holds 2 of 1000 synsets, 2 of 50,000 '
                                'validation images; --strict prepares only the complete set'):
      prepare.prepare(source, output, image_size=SIZE, strict=True, progress=False)
    self.assertFalse(os.path.exists(output))
    # Were these two synsets and two images all of ILSVRC-2012, they would be the whole set.
    wnids = tuple(sorted(self.wnids))
    with mock.patch.object(prepare.labels, 'imagenet_wnids', return_value=wnids), \
        mock.patch.object(prepare.labels, 'imagenet_validation_wnids', return_value=self.wnids):
      report = prepare.prepare(source, output, image_size=SIZE, strict=True, progress=False)
    self.assertTrue(report['official_complete'])
    self.assertEqual((report['train_synsets'], report['val_images']), ([2, 2], [2, 2]))
    self.assertIn('; the complete official ILSVRC-2012 set;', prepare.summary_line(report))
    with open(os.path.join(output, prepared_format.DATASET_FILE)) as f:
      self.assertTrue(json.load(f)['official_complete'])

  def test_a_rerun_on_other_tars_is_not_already_complete(self):
    source = os.path.join(self.tmp, 'src')
    fakes.write_tars(source, self.wnids[:1], (1,))  # a part of the data, prepared first
    output = os.path.join(self.tmp, 'out')
    prepare.prepare(source, output, image_size=SIZE, progress=False)
    description = os.path.join(output, prepared_format.DATASET_FILE)
    with open(description, 'rb') as f:
      before = f.read()
    smaller = os.path.getsize(os.path.join(source, prepare.TRAIN_TAR))
    os.rename(source, source + '.first')
    fakes.write_tars(source, self.wnids, (1, 2))  # then the whole of it, in the same place
    larger = os.path.getsize(os.path.join(source, prepare.TRAIN_TAR))
    message = (f'{output} was prepared from other files in {source} than those there now '
               rf'\(ILSVRC2012_img_train.tar: {smaller:,} bytes then, {larger:,} bytes now\)')
    with self.assertRaisesRegex(errors.InputError, message):
      prepare.prepare(source, output, image_size=SIZE, progress=False)
    with self.assertRaisesRegex(errors.InputError, message):
      prepare.ensure_prepared(source, output, image_size=SIZE)
    with open(description, 'rb') as f:
      self.assertEqual(f.read(), before)
    shutil.rmtree(source)
    os.rename(source + '.first', source)  # the tars it was prepared from: complete, as it was
    self.assertTrue(prepare.prepare(source, output, image_size=SIZE, progress=False)['noop'])
    os.remove(os.path.join(source, prepare.TRAIN_TAR))  # deleted once prepared: no change
    self.assertTrue(prepare.ensure_prepared(source, output, image_size=SIZE)['noop'])

  def test_damage_found_while_converting_leaves_nothing(self):
    source = os.path.join(self.tmp, 'src')
    # The damage lies inside a synset tar whose ends are whole: found when it is read.
    fakes.write_tars(source, self.wnids, (1,), damaged_member=self.wnids[1])
    made = os.path.join(self.tmp, 'made')  # created by prepare
    given = os.path.join(self.tmp, 'given')  # an empty folder the user made
    os.makedirs(given)
    for output, workers in ((made, 1), (given, 2)):
      with self.assertRaisesRegex(errors.DamagedSourceError,
                                  f'{self.wnids[1]}.tar in .* holds a damaged header at byte '
                                  '1,536 \\(after 1 member\\)'):
        prepare.prepare(source, output, image_size=SIZE, workers=workers, progress=False)
    self.assertFalse(os.path.exists(made))
    self.assertEqual(os.listdir(given), [])


if __name__ == '__main__':
  absltest.main()
