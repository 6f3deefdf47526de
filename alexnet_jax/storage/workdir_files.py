"""What a run keeps in its workdir besides checkpoints and metrics.

  WORKDIR/config.json         the resolved config, read back by predict, plot and resumes
  WORKDIR/config.py           the same as a config file: --config=WORKDIR/config.py reruns it
  WORKDIR/config_history.jsonl  the config changes resumes accepted, with the step of each
  WORKDIR/dataset_info.json   classes, split sizes, image size, PCA, stats source
  WORKDIR/mean_image.npy      float32 (S, S, 3) per-pixel training mean, 0-255 units
  WORKDIR/dataset_labels.npz  the labels of every split, in record order (fingerprint.py)
  WORKDIR/run.lock            while a run writes the workdir: who it is (lockfile.py)
  WORKDIR/run_record.jsonl    one line per start: code, packages, devices, host, command line

A checkpoint holds weights only; classifying a new image also needs what the
run saw of its dataset, so host 0 copies those facts here at the start of
training and predictions need no training data. Files are replaced atomically.

A resume is checked before it changes anything: the config field by field
(resume_changes.DECISIONS) and the dataset against dataset_info.json and its
fingerprint (classes, sizes, statistics and every split's labels). One run
at a time writes a workdir (`hold_lock`); predict, plot and evaluate only read and take
no lock (evaluate writes its results into WORKDIR/eval/ only).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pprint
import time
from typing import Any, Iterator, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from alexnet_jax.storage import checkpointing
from alexnet_jax.config import known_fields
from alexnet_jax.config import resume_changes
from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.data import fingerprint
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import lockfile

CONFIG_JSON = 'config.json'
CONFIG_PY = 'config.py'
CONFIG_HISTORY = 'config_history.jsonl'
LOCK_FILE = 'run.lock'


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, so a bad path fails before any compile."""
  try:
    fileio.ensure_writable_dir(workdir, f'.write_test_{jax.process_index()}')
  except OSError as e:
    raise errors.UserError(f'workdir {workdir!r} cannot be written: {e.strerror or e}') from e


# ----------------------------------------------------------------------------- the lock


def _lock_refusal(workdir: str, held: lockfile.LockHeld) -> str:
  age = '' if held.heartbeat_age is None else f', last heartbeat {held.heartbeat_age:.0f} s ago'
  who = held.holder.describe() if held.holder else 'a process still writing the lock file'
  return (f'the workdir {workdir} is in use by another run ({who}{age}; lock file {held.path}): '
          'two runs would overwrite each other\'s checkpoints and metrics. Wait for it to end or '
          f'use another --workdir; if that run is dead and its host unreachable, delete '
          f'{held.path} (a lock of a dead process on this host is taken over by itself, one of '
          f'another host after {lockfile.STALE_SECONDS:.0f} s without a heartbeat)')


def _lock_unusable(workdir: str) -> str:
  path = os.path.join(workdir, LOCK_FILE)
  return (f'{path} is not a regular file (a folder, link, FIFO or socket), so no run can lock '
          f'the workdir {workdir}: a run writes its lock file there. Move it away, or use '
          'another --workdir')


@contextlib.contextmanager
def hold_lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/run.lock for the block: one run writes a workdir at a time.

  Process 0 holds it for all processes of a run; every process learns whether it
  got it. A second run on a live workdir raises UserError naming the holder and
  changes nothing; a lock left by a dead run is taken over with a warning.
  """
  workdir = os.fspath(workdir)
  lock, refusal = None, None
  if jax.process_index() == 0:
    lock = lockfile.Lock(os.path.join(workdir, LOCK_FILE))
    try:
      gone = lock.acquire()
    except lockfile.LockUnusable:
      lock, refusal = None, _lock_unusable(workdir)
    except lockfile.LockHeld as held:
      lock, refusal = None, _lock_refusal(workdir, held)
    else:
      if gone is not None:
        logging.warning('Took over the lock of a run that ended without releasing it (%s); '
                        'it wrote nothing after its last complete checkpoint that counts.',
                        gone.describe())
  held_by_process_0 = refusal is None
  if jax.process_count() > 1:
    held_by_process_0 = bool(multihost_utils.broadcast_one_to_all(np.int32(held_by_process_0)))
  if refusal is not None:
    raise errors.UserError(refusal)
  if not held_by_process_0:
    raise errors.UserError(f'process 0 could not lock the workdir {workdir} (its output says '
                           'which run holds it)')
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def lock_status(workdir: str) -> Optional[str]:
  """Who holds WORKDIR's lock, in words ('... (stale)' for a dead holder), or None.

  Raises errors.UserError where a run could not take the lock at all (the path holds
  a folder or another non-file), as the run itself would.
  """
  lock = lockfile.Lock(os.path.join(os.fspath(workdir), LOCK_FILE))
  try:
    seen = lock.inspect()
  except lockfile.LockUnusable as e:
    raise errors.UserError(_lock_unusable(os.fspath(workdir))) from e
  except OSError:
    return None
  if seen is None:
    return None
  who = seen.holder.describe() if seen.holder else 'a process writing the lock file'
  if seen.damaged:
    who = 'a damaged lock file that no run wrote'
  return f'{who}{" (stale: it will be taken over)" if lock.is_stale(seen) else ""}'


# ----------------------------------------------------------------------------- config


def _plain(value: Any) -> Any:
  """ConfigDict / tuples / numpy scalars -> JSON types (tuples become lists)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, 'item') and callable(value.item):  # numpy scalar
    return value.item()
  return value


def save_config(workdir: str | os.PathLike[str], config: Any) -> None:
  """Writes the resolved config to WORKDIR/config.json and WORKDIR/config.py (host 0).

  config.py is loadable by `--config=WORKDIR/config.py` to rerun the same
  settings. Overwrites earlier files: call check_resume first on resume.
  """
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  text = json.dumps(_plain(config), indent=2, sort_keys=True, allow_nan=False) + '\n'
  fileio.atomic_write(os.path.join(workdir, CONFIG_JSON), lambda f: f.write(text))
  as_dict = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  literal = pprint.pformat(as_dict, indent=1, width=100, sort_dicts=True)
  try:
    ast.literal_eval(literal)
  except (ValueError, SyntaxError):
    logging.warning('Config holds values that are not Python literals; %s not written.', CONFIG_PY)
    return
  body = '\n'.join('      ' + line for line in literal.splitlines())
  source = (
      '"""The resolved config of the run in this folder, written by alexnet_jax at its start.\n\n'
      'Rerun with: python launch.py --config=<this file> --workdir=<this folder>\n"""\n\n'
      'import ml_collections\n\n\n'
      'def get_config() -> ml_collections.ConfigDict:\n'
      '  return ml_collections.ConfigDict(\n'
      f'{body})\n')
  fileio.atomic_write(os.path.join(workdir, CONFIG_PY), lambda f: f.write(source))


def load_config_dict(workdir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
  """The stored config.json of WORKDIR as a dict, or None if there is none.

  Raises errors.InputError naming the file when it is not a JSON object, or when it
  holds a field no config has (an edited file): a resume never takes that for a change.
  """
  path = os.path.join(os.fspath(workdir), CONFIG_JSON)
  if not os.path.exists(path):
    return None
  if not os.path.isfile(path):
    raise errors.InputError(f'{path} is not a regular file; it should hold the config the run '
                            f'was started with ({CONFIG_PY} beside it has the same settings): '
                            'move it away to resume training without checking the config')
  try:
    with open(path, 'rb') as f:
      stored = json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
    raise errors.InputError(
        f'{path} is not valid JSON ({e}); it holds the config the run was started with '
        f'({CONFIG_PY} beside it has the same settings): restore it from a backup, or delete '
        'it to resume training without checking the config') from e
  if not isinstance(stored, dict):
    raise errors.InputError(f'{path} holds a JSON {type(stored).__name__}, not the run\'s '
                            'config object; restore it, or delete it to run without checking '
                            'the config')
  known_fields.check(stored, where=path,
                     fix=f'rename or remove it in {path} and in {CONFIG_PY} beside it')
  return stored


def check_resume(workdir: str | os.PathLike[str],
                 config: Any) -> list[resume_changes.Change]:
  """Compares `config` with the one the run in WORKDIR started with; returns accepted changes.

  Only a workdir with a finished checkpoint has anything to resume; elsewhere the
  stored config is simply replaced. A change of a field that changes what is
  computed or the data order (resume_changes.DECISIONS) raises errors.InputError
  listing every such difference and the two ways on; nothing is written here.
  """
  workdir = os.fspath(workdir)
  if not checkpointing.finished_steps(workdir):
    return []
  stored = load_config_dict(workdir)
  if stored is None:
    logging.warning('%s holds checkpoints but no %s: the config of the resumed run cannot be '
                    'checked.', workdir, CONFIG_JSON)
    return []
  refused, accepted = resume_changes.compare(stored, _plain(config))
  if refused:
    listed = '; '.join(f'{c.field}: {json.dumps(c.stored)} -> {json.dumps(c.current)}'
                       for c in refused)
    raise errors.InputError(
        f'the run in {workdir} was started with another config, and a resume may not change '
        f'what it computes or its data order: {listed}. Resume it with its own config '
        f'(--config={os.path.join(workdir, CONFIG_PY)}, plus only overrides of fields a resume '
        'may change; docs/reliability.md lists them), or start a new run in another --workdir')
  return accepted


def record_config(workdir: str | os.PathLike[str], config: Any,
                  accepted: list[resume_changes.Change], step: int) -> None:
  """Writes the config the run now uses, and appends the accepted changes to its history.

  WORKDIR/config_history.jsonl gets one line per resume that changed fields:
  {"step": the step the changes take effect after, "time": ..., "changes":
  {field: [stored, current]}}. Host 0 only.
  """
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  if accepted:
    line = json.dumps({'step': int(step), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                       'changes': {c.field: [c.stored, c.current] for c in accepted}})
    path = os.path.join(workdir, CONFIG_HISTORY)
    try:
      with open(path, 'a') as f:
        f.write(line + '\n')
    except OSError as e:
      raise errors.UserError(f'cannot record the accepted config changes in {path}: '
                             f'{e.strerror or e}; move it away and rerun') from e
    logging.warning('Resuming at step %d with changed fields (recorded in %s): %s', step,
                    os.path.join(workdir, CONFIG_HISTORY),
                    '; '.join(f'{c.field}: {json.dumps(c.stored)} -> {json.dumps(c.current)}'
                              for c in accepted))
  save_config(workdir, config)


def read_config_history(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """The records of WORKDIR/config_history.jsonl (empty when no resume changed a field)."""
  path = os.path.join(os.fspath(workdir), CONFIG_HISTORY)
  if not os.path.lexists(path):
    return []
  try:
    if not os.path.isfile(path):
      raise ValueError('not a regular file')
    with open(path, 'rb') as f:
      lines = f.read().decode('utf-8').splitlines(keepends=True)
    if lines and not lines[-1].endswith('\n'):
      try:
        json.loads(lines[-1])
      except ValueError:  # the last line of a start killed while writing it
        lines = lines[:-1]
    records = [json.loads(line) for line in lines if line.strip()]
    for record in records:
      if not (isinstance(record, dict) and isinstance(record.get('step'), int)
              and isinstance(record.get('changes'), dict)):
        raise ValueError(f'a line is not a record of step and changes: {str(record)[:80]}')
  except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
    raise errors.InputError(
        f'{path} is unreadable ({e}); it lists the config changes resumes accepted: restore it '
        'from a backup, or move it away (the run then keeps no record of earlier changes)') from e
  return records


# ----------------------------------------------------------------------------- dataset facts


INFO_FILE = 'dataset_info.json'
MEAN_FILE = 'mean_image.npy'
LABELS_FILE = 'dataset_labels.npz'
INFO_FORMAT = 'alexnet_jax.dataset_info/1'


def save_dataset_info(workdir: str | os.PathLike[str], info: input_pipeline.DatasetInfo,
                      print_: Optional[fingerprint.Fingerprint] = None) -> None:
  """Writes WORKDIR/dataset_info.json and WORKDIR/mean_image.npy (host 0 only).

  With a fingerprint, its parts go into dataset_info.json ('fingerprint') and
  its labels into WORKDIR/dataset_labels.npz, so a later check can count them.
  """
  if jax.process_index() != 0:
    return
  workdir = os.fspath(workdir)
  description = {
      'format': INFO_FORMAT,
      'num_classes': info.num_classes,
      'class_names': list(info.class_names),
      'class_descriptions': list(info.class_descriptions),
      'split_sizes': {k: int(v) for k, v in info.split_sizes.items()},
      'image_size': int(info.image_size),
      'eigvals': np.asarray(info.eigvals, np.float64).tolist(),
      'eigvecs': np.asarray(info.eigvecs, np.float64).tolist(),
      'stats_source': info.stats_source,
  }
  if print_ is not None:
    description['fingerprint'] = print_.to_json()
    fileio.atomic_write(os.path.join(workdir, LABELS_FILE),
                        lambda f: np.savez_compressed(f, **print_.labels), 'wb')
  fileio.atomic_write(os.path.join(workdir, MEAN_FILE),
                      lambda f: np.save(f, np.asarray(info.mean_image, np.float32)), 'wb')
  fileio.atomic_write(os.path.join(workdir, INFO_FILE),
                      lambda f: f.write(json.dumps(description, indent=1) + '\n'))


def load_dataset_info(workdir: str | os.PathLike[str]) -> input_pipeline.DatasetInfo | None:
  """The DatasetInfo stored in WORKDIR, or None when the run stored none.

  Raises ValueError when the files exist but cannot be read.
  """
  workdir = os.fspath(workdir)
  info_path, mean_path = os.path.join(workdir, INFO_FILE), os.path.join(workdir, MEAN_FILE)
  if not os.path.exists(info_path):
    return None
  try:
    with open(info_path, 'rb') as f:
      d = json.loads(f.read().decode('utf-8'))
    if not isinstance(d, dict):
      raise ValueError(f'it holds a JSON {type(d).__name__}, not an object')
    if d.get('format') != INFO_FORMAT:
      raise ValueError(f'unknown format {d.get("format")!r}')
    mean_image = np.load(mean_path)
    size = int(d['image_size'])
    if mean_image.shape != (size, size, 3):
      raise ValueError(f'{MEAN_FILE} has shape {mean_image.shape}, expected ({size}, {size}, 3)')
    return input_pipeline.DatasetInfo(
        num_classes=int(d['num_classes']),
        class_names=tuple(d['class_names']),
        class_descriptions=tuple(d['class_descriptions']),
        split_sizes=dict(d['split_sizes']),
        image_size=size,
        mean_image=mean_image.astype(np.float32),
        eigvals=np.asarray(d['eigvals'], np.float32),
        eigvecs=np.asarray(d['eigvecs'], np.float32),
        stats_source=d['stats_source'])
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.InputError(
        f'the dataset description stored in {workdir} ({INFO_FILE}, {MEAN_FILE}) '
        f'is unreadable: {e}') from e


def load_fingerprint(workdir: str | os.PathLike[str]) -> Optional[fingerprint.Fingerprint]:
  """The dataset fingerprint the run in WORKDIR recorded, or None (runs made before it).

  Raises errors.InputError naming the files when they exist but cannot be read.
  """
  workdir = os.fspath(workdir)
  info_path = os.path.join(workdir, INFO_FILE)
  if not os.path.exists(info_path):
    return None
  labels_path = os.path.join(workdir, LABELS_FILE)
  try:
    with open(info_path) as f:
      stored = json.load(f).get('fingerprint')
    if stored is None:
      return None
    with np.load(labels_path) as labels:
      return fingerprint.Fingerprint(dict(stored['parts']),
                                     {k: labels[k] for k in labels.files})
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.InputError(
        f'the dataset fingerprint stored in {workdir} ({INFO_FILE}, {LABELS_FILE}) is '
        f'unreadable: {e}') from e


def check_dataset(workdir: str | os.PathLike[str], info: input_pipeline.DatasetInfo,
                  print_: Optional[fingerprint.Fingerprint] = None) -> None:
  """Refuses to resume the run in WORKDIR on another dataset than the one it trained on.

  The folder may move (config.data.dir is accepted on resume), so the dataset is
  compared by what the run stored of it: classes, split sizes, image size, the
  training statistics and, by its fingerprint, every split's labels (a dataset
  prepared again from the same source has the same). Nothing to compare for a
  fresh run or one that stored no dataset_info.json; a run made before the
  fingerprint existed is checked without labels (an info line says so).
  """
  workdir = os.fspath(workdir)
  if not checkpointing.finished_steps(workdir):
    return
  stored = load_dataset_info(workdir)
  if stored is None:
    return
  differences = []
  if stored.class_names != info.class_names:
    differences.append(f'classes {_brief(stored.class_names)} -> {_brief(info.class_names)}')
  if dict(stored.split_sizes) != dict(info.split_sizes):
    differences.append(f'split sizes {dict(stored.split_sizes)} -> {dict(info.split_sizes)}')
  if stored.image_size != info.image_size:
    differences.append(f'image size {stored.image_size} -> {info.image_size}')
  elif not np.array_equal(stored.mean_image, np.asarray(info.mean_image, np.float32)):
    differences.append('mean image (other training images)')
  stored_print = load_fingerprint(workdir)
  if stored_print is None:
    logging.info('%s records no dataset fingerprint (a run made before it existed): the '
                 'dataset\'s labels are not checked; it is recorded from now on.', workdir)
  elif print_ is not None:
    # Classes, sizes and the mean image are named above with their values.
    differences += [d for d in fingerprint.differences(stored_print, print_)
                    if d not in ('classes differ', 'split sizes differ', 'image size differs',
                                 'mean image differs')]
  if differences:
    raise errors.InputError(
        f'the run in {workdir} trained on another dataset than the one in its config now '
        f'({"; ".join(differences)}; the run\'s is described in '
        f'{os.path.join(workdir, INFO_FILE)}): point config.data.dir at that dataset, or '
        'start a new run in another --workdir')


def _brief(names: tuple[str, ...]) -> str:
  shown = ', '.join(names[:3])
  return f'{len(names)} ({shown}{", ..." if len(names) > 3 else ""})'


def dataset_info_for_run(workdir: str | os.PathLike[str],
                         data_config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """What the run in WORKDIR knew of its dataset: the stored copy, else the dataset itself.

  The stored copy comes first because it is what the run trained with, and it
  is there even where the training data is not (another machine, a laptop).
  """
  stored = load_dataset_info(workdir)
  if stored is not None:
    return stored
  try:
    return input_pipeline.load_info(data_config)
  except FileNotFoundError as e:
    raise errors.MissingInputError(
        f'{workdir} holds no {INFO_FILE} (written by runs since it was added) and its '
        f'dataset is not available: {e}') from e
