"""Which storage and how many loader threads or worker processes feed the planned step.

Part of `--dry_run`: the images/s the step takes from one process, against what the
host's cores deliver from each storage at the measured CPU cost per image
(docs/design.md, "Feeding the step"). JPEG records are decoded in worker processes;
raw pixels are gathered by threads. Input slower than the step makes the step wait
for the missing share of the time: 1 - supply / need.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections

from alexnet_jax.config import resolution
from alexnet_jax.data import prepared_format

# Measured CPU cost per image (docs/design.md, "Feeding the step").
JPEG_IMAGES_PER_CORE_SECOND = 2_000  # a worker process end to end: decode, grain, hand-off
RAW_IMAGES_PER_CORE_SECOND = 15_000  # a gather thread's crop copies: the low end of 15-30k
JPEG_MAIN_US_PER_IMAGE = 25  # the main process receiving worker batches: its own cap
RAW_FORMAT_PREFIX = prepared_format.RAW_FORMAT_PREFIX  # dataset.json's format of raw storage
STORAGES = ('jpeg', 'raw')


def host_cores() -> tuple[int, str]:
  """The cores this process may run on, and where the number came from."""
  try:
    return len(os.sched_getaffinity(0)), "this machine's cores this process may use"
  except (AttributeError, OSError):  # macOS: no affinity
    return os.cpu_count() or 1, "this machine's cores"


def dataset_storage(data_config: ml_collections.ConfigDict) -> str | None:
  """'raw' or 'jpeg', as the prepared dataset's description names it; None: none to read.

  A description without a format of raw storage is of JPEG shards, as is tfds' ImageNet.
  """
  if data_config.source != 'prepared':
    return 'jpeg'
  path = os.path.join(str(data_config.dir or ''), 'dataset.json')
  try:
    with open(path) as f:
      found = json.load(f).get('format', '')
  except (OSError, ValueError, AttributeError):
    return None
  return 'raw' if str(found).startswith(RAW_FORMAT_PREFIX) else 'jpeg'


def supply(storage: str, loaders: int) -> float:
  """Images/s `loaders` threads (raw) or worker processes (jpeg) deliver to one process."""
  if storage == 'raw':
    return loaders * RAW_IMAGES_PER_CORE_SECOND
  return min(loaders * JPEG_IMAGES_PER_CORE_SECOND, 1e6 / JPEG_MAIN_US_PER_IMAGE)


def loaders_needed(storage: str, need: float, cores: int) -> int:
  """The threads (raw) or worker processes (jpeg) that keep up with `need`, at most `cores`
  (and for jpeg, no more than the main process can receive from)."""
  if storage == 'raw':
    return max(1, min(cores, math.ceil(need / RAW_IMAGES_PER_CORE_SECOND)))
  need = min(need, 1e6 / JPEG_MAIN_US_PER_IMAGE)
  return max(1, min(cores, math.ceil(need / JPEG_IMAGES_PER_CORE_SECOND)))


def wait_share(supply_rate: float, need: float) -> float:
  """The share of the time a step that takes `need` images/s waits for `supply_rate`."""
  return max(0.0, 1.0 - supply_rate / need)


@dataclasses.dataclass(frozen=True)
class FeedPlan:
  """The storage a run reads, the host's cores, and the step's need, for one process."""
  storage: str  # 'jpeg' or 'raw'
  storage_from: str
  cores: int
  cores_from: str
  need: float  # images/s the step takes from one process
  need_from: str
  to_raw: str = 'prepare with --format=raw'  # how this run would get a raw dataset

  def _option(self, storage: str) -> str:
    loaders = loaders_needed(storage, self.need, self.cores)
    kind = 'thread' if storage == 'raw' else 'worker process'
    kind += ('es' if kind.endswith('s') else 's') if loaders > 1 else ''
    rate = supply(storage, loaders)
    waits = wait_share(rate, self.need)
    verdict = f'the step waits ~{waits:.0%} of the time' if waits > 0 else 'keeps up'
    return f'{storage} on {loaders} {kind} feeds ~{rate:,.0f} images/s: {verdict}'

  def describe(self) -> list[str]:
    """The dry run's lines: the storage read, then what each storage would do."""
    other = 'raw' if self.storage == 'jpeg' else 'jpeg'
    lines = [f'input: {self.storage} storage ({self.storage_from}); the step wants '
             f'~{self.need:,.0f} images/s per process ({self.need_from}); {self.cores} cores '
             f'({self.cores_from})',
             f'  {self._option(self.storage)}']
    if wait_share(supply(self.storage, loaders_needed(self.storage, self.need, self.cores)),
                  self.need) > 0:
      advice = f'; {self.to_raw}' if other == 'raw' else ''
      lines.append(f'  {self._option(other)}{advice}')
    return lines


def _need(feeding: resolution.Feeding, global_batch: int, images_per_sec: float | None,
          speed_note: str) -> tuple[float, str]:
  """Images/s the step takes from one process: its share of the given speed, else the
  measured step rate at its batch per device (resolution.feeding)."""
  if images_per_sec is None:
    return feeding.need, f'the measured step rate at {feeding.batch_per_device} per device'
  return (images_per_sec * feeding.batch_per_process / global_batch,
          f"{speed_note}, this process's share")


def plan_feed(data_config: ml_collections.ConfigDict, feeding: resolution.Feeding, *,
              global_batch: int, images_per_sec: float | None, speed_note: str = '',
              cores: int | None = None) -> FeedPlan:
  """The FeedPlan of a run: `cores` per process (--plan_host_cores; default this
  machine's), the step at `images_per_sec` for the whole job (default: measured)."""
  if cores is None:
    cores, cores_from = host_cores()
  else:
    cores_from = '--plan_host_cores'
  need, need_from = _need(feeding, global_batch, images_per_sec, speed_note)
  storage = dataset_storage(data_config)
  storage_from = f'dataset.json of {data_config.dir}'
  if data_config.source != 'prepared':
    storage_from = f'{data_config.source}: full-size JPEGs, decoded and resized'
  elif storage is None and data_config.get('prepare_from'):
    storage, storage_from = data_config.storage, 'config.data.storage, which prepare_from writes'
  elif storage is None:
    storage, storage_from = 'jpeg', "no dataset.json to read here: prepare's default"
  to_raw = ("set config.data.storage='raw' (prepare_from then prepares a data.dir without a dataset)"
            if data_config.get('prepare_from') else 'prepare with --format=raw')
  return FeedPlan(storage, storage_from, int(cores), cores_from, float(need), need_from, to_raw)
