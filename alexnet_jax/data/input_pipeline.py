"""grain input pipelines for training and evaluation.

Train: global shuffle (a fresh permutation every epoch, from the seed) -> repeat ->
per-record augmentation with grain's per-record rng (random crop, flip, PCA lighting
shift) -> per-process slice -> batch. Augmentation happens before the per-process
slice, so each record's rng depends on its global position: processes never share
crops, and the global batch sequence is a pure function of (seed, data, step); each
process's part of it depends only on its index and the process count.

Batches hold uint8 crops plus the per-image parameters; `preprocess.normalize` turns
them into float model input inside the jitted step (mean subtraction with the same
crop/flip of the mean image, plus the lighting shift).

Train batch (b = global_batch_size // process_count, c = crop_size):
  image uint8 (b, c, c, 3); crop int32 (b, 2) (top, left) in the stored image;
  flip bool (b,); lighting float32 (b, 3) in 0-255 units; label int32 (b,).
Eval batch (V = 1 center crop, or the paper's 10 views): image uint8 (b, V, c, c, 3);
  crop int32 (b, V, 2); flip bool (b, V); lighting float32 zeros (b, V, 3);
  label int32 (b,); mask bool (b,) (False on padding that completes the last batch).

Sources (data_config.source):
  'prepared': the output of `python -m alexnet_jax.prepare`, in data_config.dir.
  'tfds': tensorflow-datasets' imagenet2012 already prepared in ArrayRecord format
    under data_config.dir (the tfds data_dir); full-size JPEGs are resized and
    center-cropped to image_size on the fly, exactly as prepare does. Its mean image
    and PCA come from `alexnet_jax_stats_<image_size>.npz` in that folder when present
    (written by `python -m alexnet_jax.prepare --source=tfds --output=<data_dir>`),
    else from the ImageNet constants: the widely used eigen-decomposition of
    ImageNet's RGB covariance and the per-channel mean (0.485, 0.456, 0.406) x 255
    filled into a mean image (docs/design.md, "Augmentation").
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

from absl import flags
from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import augment
from alexnet_jax.data import preprocess
from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format

# Widely used ImageNet statistics of pixels in [0, 1] (docs/design.md, "Augmentation").
IMAGENET_CHANNEL_MEAN = (0.485, 0.456, 0.406)
IMAGENET_EIGVALS = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVECS = ((-0.5675, 0.7192, 0.4009),
                    (-0.5808, -0.0045, -0.8140),
                    (-0.5836, -0.6948, 0.4203))
TFDS_NAME = 'imagenet2012'
TFDS_SPLITS = {'train': 'train', 'val': 'validation'}


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset."""
  num_classes: int
  class_names: tuple[str, ...]  # wnids (ImageNet) or folder names, in label order.
  class_descriptions: tuple[str, ...]  # Human-readable names, else the class names.
  split_sizes: dict[str, int]  # 'train', 'val' -> number of examples.
  image_size: int  # Side of the stored (or on-the-fly resized) square images.
  mean_image: np.ndarray  # float32 (S, S, 3), 0-255 units.
  eigvals: np.ndarray  # float32 (3,), RGB covariance of [0, 1] pixels, descending.
  eigvecs: np.ndarray  # float32 (3, 3), columns are the components.
  stats_source: str  # Where mean/PCA come from: a file path or 'imagenet_constants'.


# ----------------------------------------------------------------------------------
# Dataset description and record sources.


def _missing_prepared(folder: str) -> errors.MissingInputError:
  return errors.MissingInputError(
      f'{folder or "(config.data.dir is empty)"} holds no complete prepared dataset '
      f'(no finished {prepared_format.DATASET_FILE}); run: python -m alexnet_jax.prepare '
      f'--source=SRC --output={folder or "DIR"} (or set config.data.prepare_from)')


def _prepared_description(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  folder = data_config.dir
  if not folder or not prepared_format.is_complete(folder):
    raise _missing_prepared(folder)
  description = prepared_format.read_dataset_json(folder)
  if description['image_size'] != data_config.image_size:
    raise errors.InputError(
        f'{folder} was prepared at image_size {description["image_size"]} but '
        f'config.data.image_size is {data_config.image_size}')
  return description


def _tfds_builder(data_config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds  # Slow to import; only this source needs it.

  if not data_config.dir:
    raise errors.InputError("source='tfds' needs config.data.dir: the tfds data_dir that "
                            f'holds {TFDS_NAME}/')
  builder = tfds.builder(TFDS_NAME, data_dir=data_config.dir)
  if not builder.is_prepared():
    raise errors.MissingInputError(
        f'no prepared tfds {TFDS_NAME} under {data_config.dir} ({builder.data_dir} is '
        'missing); prepare it with tfds in ArrayRecord format, or use source=prepared '
        'with python -m alexnet_jax.prepare')
  if builder.info.file_format.value != 'array_record':
    raise errors.InputError(
        f'{builder.data_dir} is in {builder.info.file_format.value} format; random '
        'access needs array_record (tfds build --file_format=array_record)')
  return builder


def load_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Reads classes, split sizes and training statistics of the configured dataset."""
  size = data_config.image_size
  if data_config.source == 'prepared':
    description = _prepared_description(data_config)
    stats_path = os.path.join(data_config.dir, prepared_format.STATS_FILE)
    mean_image, eigvals, eigvecs = prepared_format.read_stats(stats_path)
    return DatasetInfo(
        num_classes=description['num_classes'],
        class_names=tuple(description['class_names']),
        class_descriptions=tuple(description['class_descriptions']),
        split_sizes=dict(description['splits']),
        image_size=size,
        mean_image=mean_image,
        eigvals=eigvals,
        eigvecs=eigvecs,
        stats_source=stats_path)
  if data_config.source == 'tfds':
    info = _tfds_builder(data_config).info
    stats_path = prepared_format.tfds_stats_file(data_config.dir, size)
    if os.path.isfile(stats_path):
      mean_image, eigvals, eigvecs = prepared_format.read_stats(stats_path)
    else:
      logging.warning(
          '%s not found: using the ImageNet per-channel mean and PCA constants '
          '(python -m alexnet_jax.prepare --source=tfds --output=%s computes the '
          'per-pixel mean)', stats_path, data_config.dir)
      stats_path = 'imagenet_constants'
      mean_image = np.broadcast_to(
          np.float32(IMAGENET_CHANNEL_MEAN) * 255, (size, size, 3)).copy()
      eigvals = np.float32(IMAGENET_EIGVALS)
      eigvecs = np.float32(IMAGENET_EIGVECS)
    names = tuple(info.features['label'].names)
    return DatasetInfo(
        num_classes=len(names),
        class_names=names,
        class_descriptions=names,
        split_sizes={ours: info.splits[theirs].num_examples
                     for ours, theirs in TFDS_SPLITS.items() if theirs in info.splits},
        image_size=size,
        mean_image=np.asarray(mean_image, np.float32),
        eigvals=np.asarray(eigvals, np.float32),
        eigvecs=np.asarray(eigvecs, np.float32),
        stats_source=stats_path)
  raise errors.InputError(f"data.source must be 'prepared' or 'tfds', got "
                          f'{data_config.source!r}')


def parse_tfds_example(example: dict[str, Any]) -> tuple[bytes, int]:
  """(JPEG bytes, label) of a tfds imagenet2012 example read with SkipDecoding."""
  return example['image'], int(example['label'])


@dataclasses.dataclass(frozen=True)
class RecordSource:
  """Random-access records, how to read (image bytes, label) from one, and whether
  the images still need the resize to image_size (True for full-size JPEGs)."""
  records: Any
  parse: Callable[[Any], tuple[bytes, int]]
  resize: bool


def open_split(data_config: ml_collections.ConfigDict, split: str) -> RecordSource:
  """The records of `split` ('train' or 'val') of the configured dataset."""
  if split not in ('train', 'val'):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  if data_config.source == 'prepared':
    description = _prepared_description(data_config)
    shards = description['shards'][split]
    if not shards:
      raise errors.InputError(f'the {split} split of {data_config.dir} is empty')
    # "path[0:n]" tells grain the record count, so no shard is opened up front.
    paths = [f'{os.path.join(data_config.dir, name)}[0:{count}]'
             for name, count in shards]
    records = NamedShards(grain.sources.ArrayRecordDataSource(paths),
                          tuple(os.path.join(data_config.dir, name) for name, _ in shards),
                          tuple(np.cumsum([count for _, count in shards]).tolist()),
                          _prepare_again(data_config.dir, description))
    return RecordSource(records, prepared_format.decode_record, resize=False)
  if data_config.source == 'tfds':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = _tfds_builder(data_config)
    if TFDS_SPLITS[split] not in builder.info.splits:
      raise errors.InputError(f'{builder.data_dir} has no {TFDS_SPLITS[split]} split')
    records = tfds.data_source(
        TFDS_NAME, split=TFDS_SPLITS[split], data_dir=data_config.dir,
        download=False, decoders={'image': tfds.decode.SkipDecoding()})
    return RecordSource(records, parse_tfds_example, resize=True)
  raise errors.InputError(f"data.source must be 'prepared' or 'tfds', got "
                          f'{data_config.source!r}')


def _prepare_again(folder: str, description: dict[str, Any]) -> str:
  """The commands that make the prepared dataset in `folder` again, as it was made."""
  options = f' --image_size={description["image_size"]}'
  if description.get('jpeg_quality', 95) != 95:
    options += f' --jpeg_quality={description["jpeg_quality"]}'
  return (f'delete {folder} and run python -m alexnet_jax.prepare '
          f'--source={description.get("source", "SRC")} --output={folder}{options} (the same '
          'source gives the same dataset, so the run resumes unchanged)')


@dataclasses.dataclass(frozen=True, eq=False)
class NamedShards:
  """The records of a prepared split, whose read errors name the damaged shard file.

  array_record reports a damaged file ("Corrupted Riegeli/records file", a bad
  checksum) without its name; this says which shard it was and how to make it
  again. Picklable, for grain's worker processes.
  """
  records: Any  # grain.sources.ArrayRecordDataSource over `paths`
  paths: tuple[str, ...]
  ends: tuple[int, ...]  # cumulative record counts: shard i holds [ends[i-1], ends[i])
  fix: str  # what to do about a damaged shard

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> bytes:
    try:
      return self.records[index]
    except RuntimeError as e:
      shard = self.paths[min(int(np.searchsorted(self.ends, index, side='right')),
                             len(self.paths) - 1)]
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise errors.InputError(f'{shard} is damaged ({reason[:200]}); prepare the dataset '
                              f'again: {self.fix}') from e


def mean_for_config(info: DatasetInfo,
                    data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The `mean_image` argument of `preprocess.normalize`: (S, S, 3) or per channel (3,).

  data.mean is 'pixel' or 'channel' (config_lib.validate checks it).
  """
  if data_config.mean == 'pixel':
    return info.mean_image
  return preprocess.channel_mean_image(info.mean_image)


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
  """Full global batches per pass over the train split (0 if the batch is larger).

  The train stream is endless, so the remainder of one epoch starts the next batch.
  """
  return info.split_sizes['train'] // global_batch_size


# ----------------------------------------------------------------------------------
# Per-record transforms (module level and frozen: picklable for worker processes).


def _stored_image(data: bytes, image_size: int, resize: bool) -> np.ndarray:
  if resize:
    return decoding.decode_and_resize(data, image_size)
  image = decoding.decode(data)
  if image.shape != (image_size, image_size, 3):
    raise errors.InputError(f'stored image is {image.shape}, expected '
                            f'({image_size}, {image_size}, 3)')
  return image


@dataclasses.dataclass(frozen=True, eq=False)
class TrainTransform:
  """Record -> one augmented training example (uint8 crop and its parameters)."""
  parse: Callable[[Any], tuple[bytes, int]]
  resize: bool
  image_size: int
  crop_size: int
  flip: bool
  lighting_std: float
  eigvals: np.ndarray
  eigvecs: np.ndarray
  random_crop: bool = True  # False: the central crop, as evaluation cuts it

  def __call__(self, record: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    data, label = self.parse(record)
    image = _stored_image(data, self.image_size, self.resize)
    if self.random_crop:
      top, left = augment.random_crop_offsets(rng, self.image_size, self.crop_size)
    else:
      top, left = augment.center_crop_offsets(self.image_size, self.crop_size)
    flip = self.flip and augment.random_flip(rng)
    return {
        'image': augment.crop_and_flip(image, top, left, self.crop_size, flip),
        'crop': np.array([top, left], np.int32),
        'flip': np.bool_(flip),
        'lighting': augment.lighting_shift(rng, self.eigvals, self.eigvecs,
                                           self.lighting_std),
        'label': np.int32(label),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class EvalTransform:
  """Padded index -> the eval views of that record (or of a blank image past the end)."""
  records: Any
  parse: Callable[[Any], tuple[bytes, int]]
  resize: bool
  num_records: int
  image_size: int
  crop_size: int
  views: tuple[tuple[int, int, bool], ...]

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    real = index < self.num_records
    if real:
      data, label = self.parse(self.records[index])
      image = _stored_image(data, self.image_size, self.resize)
    else:
      image, label = np.zeros((self.image_size, self.image_size, 3), np.uint8), 0
    return {
        'image': np.stack([augment.crop_and_flip(image, t, l, self.crop_size, f)
                           for t, l, f in self.views]),
        'crop': np.array([(t, l) for t, l, _ in self.views], np.int32),
        'flip': np.array([f for _, _, f in self.views], bool),
        'lighting': np.zeros((len(self.views), 3), np.float32),
        'label': np.int32(label),
        'mask': np.bool_(real),
    }


# ----------------------------------------------------------------------------------
# Datasets and iterators.


def _processes(process_index: int | None,
               process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} is not in [0, {count})')
  return index, count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not a positive '
                     f'multiple of the process count {process_count}')
  return global_batch_size // process_count


class ProcessBlocks(grain.MapDataset):
  """Process `index`'s rows of each global batch: the contiguous block
  [index * b, (index + 1) * b) of every run of `global_batch` elements, b = global / count.

  Contiguous, not strided, because `jax.make_array_from_process_local_data`
  places process p's rows at that block of the global batch: a multi-process
  step then sees exactly the batch (order included, so dropout masks too) of a
  single process.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._local, self._index = global_batch, global_batch // count, index
    self._length = len(parent) // global_batch * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, i: int) -> int:
    batch, row = divmod(i, self._local)
    return batch * self._global + self._index * self._local + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return f'ProcessBlocks(global_batch={self._global}, index={self._index})'


def make_train_dataset(source: RecordSource, *, image_size: int, crop_size: int,
                       flip: bool, lighting_std: float, eigvals: np.ndarray,
                       eigvecs: np.ndarray, global_batch_size: int, seed: int,
                       process_index: int, process_count: int,
                       random_crop: bool = True) -> grain.MapDataset:
  """The infinite train MapDataset of one process: batches of uint8 crops.

  random_crop=False trains on the central crop (flips and lighting still apply).
  """
  local_batch = _local_batch(global_batch_size, process_count)
  # Explicit seeds, so adding a step to the chain never changes the data order.
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  transform = TrainTransform(
      parse=source.parse, resize=source.resize, image_size=image_size,
      crop_size=crop_size, flip=flip, lighting_std=float(lighting_std),
      eigvals=np.asarray(eigvals, np.float32), eigvecs=np.asarray(eigvecs, np.float32),
      random_crop=bool(random_crop))
  return (grain.MapDataset.source(source.records)
          .shuffle(seed=int(shuffle_seed))  # Reseeded per epoch by repeat().
          .repeat()
          .random_map(transform, seed=int(augment_seed))
          .pipe(ProcessBlocks, global_batch_size, process_index, process_count)
          .batch(local_batch, drop_remainder=True))


def make_eval_dataset(source: RecordSource, *, image_size: int, crop_size: int,
                      crops: int, global_batch_size: int, process_index: int,
                      process_count: int) -> grain.MapDataset:
  """The finite eval MapDataset of one process over the whole split, padded."""
  local_batch = _local_batch(global_batch_size, process_count)
  if crops == 1:
    views = ((*augment.center_crop_offsets(image_size, crop_size), False),)
  elif crops == 10:
    views = tuple(augment.ten_crop_views(image_size, crop_size))
  else:
    raise ValueError(f'crops must be 1 (center) or 10 (the paper\'s views), got {crops}')
  num_records = len(source.records)
  padded = math.ceil(num_records / global_batch_size) * global_batch_size
  transform = EvalTransform(
      records=source.records, parse=source.parse, resize=source.resize,
      num_records=num_records, image_size=image_size, crop_size=crop_size, views=views)
  return (grain.MapDataset.range(padded)
          .pipe(ProcessBlocks, global_batch_size, process_index, process_count)
          .map(transform)
          .batch(local_batch))


def _iterator(dataset: grain.MapDataset,
              data_config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  threads = int(data_config.num_threads)
  # Elements are whole batches: each thread builds one, `prefetch` wait ready.
  read = grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(int(data_config.prefetch), threads))
  iter_dataset = dataset.to_iter_dataset(read)
  if data_config.worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags when starting workers; outside `app.run` (tests,
      # notebooks) accept their defaults instead of failing.
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(data_config.worker_count),
        per_worker_buffer_size=max(int(data_config.prefetch), 1)))
  return iter(iter_dataset)


def create_train_iterator(data_config: ml_collections.ConfigDict, *,
                          global_batch_size: int, seed: int,
                          process_index: int | None = None,
                          process_count: int | None = None,
                          start: int = 0) -> grain.DatasetIterator:
  """Endless, checkpointable (get_state/set_state) iterator of train batches.

  Every epoch is a fresh global permutation; batch k of process p is the same in
  every run and for any num_threads / worker_count. Local batch k holds process p's
  rows of global batch k for every process count (ProcessBlocks), so `start` (the
  global batches already read, as a checkpoint stores it) resumes the same global
  sequence with any number of processes: the first batch is batch `start`.
  """
  if not isinstance(start, int) or isinstance(start, bool) or start < 0:
    raise ValueError(f'start must be an integer >= 0, got {start!r}')
  info = load_info(data_config)
  index, count = _processes(process_index, process_count)
  dataset = make_train_dataset(
      open_split(data_config, 'train'), image_size=info.image_size,
      crop_size=data_config.crop_size, flip=data_config.flip,
      lighting_std=data_config.lighting_std, eigvals=info.eigvals,
      eigvecs=info.eigvecs, global_batch_size=global_batch_size, seed=seed,
      process_index=index, process_count=count,
      random_crop=data_config.get('random_crop', True))  # absent from runs stored before it
  # A slice of the MapDataset, not set_state: the same for threads and worker processes,
  # whose iterator states depend on the worker count.
  return _iterator(dataset[start:] if start else dataset, data_config)


def create_eval_iterator(data_config: ml_collections.ConfigDict, split: str = 'val', *,
                         global_batch_size: int, crops: int = 1,
                         process_index: int | None = None,
                         process_count: int | None = None) -> grain.DatasetIterator:
  """Iterator over the whole split once; every example has mask True exactly once
  across processes, padding has mask False. All processes get the same number of
  batches: ceil(split size / global_batch_size)."""
  index, count = _processes(process_index, process_count)
  dataset = make_eval_dataset(
      open_split(data_config, split), image_size=data_config.image_size,
      crop_size=data_config.crop_size, crops=crops,
      global_batch_size=global_batch_size, process_index=index, process_count=count)
  return _iterator(dataset, data_config)
