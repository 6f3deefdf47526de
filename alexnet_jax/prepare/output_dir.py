"""The output folder's lifecycle: checks, the lock, the work folder, the no-op answer.

A folder is ours when it is empty or holds only files a preparation writes; its
lock serialises preparations of it; `_partial/` holds the finished parts of an
unfinished preparation, kept for a rerun with the same settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from typing import Any, Iterator

from absl import logging

from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.data import prepared_format
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import shards
from alexnet_jax.prepare import tars

PARTIAL_DIR = '_partial'
LOCK_FILE = '.prepare.lock'
_SHARD_RE = re.compile(r'(train|val)\.array_record-\d{5}-of-\d{5}')
# The raw storage's files, and a join's file before its rename.
_RAW_RE = re.compile(r'(train|val)\.(u8|u8\.tmp|labels\.npy)|\.(train|val)\.labels\.npy\..+')


STORAGES = ('jpeg', 'raw')


def checked_output(source: str, output: str, jpeg_quality: int, storage: str = 'jpeg') -> str:
  """The output folder as an absolute path (a symlink's target), once it, the JPEG quality
  and the storage are usable: fileio's rule for every output path, checked before any work."""
  if storage not in STORAGES:
    raise errors.InputError(f'--format must be {" or ".join(STORAGES)}, got {storage!r}')
  if not 1 <= jpeg_quality <= 100:
    raise errors.InputError(f'jpeg_quality must be in 1..100, got {jpeg_quality}')
  output = fileio.check_output_folder(output, '--output')
  _check_outside(source, output)
  return output


def _check_outside(source: str, output: str) -> None:
  """Refuses an output folder inside the source: it would be read as part of the source."""
  if source in ('digits', 'tfds') or not os.path.isdir(source):
    return
  root = os.path.realpath(source)
  target = os.path.realpath(output)
  if target == root or target.startswith(root + os.sep):
    raise errors.InputError(
        f'--output {output} is inside the source {os.path.abspath(source)}; prepare into a '
        'folder outside it (inside, it would be read as part of the source)')


def _is_ours(name: str) -> bool:
  """Whether a file in an output folder may come from an unfinished preparation."""
  if name in (PARTIAL_DIR, LOCK_FILE) or _SHARD_RE.fullmatch(name) or _RAW_RE.fullmatch(name):
    return True
  # A killed write leaves its temporary file: '.<name>.<random>' from
  # fileio.atomic_write, '<name>.tmp' from earlier versions.
  return any(name in (final, final + '.tmp') or name.startswith(f'.{final}.')
             for final in (prepared_format.DATASET_FILE, prepared_format.STATS_FILE))


def check_usable(output: str) -> None:
  """Refuses an output folder that holds files no preparation wrote."""
  foreign = sorted(name for name in os.listdir(output) if not _is_ours(name))
  if foreign:
    raise errors.InputError(
        f'output folder {output} is not empty and holds no prepared dataset (found '
        f'{", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}); choose a new '
        'or empty folder')


@contextlib.contextmanager
def locked(output: str) -> Iterator[None]:
  """Serialises preparations of one folder (e.g. several processes of one job)."""
  with open(os.path.join(output, LOCK_FILE), 'a') as f:  # 'a': leaves mtimes alone.
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def noop_report(output: str, description: dict[str, Any], image_size: int,
                source: str, storage: str | None = 'jpeg') -> dict[str, Any]:
  """The report of a rerun on a complete `output`, once it matches the request (storage
  None: either storage)."""
  stored = prepared_format.storage(description)
  if storage is not None and stored != storage:
    raise errors.InputError(
        f'{output} already holds a dataset prepared with --format={stored}, not '
        f'--format={storage}; prepare into another folder')
  if description['image_size'] != image_size:
    raise errors.InputError(
        f'{output} already holds a dataset prepared at image_size '
        f'{description["image_size"]}, not {image_size}; prepare into another folder')
  if source != description['source'] and os.path.abspath(source) != description['source']:
    logging.warning('%s was prepared from %s, not %s; using it as it is', output,
                    description['source'], source)
  elif description.get('source_files') is not None and os.path.isdir(source):
    _check_same_tars(output, description, tars.source_files(os.path.abspath(source)))
  return dict(description['report'], output=output, noop=True)


def _check_same_tars(output: str, description: dict[str, Any],
                     now: dict[str, int | None]) -> None:
  """Refuses to call `output` complete when the tars it was prepared from have changed
  (a cut copy replaced by the whole file, another subset): it describes the old ones.

  A tar deleted since (the prepared data is all a run reads) is no change.
  """
  then = description['source_files']
  size = lambda n: 'absent' if n is None else f'{n:,} bytes'
  changed = [f'{name}: {size(then.get(name))} then, {size(now[name])} now'
             for name in now if now[name] is not None and then.get(name) != now[name]]
  if changed:
    raise errors.InputError(
        f'{output} was prepared from other files in {description["source"]} than those there '
        f'now ({"; ".join(changed)}): prepare the new files into another folder, or delete '
        f'{output} and prepare again')


def open_work_dir(work_dir: str, run: dict[str, Any]) -> None:
  """Creates the folder of unfinished parts, emptied first if it holds another preparation's."""
  run_file = os.path.join(work_dir, 'run.json')
  if os.path.isdir(work_dir):
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError), open(run_file) as f:
      if json.load(f) != run:
        logging.info('restarting: %s holds parts of another preparation', work_dir)
        shutil.rmtree(work_dir)
  try:
    os.makedirs(work_dir, exist_ok=True)
    shards.write_json(run_file, run)
  except OSError as e:
    raise shards.write_error(run_file, e) from e


def part_done(work_dir: str, part: parts.Part) -> bool:
  """Whether `part` is finished in `work_dir`: its .json, written last, is there."""
  return os.path.isfile(os.path.join(work_dir, part.name + '.json'))


def remove_unfinished(output: str, created: bool) -> None:
  """Removes a preparation's files (its work folder and lock; the folder if it made it)."""
  shutil.rmtree(os.path.join(output, PARTIAL_DIR), ignore_errors=True)
  with contextlib.suppress(OSError):
    os.remove(os.path.join(output, LOCK_FILE))
  if created:
    with contextlib.suppress(OSError):
      os.rmdir(output)
