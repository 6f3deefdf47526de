"""The sources and grain pipelines on a tiny prepared dataset and a tiny fake tfds imagenet2012.

Every batch element is traced back to the one stored image it was cut from (exact
pixel match at the reported crop offset; crops ship unmirrored), so the tests check what the
model will see, not how the pipeline is built.
"""

import os
import shutil
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import grain
import numpy as np

from alexnet_jax.data import augment
from alexnet_jax.data import preprocess
from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from alexnet_jax.core import errors
from alexnet_jax.data import dataset_info
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import sources
from alexnet_jax import prepare
from configs import imagenet
from tests.helpers import files
from tests.helpers import images as test_images

SIZE, CROP = 32, 24
NUM_TRAIN, NUM_VAL = 40, 11  # 4 classes x 10; val 3+3+3+2 (the last batch padded).


def _data_config(folder: str, **overrides):
  config = imagenet.get_config().data
  config.dir = folder
  config.image_size = SIZE
  config.crop_size = CROP
  config.num_threads = 2
  config.worker_count = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def _stored(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All decoded stored images (N, S, S, 3) and labels of a prepared split."""
  config = _data_config(folder)
  source = sources.open_split(config, split)
  images, labels = [], []
  for i in range(len(source.records)):
    data, label = source.parse(source.records[i])
    images.append(decoding.decode(data))
    labels.append(label)
  return np.stack(images), np.array(labels)


def _identify(stored: np.ndarray, image: np.ndarray, top: int, left: int) -> int:
  """Index of the one stored image whose crop at (top, left) is `image` (shipped unmirrored)."""
  c = image.shape[0]
  windows = stored[:, top:top + c, left:left + c]
  matches = np.flatnonzero((windows == image).all(axis=(1, 2, 3)))
  assert len(matches) == 1, f'{len(matches)} stored images match'
  return int(matches[0])


_ROOT = ''  # Holds every folder these tests write; removed at the end.


def tearDownModule():
  shutil.rmtree(_ROOT, ignore_errors=True)


def setUpModule():
  global FOLDER, TRAIN, TRAIN_LABELS, VAL, VAL_LABELS, _ROOT
  _ROOT = files.make_tempdir(prefix='test_input_pipeline_')
  tmp = files.make_tempdir(parent=_ROOT)
  source = os.path.join(tmp, 'images')
  rng = np.random.default_rng(0)
  for split, counts in (('train', (10, 10, 10, 10)), ('val', (3, 3, 3, 2))):
    for name, count in zip(('c0', 'c1', 'c2', 'c3'), counts):
      os.makedirs(os.path.join(source, split, name))
      for j in range(count):
        h, w = rng.integers(SIZE, 2 * SIZE, 2)
        with open(os.path.join(source, split, name, f'{j}.png'), 'wb') as f:
          f.write(test_images.png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
  FOLDER = os.path.join(tmp, 'prepared')
  prepare.prepare(source, FOLDER, image_size=SIZE, progress=False)
  TRAIN, TRAIN_LABELS = _stored(FOLDER, 'train')
  VAL, VAL_LABELS = _stored(FOLDER, 'val')


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _ids(batches):
  """Stored-image index of every element of train batches, in order."""
  return [_identify(TRAIN, b['image'][k], *b['crop'][k])
          for b in batches for k in range(len(b['label']))]


class InfoTest(absltest.TestCase):

  def test_load_info(self):
    info = sources.load_info(_data_config(FOLDER))
    self.assertEqual(info.num_classes, 4)
    self.assertEqual(info.class_names, ('c0', 'c1', 'c2', 'c3'))
    self.assertEqual(info.split_sizes, {'train': NUM_TRAIN, 'val': NUM_VAL})
    self.assertEqual(info.mean_image.shape, (SIZE, SIZE, 3))
    np.testing.assert_allclose(info.mean_image, TRAIN.mean(0), rtol=1e-5, atol=1e-4)
    self.assertEqual(info.eigvecs.shape, (3, 3))
    self.assertEqual(dataset_info.steps_per_epoch(info, 16), 2)
    channel = dataset_info.mean_for_config(info, _data_config(FOLDER, mean='channel'))
    np.testing.assert_allclose(channel, TRAIN.reshape(-1, 3).mean(0), rtol=1e-5)

  def test_missing_or_incomplete_folder(self):
    empty = files.make_tempdir(parent=_ROOT)
    for folder in (empty, os.path.join(empty, 'absent')):
      with self.assertRaisesRegex(FileNotFoundError,
                                  f'{folder} holds no complete.*alexnet_jax.prepare'):
        sources.load_info(_data_config(folder))
    with self.assertRaisesRegex(ValueError, 'prepared at image_size 32'):
      sources.load_info(_data_config(FOLDER, image_size=64, crop_size=56))


class SourceFactoryTest(absltest.TestCase):

  def test_the_config_picks_the_source(self):
    prepared = sources.create_source(_data_config(FOLDER))
    self.assertIsInstance(prepared, sources.PreparedSource)
    self.assertEqual(prepared.info().split_sizes, {'train': NUM_TRAIN, 'val': NUM_VAL})
    self.assertFalse(prepared.split('val').resize)  # prepared images are stored resized
    # Choosing a source opens nothing: an empty folder is refused only when read.
    tfds_source = sources.create_source(
        _data_config(files.make_tempdir(parent=_ROOT), source='tfds'))
    self.assertIsInstance(tfds_source, sources.TfdsImagenetSource)
    with self.assertRaisesRegex(FileNotFoundError, 'no prepared tfds imagenet2012'):
      tfds_source.info()

  def test_an_unknown_source_is_refused_in_one_line(self):
    config = _data_config(FOLDER, source='imagenet')
    message = "^data.source must be 'prepared' or 'tfds', got 'imagenet'$"
    for read in (sources.create_source, sources.load_info,
                 lambda c: sources.open_split(c, 'train'),
                 lambda c: input_pipeline.create_train_iterator(c, global_batch_size=8, seed=0,
                                                                process_index=0,
                                                                process_count=1)):
      with self.assertRaisesRegex(errors.InputError, message):
        read(config)

  def test_the_prepared_source_needs_no_tensorflow_datasets(self):
    code = ('import sys; from alexnet_jax.data import input_pipeline; from configs import '
            f'imagenet; c = imagenet.get_config().data; c.dir = {FOLDER!r}; '
            f'c.image_size = {SIZE}; input_pipeline.load_info(c); '
            "input_pipeline.open_split(c, 'train'); "
            "print('tensorflow_datasets' in sys.modules)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', code], cwd=repo, capture_output=True,
                            text=True, timeout=300, check=False)
    self.assertEqual(result.stdout.strip(), 'False', result.stderr[-2000:])


class DamagedShardTest(absltest.TestCase):

  def test_a_read_error_names_the_damaged_shard_and_the_fix(self):
    source = os.path.join(files.make_tempdir(parent=_ROOT), 'source')
    shutil.copytree(os.path.join(os.path.dirname(FOLDER), 'images'), source)
    folder = os.path.join(files.make_tempdir(parent=_ROOT), 'prepared')
    with mock.patch.object(prepare.parts, 'FILES_PER_PART', 16):  # train shards of 16, 16 and 8
      prepare.prepare(source, folder, image_size=SIZE, progress=False)
    shards = [os.path.join(folder, f'train.array_record-{i:05d}-of-00003') for i in range(3)]
    for damaged, first_bad in ((1, 16), (2, 32)):
      copy = os.path.join(files.make_tempdir(parent=_ROOT), 'copy')
      shutil.copytree(folder, copy)
      path = os.path.join(copy, os.path.basename(shards[damaged]))
      with open(path, 'r+b') as f:
        f.write(bytes(os.path.getsize(path) // 2))  # its records and their checksums zeroed
      records = sources.open_split(_data_config(copy), 'train').records
      for i in range(first_bad):  # the shards before it read as they are
        prepared_format.decode_record(records[i])
      with self.assertRaises(errors.InputError) as ctx:
        records[first_bad + 3]
      self.assertStartsWith(str(ctx.exception), f'{path} is damaged (')
      self.assertIn(f'delete {copy} and run python -m alexnet_jax.prepare --source={source} '
                    f'--output={copy} --image_size={SIZE}', str(ctx.exception))


class TrainIteratorTest(parameterized.TestCase):

  def _iterator(self, seed=0, batch=8, index=0, count=1, **overrides):
    return input_pipeline.create_train_iterator(
        _data_config(FOLDER, **overrides), global_batch_size=batch, seed=seed,
        process_index=index, process_count=count)

  def test_batch_format_and_content(self):
    batches = _take(self._iterator(), 5)
    b = batches[0]
    self.assertEqual(set(b), {'image', 'crop', 'flip', 'lighting', 'label'})
    self.assertEqual((b['image'].shape, b['image'].dtype), ((8, CROP, CROP, 3), np.uint8))
    self.assertEqual((b['crop'].shape, b['crop'].dtype), ((8, 2), np.int32))
    self.assertEqual((b['flip'].shape, b['flip'].dtype), ((8,), np.bool_))
    self.assertEqual((b['lighting'].shape, b['lighting'].dtype), ((8, 3), np.float32))
    self.assertEqual((b['label'].shape, b['label'].dtype), ((8,), np.int32))
    ids = _ids(batches)  # Raises unless every element is an exact crop.
    labels = np.concatenate([b['label'] for b in batches])
    np.testing.assert_array_equal(labels, TRAIN_LABELS[ids])
    crops = np.concatenate([b['crop'] for b in batches])
    self.assertTrue(((crops >= 0) & (crops <= SIZE - CROP)).all())
    self.assertGreater(len({tuple(c) for c in crops}), 20)
    flips = np.concatenate([b['flip'] for b in batches])
    self.assertTrue(0 < flips.sum() < len(flips))

  def test_lighting_alphas_follow_the_config(self):
    info = sources.load_info(_data_config(FOLDER))
    shifts = np.concatenate([b['lighting'] for b in _take(self._iterator(batch=40), 10)])
    alphas = (shifts / 255) @ info.eigvecs / info.eigvals
    np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.15)
    off = _take(self._iterator(lighting_std=0.0, flip=False), 2)
    for b in off:
      np.testing.assert_array_equal(b['lighting'], 0)
      self.assertFalse(b['flip'].any())

  def test_random_crop_off_trains_on_the_center_crop(self):
    """data.random_crop=False: every crop is the central one (offset (S - c) // 2 = 4),
    still flipped at random; the pixels are that crop of the stored image."""
    batches = _take(self._iterator(random_crop=False, flip=True), 5)
    center = (SIZE - CROP) // 2
    for b in batches:
      np.testing.assert_array_equal(b['crop'], np.full((8, 2), center))
    ids = _ids(batches)  # Raises unless each element is that exact crop.
    labels = np.concatenate([b['label'] for b in batches])
    np.testing.assert_array_equal(labels, TRAIN_LABELS[ids])
    flips = np.concatenate([b['flip'] for b in batches])
    self.assertTrue(0 < flips.sum() < len(flips))
    # The default draws the offsets: the same seed gives other crops.
    random = np.concatenate([b['crop'] for b in _take(self._iterator(), 5)])
    self.assertTrue((random != center).any())

  def test_same_seed_same_batches(self):
    for x, y in zip(_take(self._iterator(seed=3), 6), _take(self._iterator(seed=3), 6)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
    other = _take(self._iterator(seed=4), 6)
    self.assertNotEqual(_ids(_take(self._iterator(seed=3), 6)), _ids(other))

  @parameterized.parameters((1, 0), (2, 1))
  def test_threads_and_workers_do_not_change_batches(self, threads, workers):
    reference = _take(self._iterator(num_threads=0), 6)
    iterator = self._iterator(num_threads=threads, worker_count=workers, prefetch=3)
    for x, y in zip(reference, _take(iterator, 6)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
    if workers:
      iterator.close()

  @parameterized.parameters((1, 0, 1), (1, 0, 2), (1, 2, 2))
  def test_start_continues_the_global_sequence(self, threads, workers, count):
    """start=k: from global batch k on, for threads or workers and any process count (the
    batches 5-10 are the second and third epochs: 40 records make 5 batches of 8)."""
    start, n = 5, 6
    reference = _take(self._iterator(batch=8), start + n)[start:]
    for index in range(count):
      iterator = input_pipeline.create_train_iterator(
          _data_config(FOLDER, num_threads=threads, worker_count=workers), global_batch_size=8,
          seed=0, process_index=index, process_count=count, start=start)
      rows = slice(index * 8 // count, (index + 1) * 8 // count)  # its block of each batch
      for want, got in zip(reference, _take(iterator, n)):
        for key in want:
          np.testing.assert_array_equal(got[key], want[key][rows])
      if workers:
        iterator.close()

  def test_epochs_are_fresh_permutations(self):
    ids = _ids(_take(self._iterator(batch=8), 2 * NUM_TRAIN // 8))
    first, second = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
    self.assertEqual(sorted(first), list(range(NUM_TRAIN)))
    self.assertEqual(sorted(second), list(range(NUM_TRAIN)))
    self.assertNotEqual(first, second)

  def test_processes_get_disjoint_shards_of_each_epoch(self):
    steps = NUM_TRAIN // 8  # One epoch of global batches of 8 (4 per process).
    batches = [_take(self._iterator(batch=8, index=p, count=2), steps) for p in range(2)]
    shards = [_ids(b) for b in batches]
    self.assertEqual(len(shards[0]), NUM_TRAIN // 2)
    self.assertEmpty(set(shards[0]) & set(shards[1]))
    self.assertEqual(sorted(shards[0] + shards[1]), list(range(NUM_TRAIN)))
    # Together they are the single-process global batches, augmentation included
    # (so process p's k-th example is not cropped like process q's k-th).
    def views(batch_list):
      """(stored index, crop, flip, lighting) of every element."""
      stack = lambda key: np.concatenate([b[key] for b in batch_list])
      return [(i, tuple(c), bool(f), tuple(l)) for i, c, f, l in
              zip(_ids(batch_list), stack('crop'), stack('flip'), stack('lighting'))]

    single = views(_take(self._iterator(batch=8), steps))
    local = [views(b) for b in batches]
    for step in range(steps):
      # Process p holds rows [4p, 4p + 4) of each global batch, in order: the layout
      # jax.make_array_from_process_local_data assembles.
      self.assertEqual(single[8 * step:8 * step + 8],
                       local[0][4 * step:4 * step + 4] + local[1][4 * step:4 * step + 4])

  def test_state_restores_mid_epoch(self):
    iterator = self._iterator(seed=5)
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 4)
    resumed = self._iterator(seed=5)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 4)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])

  def test_state_round_trips_through_orbax(self):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    iterator = self._iterator(seed=6)
    _take(iterator, 2)
    directory = files.make_tempdir(parent=_ROOT)
    with ocp.CheckpointManager(directory) as manager:
      manager.save(2, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointSave(iterator)))
      manager.wait_until_finished()
    expected = _take(iterator, 3)
    resumed = self._iterator(seed=6)
    with ocp.CheckpointManager(directory) as manager:
      manager.restore(2, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(resumed)))
    for x, y in zip(expected, _take(resumed, 3)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])

  def test_batch_must_divide_over_processes(self):
    with self.assertRaisesRegex(ValueError, 'multiple of the process count 3'):
      self._iterator(batch=8, count=3)


class EvalIteratorTest(parameterized.TestCase):

  def _batches(self, crops, index=0, count=1, batch=4):
    return list(input_pipeline.create_eval_iterator(
        _data_config(FOLDER), 'val', global_batch_size=batch, crops=crops,
        process_index=index, process_count=count))

  def test_center_crop_covers_the_split_once_across_processes(self):
    seen = []
    for p in range(2):
      batches = self._batches(1, index=p, count=2)
      self.assertLen(batches, 3)  # ceil(11 / 4) steps on every process.
      for b in batches:
        self.assertEqual(b['image'].shape, (2, 1, CROP, CROP, 3))
        np.testing.assert_array_equal(b['crop'][:, 0], [[4, 4]] * 2)
        self.assertFalse(b['flip'].any())
        np.testing.assert_array_equal(b['lighting'], 0)
        for k in np.flatnonzero(b['mask']):
          index = _identify(VAL, b['image'][k, 0], 4, 4)
          self.assertEqual(b['label'][k], VAL_LABELS[index])
          seen.append(index)
    self.assertEqual(sorted(seen), list(range(NUM_VAL)))

  def test_ten_crops(self):
    views = augment.ten_crop_views(SIZE, CROP)
    batches = self._batches(10)
    self.assertEqual(sum(int(b['mask'].sum()) for b in batches), NUM_VAL)
    b = batches[0]
    self.assertEqual(b['image'].shape, (4, 10, CROP, CROP, 3))
    np.testing.assert_array_equal(b['crop'][0], [(t, l) for t, l, _ in views])
    np.testing.assert_array_equal(b['flip'][0], [f for _, _, f in views])
    for k in range(4):
      for v, (top, left, _) in enumerate(views):
        # Shipped unmirrored: preprocess.normalize mirrors the flipped views.
        np.testing.assert_array_equal(b['image'][k, v], VAL[k, top:top + CROP, left:left + CROP])

  def test_normalized_views_equal_numpy(self):
    info = sources.load_info(_data_config(FOLDER))
    b = self._batches(10)[0]
    out = np.asarray(preprocess.normalize(b['image'], b['crop'], b['flip'], b['lighting'],
                                       info.mean_image))
    for k in range(4):
      for v, (top, left, flip) in enumerate(augment.ten_crop_views(SIZE, CROP)):
        diff = (VAL[k].astype(np.float64) - info.mean_image)[top:top + CROP,
                                                             left:left + CROP]
        np.testing.assert_allclose(out[k, v], diff[:, ::-1] if flip else diff,
                                   rtol=1e-6, atol=1e-4)


class TfdsSourceTest(absltest.TestCase):
  """A tfds imagenet2012 written in ArrayRecord format without TensorFlow."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    cls.data_dir = files.make_tempdir(parent=_ROOT)
    builder = tfds.builder('imagenet2012', data_dir=cls.data_dir,
                           file_format='array_record')
    os.makedirs(builder.data_dir)
    serializer = tfds.core.example_serializer.ExampleSerializer(
        builder.info.features.get_serialized_info())
    rng = np.random.default_rng(1)
    cls.jpegs, cls.labels, splits = {}, {}, []
    for split, count in (('train', 6), ('validation', 3)):
      path = f'{builder.data_dir}/imagenet2012-{split}.array_record-00000-of-00001'
      writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
      cls.jpegs[split], cls.labels[split] = [], []
      for i in range(count):
        h, w = rng.integers(SIZE, 3 * SIZE, 2)
        jpeg, label = test_images.jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), 997 - i
        writer.write(serializer.serialize_example(builder.info.features.encode_example(
            {'image': jpeg, 'label': label, 'file_name': f'{split}_{i}.JPEG'})))
        cls.jpegs[split].append(jpeg)
        cls.labels[split].append(label)
      writer.close()
      splits.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[count], num_bytes=0,
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=builder.data_dir, template='{DATASET}-{SPLIT}.{FILEFORMAT}-'
              '{SHARD_X_OF_Y}', dataset_name='imagenet2012', split=split,
              filetype_suffix='array_record')))
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_dir)
    cls.train = np.stack([decoding.decode_and_resize(j, SIZE) for j in cls.jpegs['train']])

  def _config(self, **overrides):
    return _data_config(self.data_dir, source='tfds', **overrides)

  def test_info_uses_constants_then_the_stats_file(self):
    info = sources.load_info(self._config())
    self.assertEqual(info.num_classes, 1000)
    self.assertEqual(info.class_names, prepare.imagenet_wnids())
    self.assertEqual(info.split_sizes, {'train': 6, 'val': 3})
    self.assertEqual(info.stats_source, 'imagenet_constants')
    np.testing.assert_allclose(info.mean_image[5, 7],
                               np.float32([0.485, 0.456, 0.406]) * 255, rtol=1e-6)
    np.testing.assert_allclose(info.eigvals, [0.2175, 0.0188, 0.0045])

    report = prepare.prepare('tfds', self.data_dir, image_size=SIZE, progress=False)
    self.assertEqual(report['converted'], {'train': 6})
    info = sources.load_info(self._config())
    self.assertEqual(info.stats_source, prepared_format.tfds_stats_file(self.data_dir, SIZE))
    np.testing.assert_allclose(info.mean_image, self.train.mean(0), rtol=1e-5, atol=1e-4)
    cov = np.cov(self.train.reshape(-1, 3) / 255.0, rowvar=False, bias=True)
    np.testing.assert_allclose(info.eigvals, np.linalg.eigvalsh(cov)[::-1], rtol=1e-4)
    os.remove(info.stats_source)

  def test_train_crops_come_from_resized_full_images(self):
    iterator = input_pipeline.create_train_iterator(
        self._config(), global_batch_size=3, seed=0, process_index=0, process_count=1)
    for b in _take(iterator, 4):
      for k in range(3):
        index = _identify(self.train, b['image'][k], *b['crop'][k])
        self.assertEqual(b['label'][k], self.labels['train'][index])

  def test_eval_reads_the_validation_split(self):
    batches = list(input_pipeline.create_eval_iterator(
        self._config(), 'val', global_batch_size=2, crops=1, process_index=0,
        process_count=1))
    self.assertLen(batches, 2)
    labels = [int(b['label'][k]) for b in batches for k in np.flatnonzero(b['mask'])]
    self.assertEqual(labels, self.labels['validation'])

  def test_open_tfds_imagenet_gives_the_builder_and_a_split(self):
    opened = sources.open_tfds_imagenet(self.data_dir, 'val')
    self.assertEqual(opened.builder.info.splits['validation'].num_examples, 3)
    examples = [sources.parse_tfds_example(opened.records[i]) for i in range(3)]
    self.assertEqual([label for _, label in examples], self.labels['validation'])
    self.assertEqual([jpeg for jpeg, _ in examples], self.jpegs['validation'])
    self.assertLen(sources.open_tfds_imagenet(self.data_dir).records, 6)  # train by default
    with self.assertRaisesRegex(ValueError, "split must be 'train' or 'val', got 'test'"):
      sources.open_tfds_imagenet(self.data_dir, 'test')
    with self.assertRaisesRegex(FileNotFoundError, 'no prepared tfds imagenet2012'):
      sources.open_tfds_imagenet(files.make_tempdir(parent=_ROOT))

  def test_missing_tfds_dataset(self):
    with self.assertRaisesRegex(FileNotFoundError, 'no prepared tfds imagenet2012'):
      sources.load_info(_data_config(files.make_tempdir(parent=_ROOT), source='tfds'))


if __name__ == '__main__':
  absltest.main()
