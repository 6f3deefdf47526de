"""Where records come from: one class per dataset source, picked by config.data.source.

'prepared': what `python -m alexnet_jax.prepare` writes in data.dir, ArrayRecord
shards of JPEGs or (--format=raw) memory-mapped pixels; dataset.json says which.
'tfds': tensorflow-datasets' imagenet2012 in ArrayRecord format under data.dir (its
data_dir), read in place; full-size JPEGs are resized on the fly as prepare resizes.
`create_source` is the one place the choice is made; each source imports its reader
(grain, tensorflow_datasets) only when it opens records.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from typing import Any, Callable, NamedTuple

from absl import logging
import ml_collections
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.data import raw_format
from alexnet_jax.data.dataset_info import DatasetInfo

# Widely used ImageNet statistics of pixels in [0, 1] (docs/design.md, "Augmentation").
IMAGENET_CHANNEL_MEAN = (0.485, 0.456, 0.406)
IMAGENET_EIGVALS = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVECS = ((-0.5675, 0.7192, 0.4009),
                    (-0.5808, -0.0045, -0.8140),
                    (-0.5836, -0.6948, 0.4203))
TFDS_NAME = 'imagenet2012'
TFDS_SPLITS = {'train': 'train', 'val': 'validation'}  # ours -> tfds' split names


@dataclasses.dataclass(frozen=True)
class RecordSource:
  """Random-access records, how to read (image, label) from one, and whether the
  images still need the resize to image_size (True for full-size JPEGs). The image
  is encoded bytes, or uint8 (S, S, 3) pixels from the raw storage (not decoded)."""
  records: Any
  parse: Callable[[Any], tuple[bytes | np.ndarray, int]]
  resize: bool


def _check_split(split: str) -> None:
  if split not in TFDS_SPLITS:
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


class Source(abc.ABC):
  """A dataset named by a data config: its description and the records of a split."""

  def __init__(self, data_config: ml_collections.ConfigDict):
    self.config = data_config

  @abc.abstractmethod
  def info(self) -> DatasetInfo:
    """Classes, split sizes and training statistics."""

  def split(self, split: str) -> RecordSource:
    """The records of `split` ('train' or 'val')."""
    _check_split(split)
    return self._open(split)

  @abc.abstractmethod
  def _open(self, split: str) -> RecordSource:
    """The records of a checked split name."""


def absolute_data_dir(given: str, stored: str | None) -> tuple[str, str]:
  """(the absolute data.dir a run uses, a line to log or ''): a relative data.dir is fixed once.

  given: config.data.dir as configured ('data/digits' in configs/digits.py, relative
  to the current directory). stored: the absolute data.dir the run in the workdir
  started with (its config.json), None for a new run. A relative folder resolves
  against the current directory at the start of a run and is stored absolute; a
  resume from another directory uses the stored folder while it still holds a finished
  dataset (instead of preparing the data again there), and says so in one line. An
  absolute data.dir is always taken as given.
  """
  if not given or os.path.isabs(given):
    return given, ''
  here = os.path.abspath(given)
  if (stored and os.path.isabs(stored) and stored != here and
      prepared_format.is_complete(stored)):
    return stored, (f'config.data.dir {given} is relative: resuming on the dataset this run '
                    f'started with, {stored} (from here it would be {here}); give an absolute '
                    'config.data.dir to use another folder')
  return here, ''


# ----------------------------------------------------------------------------------
# 'prepared': the output of python -m alexnet_jax.prepare.


class PreparedSource(Source):
  """Shards, dataset.json and statistics written by `python -m alexnet_jax.prepare`."""

  @functools.cached_property
  def description(self) -> dict[str, Any]:
    """dataset.json of the complete dataset in data.dir, at the configured image_size."""
    folder = self.config.dir
    missing = prepared_format.what_is_missing(folder) if folder else prepared_format.NOT_PREPARED
    if missing:
      raise errors.MissingInputError(
          f'{folder or "(config.data.dir is empty)"} holds no complete prepared dataset '
          f'({missing}); run: python -m alexnet_jax.prepare {_prepare_options(folder)} (or set '
          'config.data.prepare_from)')
    description = prepared_format.read_dataset_json(folder)
    if description['image_size'] != self.config.image_size:
      raise errors.InputError(
          f'{folder} was prepared at image_size {description["image_size"]} but '
          f'config.data.image_size is {self.config.image_size}')
    return description

  def info(self) -> DatasetInfo:
    description = self.description
    stats_path = os.path.join(self.config.dir, prepared_format.STATS_FILE)
    mean_image, eigvals, eigvecs = prepared_format.read_stats(stats_path)
    return DatasetInfo(
        num_classes=description['num_classes'],
        class_names=tuple(description['class_names']),
        class_descriptions=tuple(description['class_descriptions']),
        split_sizes=dict(description['splits']),
        image_size=self.config.image_size,
        mean_image=mean_image,
        eigvals=eigvals,
        eigvecs=eigvecs,
        stats_source=stats_path)

  def _open(self, split: str) -> RecordSource:
    import grain  # Only reading records needs it, not the description.

    folder, description = self.config.dir, self.description
    if prepared_format.storage(description) == 'raw':
      return _raw_records(folder, description, split)
    shards = description['shards'][split]
    if not shards:
      raise errors.InputError(f'the {split} split of {folder} is empty')
    # "path[0:n]" tells grain the record count, so no shard is opened up front.
    paths = [f'{os.path.join(folder, name)}[0:{count}]' for name, count in shards]
    records = NamedShards(grain.sources.ArrayRecordDataSource(paths),
                          tuple(os.path.join(folder, name) for name, _ in shards),
                          tuple(np.cumsum([count for _, count in shards]).tolist()),
                          prepare_again(folder, description))
    return RecordSource(records, prepared_format.decode_record, resize=False)


def _prepare_options(folder: str) -> str:
  """The prepare options that make `folder` again, as far as its unusable dataset.json says:
  '--source=SRC --output=DIR', with its source and ' --format=raw' when they are known."""
  source, raw = 'SRC', False
  try:
    with open(os.path.join(folder, prepared_format.DATASET_FILE)) as f:
      description = json.load(f)
    raw = str(description.get('format', '')).startswith(prepared_format.RAW_FORMAT_PREFIX)
    source = str(description.get('source') or source) if raw else source
  except (OSError, ValueError, AttributeError):
    pass
  return f'--source={source} --output={folder or "DIR"}{" --format=raw" if raw else ""}'


def _raw_records(folder: str, description: dict[str, Any], split: str) -> RecordSource:
  """The records of a raw split: its memory-mapped images, each with its label, not decoded."""
  if not description['raw'][split]['count']:
    raise errors.InputError(f'the {split} split of {folder} is empty')
  opened = raw_format.open_raw_split(folder, split)  # the cheap checks, before any worker starts
  records = raw_format.RawRecords(folder, split, len(opened.labels))
  return RecordSource(records, raw_format.parse_record, resize=False)


prepare_again = prepared_format.prepare_again  # the commands that make a dataset again


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
      raise damaged_shard(shard, e, self.fix) from e


def damaged_shard(shard: str, error: Exception, fix: str) -> errors.InputError:
  """The one line for a shard whose records do not read back (`fix`: prepare_again's)."""
  reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return errors.InputError(f'{shard} is damaged ({reason[:200]}); prepare the dataset again: '
                           f'{fix}')


# ----------------------------------------------------------------------------------
# 'tfds': tensorflow-datasets' imagenet2012, read in place.


class TfdsImagenet(NamedTuple):
  """An opened tfds imagenet2012: its builder and the records of one split."""
  builder: Any  # tfds.core.DatasetBuilder
  records: Any  # random-access tfds data source; examples hold undecoded JPEG bytes


def _tfds_builder(data_dir: str) -> Any:
  import tensorflow_datasets as tfds  # Slow to import; only this source needs it.

  builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
  if not builder.is_prepared():
    raise errors.MissingInputError(
        f'no prepared tfds {TFDS_NAME} under {data_dir} ({builder.data_dir} is '
        'missing); prepare it with tfds in ArrayRecord format, or use source=prepared '
        'with python -m alexnet_jax.prepare')
  if builder.info.file_format.value != 'array_record':
    raise errors.InputError(
        f'{builder.data_dir} is in {builder.info.file_format.value} format; random '
        'access needs array_record (tfds build --file_format=array_record)')
  return builder


def _tfds_records(builder: Any, data_dir: str, split: str) -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if TFDS_SPLITS[split] not in builder.info.splits:
    raise errors.InputError(f'{builder.data_dir} has no {TFDS_SPLITS[split]} split')
  return tfds.data_source(
      TFDS_NAME, split=TFDS_SPLITS[split], data_dir=data_dir, download=False,
      decoders={'image': tfds.decode.SkipDecoding()})


def open_tfds_imagenet(data_dir: str, split: str = 'train') -> TfdsImagenet:
  """tfds' imagenet2012 under the tfds `data_dir`, and the records of `split` ('train'
  or 'val'), whose examples hold the undecoded JPEG ('image') and the label.

  Raises a one-line MissingInputError if it is not prepared there, InputError if it
  is not in ArrayRecord format or lacks the split.
  """
  _check_split(split)
  builder = _tfds_builder(data_dir)
  return TfdsImagenet(builder, _tfds_records(builder, data_dir, split))


def parse_tfds_example(example: dict[str, Any]) -> tuple[bytes, int]:
  """(JPEG bytes, label) of a tfds imagenet2012 example read with SkipDecoding."""
  return example['image'], int(example['label'])


class TfdsImagenetSource(Source):
  """tfds' imagenet2012 in ArrayRecord format under data.dir (the tfds data_dir).

  Its mean image and PCA come from `alexnet_jax_stats_<image_size>.npz` in that folder
  when present (`python -m alexnet_jax.prepare --source=tfds --output=<data_dir>`
  writes it), else from the ImageNet constants: the per-channel mean filled into a
  mean image, and the widely used eigen-decomposition of ImageNet's RGB covariance.
  """

  @functools.cached_property
  def builder(self) -> Any:
    if not self.config.dir:
      raise errors.InputError("source='tfds' needs config.data.dir: the tfds data_dir that "
                              f'holds {TFDS_NAME}/')
    return _tfds_builder(self.config.dir)

  def _statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean image, eigvals, eigvecs and where they come from."""
    size = self.config.image_size
    stats_path = prepared_format.tfds_stats_file(self.config.dir, size)
    if os.path.isfile(stats_path):
      return (*prepared_format.read_stats(stats_path), stats_path)
    logging.warning(
        '%s not found: using the ImageNet per-channel mean and PCA constants '
        '(python -m alexnet_jax.prepare --source=tfds --output=%s computes the '
        'per-pixel mean)', stats_path, self.config.dir)
    mean_image = np.broadcast_to(np.float32(IMAGENET_CHANNEL_MEAN) * 255, (size, size, 3))
    return (mean_image.copy(), np.float32(IMAGENET_EIGVALS), np.float32(IMAGENET_EIGVECS),
            'imagenet_constants')

  def info(self) -> DatasetInfo:
    info = self.builder.info
    mean_image, eigvals, eigvecs, stats_source = self._statistics()
    names = tuple(info.features['label'].names)
    return DatasetInfo(
        num_classes=len(names),
        class_names=names,
        class_descriptions=names,
        split_sizes={ours: info.splits[theirs].num_examples
                     for ours, theirs in TFDS_SPLITS.items() if theirs in info.splits},
        image_size=self.config.image_size,
        mean_image=np.asarray(mean_image, np.float32),
        eigvals=np.asarray(eigvals, np.float32),
        eigvecs=np.asarray(eigvecs, np.float32),
        stats_source=stats_source)

  def _open(self, split: str) -> RecordSource:
    records = _tfds_records(self.builder, self.config.dir, split)
    return RecordSource(records, parse_tfds_example, resize=True)


# ----------------------------------------------------------------------------------
# The factory.

SOURCES: dict[str, type[Source]] = {'prepared': PreparedSource, 'tfds': TfdsImagenetSource}


def create_source(data_config: ml_collections.ConfigDict) -> Source:
  """The source that data.source names, for data.dir; an unknown name is refused."""
  source = SOURCES.get(data_config.source)
  if source is None:
    raise errors.InputError(f'data.source must be {" or ".join(map(repr, SOURCES))}, got '
                            f'{data_config.source!r}')
  return source(data_config)


def load_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Reads classes, split sizes and training statistics of the configured dataset."""
  return create_source(data_config).info()


def open_split(data_config: ml_collections.ConfigDict, split: str) -> RecordSource:
  """The records of `split` ('train' or 'val') of the configured dataset."""
  _check_split(split)
  return create_source(data_config).split(split)
