"""A whole preparation: `prepare` and `ensure_prepared`, from the checks to dataset.json.

The source is read and its work listed before anything is written; the parts not
yet done are converted under the output folder's lock, then finished into the
final layout. A damaged source found while converting leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from absl import logging

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.prepare import finish
from alexnet_jax.prepare import labels
from alexnet_jax.prepare import output_dir
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import pool
from alexnet_jax.prepare import progress_line
from alexnet_jax.prepare import raw_storage
from alexnet_jax.prepare import shards
from alexnet_jax.prepare import sources
from alexnet_jax.prepare import tfds_stats


def _check_request(source: str, output: str, image_size: int, storage: str) -> None:
  """Raises errors.InputError for arguments no source could be prepared with."""
  if image_size < 8:
    raise errors.InputError(f'image_size must be at least 8, got {image_size}')
  if not output:
    raise errors.InputError('no output folder given: pass --output=DIR')
  if source == 'tfds' and storage != 'jpeg':
    # tfds' imagenet2012 is read in place, its JPEGs decoded per record: there is nothing
    # of it to store raw, and computing its statistics alone would pass for a raw dataset.
    raise errors.InputError(
        f'--source=tfds is read in place as JPEG, not converted, so --format={storage} does '
        'not apply; for raw storage prepare from the official tars or an ImageFolder')


def prepare(source: str, output: str, *, image_size: int = 256, strict: bool = False,
            workers: int = 1, jpeg_quality: int = 95, progress: bool = True,
            storage: str = 'jpeg', verify: bool = False) -> dict[str, Any]:
  """Prepares `source` into `output` (`python -m alexnet_jax.prepare --help`); returns the report.

  A complete `output` is left as it is (report['noop'] is True). An incomplete one from
  an interrupted run with the same settings is resumed; one with others is restarted.

  Args:
    source: official-tars folder, ImageFolder root, or 'digits'.
    output: the folder to fill; created if needed; must be empty or ours.
    image_size: side of the stored square images.
    strict: raise on the first undecodable image instead of skipping it.
    workers: processes converting parts in parallel (1: in this process).
    jpeg_quality: quality of the re-encoded JPEGs.
    progress: print a progress line with ETA (and, for raw storage, the size to write).
    storage: 'jpeg' (ArrayRecord shards of JPEGs) or 'raw' (memory-mappable pixels).
    verify: when `output` is complete, read all of it back against its checksums
      (report['verified']: the images read) instead of only answering that it is.
  Raises errors.UserError (one line) for an unusable source or output.
  """
  _check_request(source, output, image_size, storage)
  workers = pool.checked_workers(workers)
  output = output_dir.checked_output(source, output, jpeg_quality, storage)
  if source == 'tfds':
    return tfds_stats.prepare_tfds_stats(output, image_size=image_size, workers=workers,
                                         progress=progress)
  description = prepared_format.read_dataset_json(output)
  if description is not None and prepared_format.is_complete(output):
    report = output_dir.noop_report(output, description, image_size, source, storage)
    if verify:
      report['verified'] = finish.verify_dataset(output, description)
    return report
  if os.path.isdir(output):
    output_dir.check_usable(output)  # before the lock file below lands in someone else's folder
  start = time.monotonic()
  work = sources.list_work(source)  # reads the source only: a source it refuses leaves no trace
  if strict and work.official is not None and not work.official['official_complete']:
    raise errors.InputError(
        f'{work.source} is not the complete official ILSVRC-2012 set: it holds '
        f'{labels.official_shortfall(work.official)}; --strict prepares only the complete set '
        '(run without --strict to prepare this part of it)')
  if storage == 'raw':
    raw_storage.check_room(output, work, image_size, progress)
  created = not os.path.isdir(output)
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:  # A file where a parent folder should be, no permission, ...
    raise errors.InputError(f'cannot create the output folder {output}: {e.strerror or e}') from e
  try:
    return _prepare_locked(work, output, _Settings(image_size, strict, workers, jpeg_quality,
                                                   progress, storage), source, start)
  except errors.DamagedSourceError:
    # The source turned out damaged while being converted: what was made from it is not kept.
    output_dir.remove_unfinished(output, created)
    raise


@dataclasses.dataclass(frozen=True)
class _Settings:
  """How `prepare` was asked to convert."""
  image_size: int
  strict: bool
  workers: int
  jpeg_quality: int
  progress: bool
  storage: str


def _prepare_locked(work: parts.Work, output: str, settings: _Settings, source: str,
                    start: float) -> dict[str, Any]:
  """The conversion itself, under the output folder's lock."""
  s = settings
  with output_dir.locked(output):
    description = prepared_format.read_dataset_json(output)
    if description is not None and prepared_format.is_complete(output):
      # Another process finished it while this one waited for the lock.
      return output_dir.noop_report(output, description, s.image_size, source, s.storage)
    output_dir.check_usable(output)
    work_dir = os.path.join(output, output_dir.PARTIAL_DIR)
    # The storage is named for raw only, so a JPEG preparation from before it resumes.
    output_dir.open_work_dir(work_dir, {'source': work.source, 'kind': work.kind,
                                        'source_files': work.source_files,
                                        'image_size': s.image_size,
                                        'jpeg_quality': s.jpeg_quality,
                                        'parts': [p.name for p in work.parts],
                                        **({'storage': 'raw'} if s.storage == 'raw' else {})})
    todo = [p for p in work.parts if not output_dir.part_done(work_dir, p)]
    if len(todo) < len(work.parts):
      logging.info('resuming: %d of %d parts already done', len(work.parts) - len(todo),
                   len(work.parts))
    try:
      _run_parts(todo, work_dir, s)
      return finish.finish_dataset(work, output, work_dir, s.image_size, s.jpeg_quality,
                                   s.workers, time.monotonic() - start, s.storage)
    except KeyboardInterrupt:
      finished = sum(output_dir.part_done(work_dir, p) for p in work.parts)
      raise errors.Interrupted(
          f'Ctrl-C; {finished} of {len(work.parts)} parts are finished and kept in {work_dir} '
          '(unfinished files removed): rerun the same command to continue') from None


def _run_parts(todo: list[parts.Part], work_dir: str, s: _Settings) -> None:
  bar = progress_line.ProgressLine(sum(p.weight for p in todo), len(todo), enabled=s.progress)
  tasks = [(p.weight, shards.run_part, p, work_dir, s.image_size, s.jpeg_quality, s.strict,
            s.storage) for p in todo]
  for _ in pool.execute(tasks, s.workers, bar):
    pass


def ensure_prepared(source: str, output: str, *, image_size: int = 256,
                    strict: bool = False, workers: int = 1,
                    jpeg_quality: int = 95, storage: str = 'jpeg') -> dict[str, Any]:
  """`prepare` for callers such as training.trainer: returns at once when `output` is complete.

  `storage` is the one a missing or unfinished dataset is prepared in. A complete `output`
  is used in the storage it has (readers take either), with a warning when that is the
  other one: it holds the same images, and preparing again would mean deleting it.

  Call it from one process per output folder or let the others wait: a file lock
  serialises concurrent calls, and the waiting ones then find the dataset complete.
  """
  description = prepared_format.read_dataset_json(output) if output else None
  if description is not None and prepared_format.is_complete(output):
    stored = prepared_format.storage(description)
    if stored != storage:
      logging.warning('%s holds a dataset in %s storage, not %s; using it as it is (prepare '
                      'into another folder for %s storage)', output, stored, storage, storage)
    return output_dir.noop_report(os.path.abspath(output), description, image_size, source,
                                  None)
  return prepare(source, output, image_size=image_size, strict=strict,
                 workers=workers, jpeg_quality=jpeg_quality, storage=storage)
