r"""One-time conversion of a dataset into the paper's preprocessed form.

  python -m alexnet_jax.prepare --source=SRC --output=DIR [--strict] \
      [--image_size=256] [--workers=N] [--jpeg_quality=95]

SRC is one of:
  * a folder with the official ILSVRC-2012 tars, as tensorflow-datasets' imagenet2012
    expects them: `ILSVRC2012_img_train.tar` (one `<wnid>.tar` per synset inside) and
    `ILSVRC2012_img_val.tar` (flat `ILSVRC2012_val_NNNNNNNN.JPEG` files, labelled from
    tfds' `validation_labels.txt`). Both are read in place, never extracted to disk.
  * an ImageFolder root: `train/<class>/<image>` and `val/<class>/<image>` (any image
    format PIL reads; the extension does not have to match the content).
  * the word `digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8
    images, 10 classes), upsampled and JPEG-encoded through the same path; every
    fifth image of each class (in load_digits order) is validation.
  * the word `tfds` with --output=DATA_DIR: nothing is converted; the training
    statistics of a tensorflow-datasets imagenet2012 already prepared (ArrayRecord) in
    DATA_DIR are written next to it, for input source 'tfds' (see input_pipeline).
  A `val/` folder or val tar is optional (the val split is then empty).

The official tars are checked before they are trusted: each must be a plain (not
compressed) tar read to its end-of-archive marker, every `<wnid>.tar` member a
whole tar (and read to its end when converted). A cut, compressed or damaged
tar is one `error:` line, and nothing made from it is kept. How much of the
official set the tars hold (1000 synsets, 50,000 validation images) is in the
summary line and dataset.json (`official_complete`, `train_synsets`,
`val_images`); --strict refuses less than all of it. dataset.json records the
tars' sizes (`source_files`): a rerun on other tars (a cut copy replaced by the
whole file) is refused, not taken as already complete.

Each image becomes the paper's input: turned upright when an EXIF orientation tag
says so, shorter side resized to image_size (pixel-area averaging when shrinking,
bicubic when enlarging), central image_size x image_size crop, re-encoded as JPEG.
Grayscale, CMYK, palette and PNG images are converted to RGB; files that cannot be
decoded are skipped and listed in the report (or stop the run with --strict). The
summary line counts the turned photos and the files ignored (links to nothing
included), and says when the val split is empty (training refuses such a dataset).

DIR afterwards:
  train.array_record-00000-of-000NN ...  records: int32 little-endian label + JPEG
  val.array_record-00000-of-000MM ...
  stats.npz      training-set statistics of the stored (decoded) pixels:
                 mean_image (S, S, 3) float32 in 0-255 units; channel_mean (3,);
                 covariance (3, 3), eigvals (3,), eigvecs (3, 3; columns) of the RGB
                 covariance of pixels scaled to [0, 1], eigenvalues descending.
  dataset.json   classes (wnids, in tfds labels.txt order for ImageNet), human-readable
                 names, split sizes, shard list, image_size, the preparation report.
                 Written last: it is the completeness marker.

Interruptions: work happens in parts (one per synset tar, or ~512 files) recorded in
DIR/_partial/; a re-run resumes from the parts already done and a folder without
dataset.json is never taken for a dataset. A re-run on a complete DIR is a no-op. A
part's shard is read back (record count and CRC-32 of each record) before the part
counts as done, and the final shards are checked before dataset.json is written. Any
failure (a full disk, Ctrl-C, an undecodable image with --strict) removes the files of
the part being written (a damaged source tar: all of DIR's preparation files); errors
are one `error:` line with exit status 2, Ctrl-C one `interrupted:` line with 130.
DIR may not lie inside SRC. --workers is capped at one per CPU core and one per
WORKER_BYTES of available memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import functools
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tarfile
import time
import zlib
from typing import Any, Iterator, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
from array_record.python import array_record_module
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.core import cli
from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format
from alexnet_jax.core import fileio
from alexnet_jax.core import progress

PARTIAL_DIR = '_partial'
LOCK_FILE = '.prepare.lock'
TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
# Optional wnid -> description files a user may keep next to the data (Kaggle's and
# Caffe's); the official tars themselves carry no human-readable class names.
DESCRIPTION_FILES = ('LOC_synset_mapping.txt', 'synset_words.txt')
IMAGE_EXTENSIONS = frozenset((
    '.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.gif', '.tif', '.tiff',
    '.webp', '.ppm', '.pgm', '.pbm', '.pnm'))
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
               'nine')
FILES_PER_PART = 512
# Memory one conversion worker process may hold. Measured (peak resident set, image_size
# 256): 57 MiB after its imports, 67 MiB converting photos of ImageNet's sizes (libjpeg
# decodes a large JPEG at a reduced scale), 220 MiB on a 4000x3000 PNG, decoded whole.
# `worker_limit` keeps the workers within the memory available at this bound.
WORKER_BYTES = 200 * 2**20
MAX_LISTED_SKIPS = 1000
# group_size:1 gives each record its own chunk (cheap random access); JPEG bytes do
# not compress, so compression would only cost read time.
WRITER_OPTIONS = 'group_size:1,uncompressed'
_SHARD_RE = re.compile(r'(train|val)\.array_record-\d{5}-of-\d{5}')
_VAL_NAME_RE = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')
_WNID_TAR_RE = re.compile(r'(n\d{8})\.tar')


# ----------------------------------------------------------------------------------
# ImageNet labels.


def _tfds_imagenet_file(name: str) -> str:
  """Path of a label file that tensorflow-datasets ships for imagenet2012.

  Located without importing tensorflow_datasets (its import alone takes a second).
  """
  spec = importlib.util.find_spec('tensorflow_datasets')
  if spec is None or not spec.submodule_search_locations:
    raise errors.MissingInputError(
        'tensorflow-datasets is not installed; its imagenet2012 label files are '
        'needed to label the official tars (pip install -r requirements.txt)')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'imagenet2012',
                      name)
  if not os.path.isfile(path):
    raise errors.MissingInputError(f'tensorflow-datasets lacks {path}')
  return path


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 ILSVRC-2012 wnids in tfds' labels.txt order (tfds' label indices)."""
  with open(_tfds_imagenet_file('labels.txt')) as f:
    return tuple(f.read().split())


@functools.cache
def imagenet_validation_wnids() -> tuple[str, ...]:
  """wnid of val image k+1 (ILSVRC2012_val_{k+1:08d}.JPEG) at position k."""
  with open(_tfds_imagenet_file('validation_labels.txt')) as f:
    return tuple(f.read().split())


# ----------------------------------------------------------------------------------
# Planning: what to read, as independent parts.


@dataclasses.dataclass(frozen=True)
class _Part:
  """A unit of work: its images go to one shard, in a fixed order.

  kind 'synset_tar': a `<wnid>.tar` inside the train tar at byte `offset`, `size` long,
    all of class `label`. 'tar_members': `items` = (name, offset, size, label) of files
    inside the tar at `path`. 'files': `items` = (path, label). 'arrays': `items` =
    (key, uint8 image, label).
  """
  split: str
  index: int
  kind: str
  work: int  # Progress weight: bytes read (or images for 'arrays').
  path: str = ''
  offset: int = 0
  size: int = 0
  label: int = -1
  items: tuple[Any, ...] = ()
  member: str = ''  # 'synset_tar': the member's name in the train tar, for messages

  @property
  def name(self) -> str:
    return f'{self.split}-{self.index:05d}'


@dataclasses.dataclass
class _Plan:
  kind: str  # 'imagenet_tars' | 'image_folder' | 'digits'
  source: str
  class_names: list[str]
  class_descriptions: list[str]
  parts: list[_Part]
  notes: dict[str, int]  # Counts of inputs left out before conversion.
  # Official tars only: what the source holds of the official set (`_official_counts`),
  # and the sizes of the tars it was read from (`_source_files`).
  official: dict[str, Any] | None = None
  source_files: dict[str, int | None] | None = None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def _read_descriptions(folder: str, class_names: Sequence[str]) -> list[str]:
  """Human-readable names from an optional mapping file in `folder`, else the names."""
  for file_name in DESCRIPTION_FILES:
    path = os.path.join(folder, file_name)
    if os.path.isfile(path):
      mapping = {}
      with open(path) as f:
        for line in f:
          key, _, text = line.strip().partition(' ')
          if key:
            mapping[key] = text.strip() or key
      return [mapping.get(name, name) for name in class_names]
  return list(class_names)


def _plan_digits() -> _Plan:
  from sklearn import datasets  # Imported here: slow, and only this source needs it.

  digits = datasets.load_digits()
  # load_digits holds 0..16 intensities; map them onto the 0..255 range of a photo.
  pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
  labels = digits.target.astype(int)
  seen = np.zeros(10, int)
  splits = {'train': [], 'val': []}
  for i, label in enumerate(labels):
    split = 'val' if seen[label] % 5 == 0 else 'train'
    seen[label] += 1
    splits[split].append((f'digits[{i}]', pixels[i], int(label)))
  parts = []
  for split in prepared_format.SPLITS:
    for index, chunk in enumerate(_chunks(splits[split], FILES_PER_PART)):
      parts.append(_Part(split, index, 'arrays', work=len(chunk), items=tuple(chunk)))
  return _Plan('digits', 'digits', [str(i) for i in range(10)], list(DIGIT_NAMES),
               parts, {})


# Magic numbers of compressed files that may carry a .tar name (a plain tar has none).
_COMPRESSED = ((b'\x1f\x8b', 'gzip', 'gunzip'), (b'BZh', 'bzip2', 'bunzip2'),
               (b'\xfd7zXZ\x00', 'xz', 'unxz'), (b'\x28\xb5\x2f\xfd', 'zstd', 'unzstd'))
# A tar ends with two zero blocks (POSIX ustar); all that follows them is zero padding.
_TAR_END = 2 * tarfile.BLOCKSIZE
_COPY_AGAIN = 'copy the complete file again'


def _read_at(f, offset: int, size: int) -> bytes:
  f.seek(offset)
  return f.read(size)


def _check_not_compressed(what: str, head: bytes) -> None:
  for magic, kind, tool in _COMPRESSED:
    if head.startswith(magic):
      raise errors.DamagedSourceError(
          f'{what} is a {kind}-compressed file, not a plain tar (the official ILSVRC-2012 '
          f'tars are uncompressed): decompress it ({tool}) into a plain tar, or copy the '
          'original file')


def _check_tar_end(f, what: str, offset: int, size: int,
                   members: Sequence[tarfile.TarInfo]) -> None:
  """Raises DamagedSourceError unless the tar `f` (`size` bytes) ends at `offset`.

  tarfile stops listing without a word at a header that is cut short or damaged
  (and past the end of the file), so a cut archive reads as a shorter one: only
  the end-of-archive marker at `offset`, where the listing stopped, shows that
  every member was seen.
  """
  tail = _read_at(f, offset, _TAR_END)
  if len(tail) == _TAR_END and not tail.strip(b'\0'):
    return
  last = members[-1] if members else None
  if last is not None and last.offset_data + last.size > size:
    have = max(size - last.offset_data, 0)
    raise errors.DamagedSourceError(
        f'{what} is cut short: it ends inside the data of {last.name} ({have:,} of its '
        f'{last.size:,} bytes are there); {_COPY_AGAIN}')
  if tail.strip(b'\0') and len(tail) >= tarfile.BLOCKSIZE:  # a whole block, but no header
    raise errors.DamagedSourceError(
        f'{what} holds a damaged header at byte {offset:,} (after {len(members)} '
        f'member{"" if len(members) == 1 else "s"}): the file is corrupt; {_COPY_AGAIN}')
  where = 'inside a member header' if tail.strip(b'\0') else 'before its end-of-archive marker'
  whole = f'{len(members)} whole member{"" if len(members) == 1 else "s"}'
  raise errors.DamagedSourceError(
      f'{what} is cut short: it ends {where} (at byte {size:,}, after {whole}); {_COPY_AGAIN}')


def _tar_members(path: str) -> list[tarfile.TarInfo]:
  """The members of the plain tar at `path`, once its whole listing, to the end, is read."""
  with open(path, 'rb') as f:
    size = os.fstat(f.fileno()).st_size
    _check_not_compressed(path, f.read(tarfile.BLOCKSIZE))
    f.seek(0)
    try:
      archive = tarfile.open(fileobj=f, mode='r:')
    except tarfile.TarError as e:
      raise errors.DamagedSourceError(f'{path} is not a tar archive ({e}); '
                                      f'{_COPY_AGAIN}') from e
    try:
      archive.getmembers()
    except tarfile.TarError as e:  # tarfile's 'unexpected end of data': a cut inside a member
      _check_tar_end(f, path, archive.offset, size, archive.members)
      raise errors.DamagedSourceError(f'{path} is damaged ({e}); {_COPY_AGAIN}') from e
    _check_tar_end(f, path, archive.offset, size, archive.members)
  return archive.members


def _check_synset_tar(f, train_tar: str, member: tarfile.TarInfo) -> None:
  """A `<wnid>.tar` member must be a whole tar: a header first, its end marker last.

  Reads two blocks per member: the images are read (and the rest of the member
  checked, `_iter_part`) when the part is converted.
  """
  what = f'{member.name} in {train_tar}'
  head = _read_at(f, member.offset_data, tarfile.BLOCKSIZE)
  _check_not_compressed(what, head)
  try:
    tarfile.TarInfo.frombuf(head, tarfile.ENCODING, 'surrogateescape')
  except tarfile.EOFHeaderError as e:  # a zero block first: a tar of nothing
    raise errors.DamagedSourceError(f'{what} is an empty tar: its synset has no images; '
                                    f'{_COPY_AGAIN}') from e
  except tarfile.HeaderError as e:
    raise errors.DamagedSourceError(
        f'{what} is not a tar archive ({e or "no header"}): each member of the official train '
        f'tar is a tar of one synset\'s JPEGs; {_COPY_AGAIN}') from e
  tail = _read_at(f, member.offset_data + member.size - _TAR_END, _TAR_END)
  if member.size < tarfile.BLOCKSIZE + _TAR_END or tail.strip(b'\0'):
    raise errors.DamagedSourceError(
        f'{what} is cut short (its last {_TAR_END} bytes are not the end-of-archive marker '
        f'of a tar); {_COPY_AGAIN}')


def _source_files(folder: str) -> dict[str, int | None]:
  """Sizes of the official tars in `folder` (None: absent): what dataset.json records of them.

  Size, not modification time: a copy of the same file (cp, a restore) has a new
  time but the same bytes; a cut copy or another subset has another size.
  """
  sizes = {}
  for name in (TRAIN_TAR, VAL_TAR):
    path = os.path.join(folder, name)
    sizes[name] = os.path.getsize(path) if os.path.isfile(path) else None
  return sizes


def _official_counts(train_synsets: int, val_images: int) -> dict[str, Any]:
  """How much of the official ILSVRC-2012 set the tars hold: [found, official] counts."""
  synsets, images = len(imagenet_wnids()), len(imagenet_validation_wnids())
  return {'official_complete': train_synsets == synsets and val_images == images,
          'train_synsets': [train_synsets, synsets], 'val_images': [val_images, images]}


def _official_shortfall(official: dict[str, Any]) -> str:
  """'465 of 1000 synsets, 10 of 50,000 validation images'."""
  (synsets, all_synsets), (images, all_images) = official['train_synsets'], official['val_images']
  return (f'{synsets} of {all_synsets} synsets, {images:,} of {all_images:,} validation '
          'images')


def _plan_tars(folder: str) -> _Plan:
  """The parts of the official tars: one per synset tar, the val images in chunks."""
  train_tar = os.path.join(folder, TRAIN_TAR)
  all_wnids = imagenet_wnids()
  source_files = _source_files(folder)
  synsets = _train_synsets(train_tar, set(all_wnids))
  class_names = [w for w in all_wnids if w in synsets]
  label_of = {w: i for i, w in enumerate(class_names)}
  parts = [
      _Part('train', i, 'synset_tar', work=synsets[w].size, path=train_tar,
            offset=synsets[w].offset_data, size=synsets[w].size, label=i,
            member=synsets[w].name)
      for i, w in enumerate(class_names)
  ]
  notes = {'val_outside_classes': 0}
  val_tar = os.path.join(folder, VAL_TAR)
  val_images = 0
  if os.path.isfile(val_tar):
    val_parts, val_images, notes['val_outside_classes'] = _val_parts(val_tar, label_of)
    parts.extend(val_parts)
  else:
    logging.warning('%s not found: the val split will be empty', val_tar)
  return _Plan('imagenet_tars', folder, class_names,
               _read_descriptions(folder, class_names), parts, notes,
               _official_counts(len(class_names), val_images), source_files)


def _train_synsets(train_tar: str, known: set[str]) -> dict[str, tarfile.TarInfo]:
  """The <wnid>.tar members of the outer train tar by wnid, each checked to be a whole tar."""
  members = [m for m in _tar_members(train_tar) if m.isfile()]
  if not members:
    raise errors.InputError(f'{train_tar} is empty: it should hold one <wnid>.tar per class')
  synsets = {}
  for member in members:
    match = _WNID_TAR_RE.fullmatch(os.path.basename(member.name))
    if not match or match.group(1) not in known:
      raise errors.InputError(
          f'{train_tar} holds {member.name!r}, not an ILSVRC-2012 <wnid>.tar: this is '
          'not the official train tar (use an ImageFolder train/<class>/ tree instead)')
    if match.group(1) in synsets:
      raise errors.InputError(f'{train_tar} holds {match.group(1)}.tar twice')
    synsets[match.group(1)] = member
  with open(train_tar, 'rb') as f:
    for member in members:
      _check_synset_tar(f, train_tar, member)
  return synsets


def _val_parts(val_tar: str, label_of: Mapping[str, int]) -> tuple[list[_Part], int, int]:
  """The val parts of the official val tar: (parts, files in the tar, files outside the classes).

  Labels come from the file numbers (tfds validation_labels.txt); images of a
  class absent from a partial train tar are left out and counted.
  """
  val_wnids = imagenet_validation_wnids()
  val_members = [m for m in _tar_members(val_tar) if m.isfile()]
  items, outside = [], 0
  for member in val_members:
    match = _VAL_NAME_RE.fullmatch(os.path.basename(member.name))
    number = int(match.group(1)) if match else 0
    if not 1 <= number <= len(val_wnids):
      raise errors.InputError(
          f'{val_tar} holds {member.name!r}, not an official validation file name '
          '(ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG). Its '
          'labels come from tfds validation_labels.txt by file number, so they '
          'would be wrong; use an ImageFolder val/<wnid>/ tree instead')
    label = label_of.get(val_wnids[number - 1])
    if label is None:  # A class absent from this (partial) train tar.
      outside += 1
      continue
    items.append((number, member.name, member.offset_data, member.size, label))
  numbers = [item[0] for item in items]
  if len(set(numbers)) != len(numbers):
    raise errors.InputError(f'{val_tar} holds a validation file name twice')
  items.sort()
  parts = [_Part('val', index, 'tar_members', work=sum(c[3] for c in chunk), path=val_tar,
                 items=tuple(c[1:] for c in chunk))
           for index, chunk in enumerate(_chunks(items, FILES_PER_PART * 2))]
  return parts, len(val_members), outside


def _list_images(folder: str) -> tuple[list[str], int]:
  """Sorted image file paths directly in `folder`, and the count of other files.

  Other files include symbolic links that point nowhere; hidden files and
  sub-folders are not counted.
  """
  images, others = [], 0
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if entry.is_symlink() and not os.path.exists(entry.path):
      logging.warning('ignored %s: a symbolic link to nothing', entry.path)
      others += 1  # a dangling link, likely a photo that moved: counted, not silently lost
      continue
    if entry.name.startswith('.') or not entry.is_file():
      continue
    if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
      images.append(entry.path)
    else:
      others += 1
  return images, others


def _class_folders(folder: str) -> list[str]:
  return sorted(e.name for e in os.scandir(folder)
                if e.is_dir() and not e.name.startswith('.'))


def _plan_image_folder(root: str) -> _Plan:
  train_dir = os.path.join(root, 'train')
  class_names = _class_folders(train_dir)
  if not class_names:
    raise errors.InputError(f'{train_dir} holds no class folders (expected '
                            'train/<class>/<image>)')
  try:
    known = set(imagenet_wnids())
  except FileNotFoundError:  # no tensorflow-datasets: its labels.txt is sorted, as these are
    known = set()
  if all(name in known for name in class_names):
    # ImageNet classes take tfds' labels.txt order (a sorted list, as it happens).
    order = {w: i for i, w in enumerate(imagenet_wnids())}
    class_names.sort(key=order.__getitem__)
  label_of = {name: i for i, name in enumerate(class_names)}
  notes = {'ignored_files': 0}
  parts = []
  val_dir = next((os.path.join(root, d) for d in ('val', 'validation')
                  if os.path.isdir(os.path.join(root, d))), None)
  if val_dir is None:
    logging.warning('%s has no val/ folder: the val split will be empty', root)
  for split, folder in (('train', train_dir), ('val', val_dir)):
    if folder is None:
      continue
    names = class_names if split == 'train' else _class_folders(folder)
    loose_images, loose_others = _list_images(folder)  # Outside any class folder.
    notes['ignored_files'] += len(loose_images) + loose_others
    items = []
    for name in names:
      if name not in label_of:
        raise errors.InputError(f'{os.path.join(folder, name)} is not a training class '
                                f'(no {os.path.join(train_dir, name)})')
      images, others = _list_images(os.path.join(folder, name))
      notes['ignored_files'] += others
      if not images:
        raise errors.InputError(
            f'class folder {os.path.join(folder, name)} holds no images (looked for '
            f'{", ".join(sorted(IMAGE_EXTENSIONS))})')
      items.extend((path, label_of[name]) for path in images)
    for index, chunk in enumerate(_chunks(items, FILES_PER_PART)):
      parts.append(_Part(split, index, 'files',
                         work=sum(os.path.getsize(p) for p, _ in chunk),
                         items=tuple(chunk)))
  return _Plan('image_folder', root, class_names, _read_descriptions(root, class_names),
               parts, notes)


def _plan(source: str) -> _Plan:
  """Recognises the source and lists its parts; raises on unusable sources."""
  if source == 'digits':
    return _plan_digits()
  if not source:
    raise errors.InputError('no source given: pass --source=FOLDER or --source=digits')
  if not os.path.exists(source):
    raise errors.MissingInputError(f'source folder {source} does not exist')
  if not os.path.isdir(source):
    raise errors.InputError(f'source {source} is not a folder (give the folder that holds '
                            f'{TRAIN_TAR}, or an ImageFolder root)')
  source = os.path.abspath(source)
  if os.path.isfile(os.path.join(source, TRAIN_TAR)):
    return _plan_tars(source)
  if os.path.isdir(os.path.join(source, 'train')):
    return _plan_image_folder(source)
  what = 'is empty' if not os.listdir(source) else f'holds neither {TRAIN_TAR} nor train/'
  raise errors.InputError(
      f'source folder {source} {what}: it should hold the official tars ({TRAIN_TAR}, '
      f'{VAL_TAR}) or an ImageFolder tree (train/<class>/<image>, val/<class>/<image>)')


# ----------------------------------------------------------------------------------
# Converting one part (runs in worker processes).


class _Window:
  """Read-only, seekable view of `size` bytes at `offset` of an open file: one member of an
  outer tar, opened in place as a tar itself."""

  def __init__(self, f, offset: int, size: int):
    self._f = f
    self._offset = offset
    self._size = size
    self._position = 0

  def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
    base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
    self._position = min(max(base + position, 0), self._size)
    return self._position

  def tell(self) -> int:
    return self._position

  def read(self, n: int | None = -1) -> bytes:
    left = self._size - self._position
    n = left if n is None or n < 0 else min(n, left)
    self._f.seek(self._offset + self._position)
    data = self._f.read(n)
    self._position += len(data)
    return data


def _iter_part(part: _Part) -> Iterator[tuple[str, int, bytes | np.ndarray]]:
  """Yields (key for messages, label, encoded image or uint8 pixels)."""
  if part.kind == 'synset_tar':
    what = f'{part.member} in {part.path}'
    with open(part.path, 'rb') as f:
      window = _Window(f, part.offset, part.size)
      try:
        # Read in place, in order: nothing extracted, one image held at a time.
        with tarfile.open(fileobj=window, mode='r:') as inner:
          for member in inner:
            if member.isfile():
              key = f'{os.path.basename(part.path)}/{member.name}'
              yield key, part.label, inner.extractfile(member).read()
          # A damaged header inside ends tarfile's listing silently, images lost with it.
          _check_tar_end(window, what, inner.offset, part.size, inner.getmembers())
      except tarfile.TarError as e:
        raise errors.DamagedSourceError(f'{what} is damaged ({e}); {_COPY_AGAIN}') from e
  elif part.kind == 'tar_members':
    with open(part.path, 'rb') as f:
      for name, offset, size, label in part.items:
        f.seek(offset)
        yield f'{os.path.basename(part.path)}/{name}', label, f.read(size)
  elif part.kind == 'files':
    for path, label in part.items:
      with open(path, 'rb') as f:
        yield path, label, f.read()
  elif part.kind == 'arrays':
    for key, pixels, label in part.items:
      yield key, label, pixels
  else:
    raise ValueError(f'unknown part kind {part.kind!r}')


class _Stats:
  """Exact integer sums over stored pixels; mergeable across parts in any order."""

  def __init__(self, image_size: int):
    self.pixel_sum = np.zeros((image_size, image_size, 3), np.int64)
    self.outer_sum = np.zeros((3, 3), np.int64)
    self.count = 0

  def add(self, image: np.ndarray) -> None:
    self.pixel_sum += image
    flat = image.reshape(-1, 3).astype(np.float64)
    # Integer products summed in float64 stay exact below 2**53 (a 4096^2 image).
    self.outer_sum += np.rint(flat.T @ flat).astype(np.int64)
    self.count += 1

  def merge(self, pixel_sum, outer_sum, count) -> None:
    self.pixel_sum += pixel_sum
    self.outer_sum += outer_sum
    self.count += int(count)

  def finish(self) -> dict[str, np.ndarray]:
    """Mean image (0-255) and the eigen-decomposition of the [0, 1] RGB covariance."""
    size = self.pixel_sum.shape[0]
    pixels = self.count * size * size
    channel_mean = self.pixel_sum.sum(axis=(0, 1)) / pixels
    covariance = (self.outer_sum / pixels - np.outer(channel_mean, channel_mean))
    covariance /= 255.0**2
    eigvals, eigvecs = np.linalg.eigh(covariance)
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    # Signs are arbitrary (alpha is symmetric); fix them for reproducible files.
    peak = eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(3)]
    eigvecs = eigvecs * np.where(peak < 0, -1.0, 1.0)
    return {
        'mean_image': (self.pixel_sum / self.count).astype(np.float32),
        'channel_mean': channel_mean.astype(np.float32),
        'covariance': covariance,
        'eigvals': np.maximum(eigvals, 0).astype(np.float32),
        'eigvecs': eigvecs.astype(np.float32),
        'count': np.int64(self.count),
    }


def _convert(payload: bytes | np.ndarray, image_size: int) -> tuple[np.ndarray, bool]:
  """(the stored image, whether an EXIF orientation tag turned it upright)."""
  if isinstance(payload, np.ndarray):
    return decoding.resize_center_crop(payload, image_size), False
  pixels, orientation = decoding.decode_with_orientation(payload, min_size=image_size)
  return decoding.resize_center_crop(pixels, image_size), orientation != decoding.UPRIGHT


def _write_json(path: str, obj: Any) -> None:
  # fsync: a part's .json marks it done for a resumed run, so its data must be on disk.
  fileio.atomic_write(path, lambda f: json.dump(obj, f, indent=1), fsync=True)


def write_error(path: str, error: BaseException) -> errors.UserError:
  """One line for a failed write of `path` (a full disk, a lost mount, no permission)."""
  folder = os.path.dirname(path) or '.'
  text = getattr(error, 'strerror', None) or str(error).split(';')[0]
  if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(error):
    text = 'no space left on the device'
  with contextlib.suppress(OSError):
    text += f', {shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there'
  return errors.UserError(f'cannot write {path} ({text})')


def _verify_shard(path: str, checksums: Sequence[int]) -> None:
  """Reads a written shard back: the records and their CRC-32s must be those written."""
  reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
  try:
    count = reader.num_records()
    if count != len(checksums):
      raise errors.UserError(f'{path} holds {count} records after writing {len(checksums)}: the '
                             'storage lost data; prepare again')
    for start in range(0, count, 64):
      records = reader.read(list(range(start, min(start + 64, count))))
      for i, record in enumerate(records, start):
        if zlib.crc32(record) != checksums[i]:
          raise errors.UserError(f'record {i} of {path} differs from what was written: the '
                                 'storage corrupted it; prepare again')
  finally:
    reader.close()


@dataclasses.dataclass
class _Written:
  """What one part's shard holds: its images per label, what was skipped, the checks."""
  stats: _Stats | None  # training parts only
  label_counts: dict[int, int] = dataclasses.field(default_factory=dict)
  skipped: list[list[str]] = dataclasses.field(default_factory=list)
  checksums: list[int] = dataclasses.field(default_factory=list)  # CRC-32 per record
  rotated: int = 0  # photos turned upright by their EXIF orientation


def _write_shard(part: _Part, path: str, image_size: int, jpeg_quality: int,
                 strict: bool) -> _Written:
  """Converts the part's images into the ArrayRecord file `path`."""
  written = _Written(_Stats(image_size) if part.split == 'train' else None)
  writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
  try:
    for key, label, payload in _iter_part(part):
      try:
        pixels, turned = _convert(payload, image_size)
      except Exception as e:  # pylint: disable=broad-except
        # PIL signals bad data with many types (OSError, SyntaxError, ValueError, ...).
        reason = f'{type(e).__name__}: {e}'
        if strict:
          raise errors.InputError(f'cannot decode {key} ({reason}); run without --strict to '
                                  'skip such files and list them in the report') from e
        written.skipped.append([key, reason])
        continue
      written.rotated += turned
      jpeg = decoding.encode_jpeg(pixels, jpeg_quality)
      record = prepared_format.encode_record(label, jpeg)
      writer.write(record)
      written.checksums.append(zlib.crc32(record))
      written.label_counts[label] = written.label_counts.get(label, 0) + 1
      if written.stats is not None:
        # Statistics of the pixels the pipeline will decode, not of the pre-JPEG ones.
        written.stats.add(decoding.decode(jpeg))
  finally:
    writer.close()  # Writes the last chunk and the index: a full disk may fail only here.
  return written


def _part_failure(error: BaseException, work_dir: str, writing: str) -> BaseException:
  """The error to raise for a failed part: a user error as it is, a failed read or write
  as one line, anything else (a bug, Ctrl-C) unchanged."""
  if isinstance(error, errors.UserError):
    return error
  if (isinstance(error, OSError) and error.filename
      and not os.fspath(error.filename).startswith(work_dir)):
    return errors.UserError(f'cannot read {error.filename} ({error.strerror})')
  if isinstance(error, (OSError, RuntimeError)):
    # A failed write: array_record reports it as a RuntimeError naming the file.
    return write_error(writing, error)
  return error


def _run_part(part: _Part, work_dir: str, image_size: int, jpeg_quality: int,
              strict: bool) -> dict[str, Any]:
  """Converts one part into work_dir/<name>.array_record (+ .npz sums, + .json).

  The shard is written under a temporary name, read back and checked, then
  renamed; the .json is written last and its presence marks the part done for
  a resumed run. Any failure (an undecodable image with --strict, a full disk,
  Ctrl-C) removes the part's unfinished files.
  """
  shard = os.path.join(work_dir, part.name + '.array_record')
  sums_file = os.path.join(work_dir, part.name + '.npz')
  writing = shard + '.tmp'
  try:
    written = _write_shard(part, writing, image_size, jpeg_quality, strict)
    _verify_shard(writing, written.checksums)
    size = os.path.getsize(writing)
    os.replace(writing, shard)
    writing = sums_file
    if written.stats is not None:
      with open(sums_file, 'wb') as f:
        np.savez(f, pixel_sum=written.stats.pixel_sum, outer_sum=written.stats.outer_sum,
                 count=written.stats.count)
    images = sum(written.label_counts.values())
    result = {'split': part.split, 'index': part.index, 'converted': images,
              'images': images, 'rotated': written.rotated, 'bytes': size,
              'label_counts': sorted(written.label_counts.items()),
              'skipped': written.skipped}
    writing = os.path.join(work_dir, part.name + '.json')
    _write_json(writing, result)
  except BaseException as e:
    for path in (shard + '.tmp', sums_file):
      with contextlib.suppress(OSError):
        os.remove(path)
    failure = _part_failure(e, work_dir, writing)
    if failure is e:
      raise
    raise failure from e
  return result


# ----------------------------------------------------------------------------------
# Progress.


class _Progress:
  """Parts, images, rate and ETA of a preparation on one status line (stderr)."""

  def __init__(self, total_work: int, total_parts: int, enabled: bool = True):
    self._total_work = max(total_work, 1)
    self._total_parts = total_parts
    self._line = None
    if enabled:
      # Redrawn twice a second on a terminal; a log file gets a line every 30 s.
      tty = sys.stderr.isatty()
      self._line = progress.StatusLine(sys.stderr if tty else None,
                                       min_interval=0.5 if tty else 30.0)
    self._start = time.monotonic()
    self.work = self.parts = self.images = 0

  def update(self, work: int, images: int) -> None:
    self.work += work
    self.parts += 1
    self.images += images
    if self._line is None:
      return
    final = self.parts == self._total_parts
    self._line.show(self._text(time.monotonic() - self._start), force=final)
    if final:
      self._line.close()

  def _text(self, elapsed: float) -> str:
    eta = progress.eta_seconds(self.work, self._total_work - self.work, elapsed)
    return (f'prepare: {100 * self.work / self._total_work:5.1f}%  '
            f'parts {self.parts}/{self._total_parts}  {self.images} images  '
            f'{self.images / max(elapsed, 1e-9):.0f} img/s  '
            f'elapsed {progress.format_duration(elapsed)}  '
            f'ETA {progress.format_duration(eta)}')


# ----------------------------------------------------------------------------------
# The driver.


def _cores() -> int:
  """CPU cores this process may run on (a job's share, where a scheduler limits it)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _available_memory() -> int | None:
  """Bytes of memory available to new processes (Linux' MemAvailable), None where unknown."""
  with contextlib.suppress(OSError, ValueError, IndexError), open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  return None


def worker_limit(cores: int, available_memory: int | None) -> int:
  """The most conversion workers that help: one per core, and no more than fit in memory."""
  by_memory = cores if available_memory is None else available_memory // WORKER_BYTES
  return max(1, min(cores, by_memory))


def _checked_workers(workers: int) -> int:
  """--workers as used: a positive count, capped by `worker_limit` (said in a log line)."""
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise errors.InputError(f'--workers must be a positive integer, got {workers!r}')
  cores, memory = _cores(), _available_memory()
  limit = worker_limit(cores, memory)
  if workers > limit:
    room = '' if memory is None else (f', {memory / 2**30:.1f} GiB of memory available (each '
                                      f'worker holds about {WORKER_BYTES // 2**20} MiB)')
    logging.warning('--workers=%d capped at %d: this machine gives this process %d CPU '
                    'cores%s', workers, limit, cores, room)
  return min(workers, limit)


@contextlib.contextmanager
def _locked(output: str) -> Iterator[None]:
  """Serialises preparations of one folder (e.g. several processes of one job)."""
  with open(os.path.join(output, LOCK_FILE), 'a') as f:  # 'a': leaves mtimes alone.
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _is_ours(name: str) -> bool:
  """Whether a file in an output folder may come from an unfinished preparation."""
  if name in (PARTIAL_DIR, LOCK_FILE) or _SHARD_RE.fullmatch(name):
    return True
  # A killed write leaves its temporary file: '.<name>.<random>' from
  # fileio.atomic_write, '<name>.tmp' from earlier versions.
  return any(name in (final, final + '.tmp') or name.startswith(f'.{final}.')
             for final in (prepared_format.DATASET_FILE, prepared_format.STATS_FILE))


def _check_output_usable(output: str) -> None:
  foreign = sorted(name for name in os.listdir(output) if not _is_ours(name))
  if foreign:
    raise errors.InputError(
        f'output folder {output} is not empty and holds no prepared dataset (found '
        f'{", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}); choose a new '
        'or empty folder')


def _noop_report(output: str, description: dict[str, Any], image_size: int,
                 source: str) -> dict[str, Any]:
  if description['image_size'] != image_size:
    raise errors.InputError(
        f'{output} already holds a dataset prepared at image_size '
        f'{description["image_size"]}, not {image_size}; prepare into another folder')
  if source != description['source'] and os.path.abspath(source) != description['source']:
    logging.warning('%s was prepared from %s, not %s; using it as it is', output,
                    description['source'], source)
  elif description.get('source_files') is not None and os.path.isdir(source):
    _check_same_tars(output, description, _source_files(os.path.abspath(source)))
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


def prepare(source: str, output: str, *, image_size: int = 256, strict: bool = False,
            workers: int = 1, jpeg_quality: int = 95,
            progress: bool = True) -> dict[str, Any]:
  """Prepares `source` into `output` (see the module docstring); returns the report.

  A complete `output` is left as it is (report['noop'] is True). An incomplete one from
  an interrupted run with the same settings is resumed; one with others is restarted.

  Args:
    source: official-tars folder, ImageFolder root, or 'digits'.
    output: the folder to fill; created if needed; must be empty or ours.
    image_size: side of the stored square images.
    strict: raise on the first undecodable image instead of skipping it.
    workers: processes converting parts in parallel (1: in this process).
    jpeg_quality: quality of the re-encoded JPEGs.
    progress: print a progress line with ETA.
  Raises errors.UserError (one line) for an unusable source or output.
  """
  if image_size < 8:
    raise errors.InputError(f'image_size must be at least 8, got {image_size}')
  workers = _checked_workers(workers)
  if not output:
    raise errors.InputError('no output folder given: pass --output=DIR')
  if source == 'tfds':
    return prepare_tfds_stats(output, image_size=image_size, workers=workers,
                              progress=progress)
  output = _checked_output(source, output, jpeg_quality)
  description = prepared_format.read_dataset_json(output)
  if description is not None and prepared_format.is_complete(output):
    return _noop_report(output, description, image_size, source)
  if os.path.isdir(output):
    _check_output_usable(output)  # before the lock file below lands in someone else's folder
  start = time.monotonic()
  plan = _plan(source)  # reads the source only: a source it refuses leaves no trace
  if strict and plan.official is not None and not plan.official['official_complete']:
    raise errors.InputError(
        f'{plan.source} is not the complete official ILSVRC-2012 set: it holds '
        f'{_official_shortfall(plan.official)}; --strict prepares only the complete set (run '
        'without --strict to prepare this part of it)')
  created = not os.path.isdir(output)
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:  # A file where a parent folder should be, no permission, ...
    raise errors.InputError(f'cannot create the output folder {output}: {e.strerror or e}') from e
  try:
    return _prepare_locked(plan, output, image_size, strict, workers, jpeg_quality, progress,
                           source, start)
  except errors.DamagedSourceError:
    # The source turned out damaged while being converted: what was made from it is not kept.
    shutil.rmtree(os.path.join(output, PARTIAL_DIR), ignore_errors=True)
    with contextlib.suppress(OSError):
      os.remove(os.path.join(output, LOCK_FILE))
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(output)
    raise


def _prepare_locked(plan: _Plan, output: str, image_size: int, strict: bool, workers: int,
                    jpeg_quality: int, progress: bool, source: str,
                    start: float) -> dict[str, Any]:
  """The conversion itself, under the output folder's lock."""
  with _locked(output):
    description = prepared_format.read_dataset_json(output)
    if description is not None and prepared_format.is_complete(output):
      return _noop_report(output, description, image_size, source)  # another process made it
    _check_output_usable(output)
    work_dir = os.path.join(output, PARTIAL_DIR)
    _open_work_dir(work_dir, {'source': plan.source, 'kind': plan.kind,
                              'source_files': plan.source_files,
                              'image_size': image_size, 'jpeg_quality': jpeg_quality,
                              'parts': [p.name for p in plan.parts]})
    todo = [p for p in plan.parts if not _part_done(work_dir, p)]
    if len(todo) < len(plan.parts):
      logging.info('resuming: %d of %d parts already done', len(plan.parts) - len(todo),
                   len(plan.parts))
    try:
      _run_parts(todo, work_dir, image_size, jpeg_quality, strict, workers, progress)
      return _finish(plan, output, work_dir, image_size, jpeg_quality, workers,
                     time.monotonic() - start)
    except KeyboardInterrupt:
      finished = sum(_part_done(work_dir, p) for p in plan.parts)
      raise errors.Interrupted(
          f'Ctrl-C; {finished} of {len(plan.parts)} parts are finished and kept in {work_dir} '
          '(unfinished files removed): rerun the same command to continue') from None


def _open_work_dir(work_dir: str, run: dict[str, Any]) -> None:
  """Creates the folder of unfinished parts, emptied first if it holds another preparation's."""
  run_file = os.path.join(work_dir, 'run.json')
  if os.path.isdir(work_dir):
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError), open(run_file) as f:
      if json.load(f) != run:
        logging.info('restarting: %s holds parts of another preparation', work_dir)
        shutil.rmtree(work_dir)
  try:
    os.makedirs(work_dir, exist_ok=True)
    _write_json(run_file, run)
  except OSError as e:
    raise write_error(run_file, e) from e


def _part_done(work_dir: str, part: _Part) -> bool:
  return os.path.isfile(os.path.join(work_dir, part.name + '.json'))


def _checked_output(source: str, output: str, jpeg_quality: int) -> str:
  """The output folder as an absolute path, once it and the JPEG quality are usable."""
  if not 1 <= jpeg_quality <= 100:
    raise errors.InputError(f'jpeg_quality must be in 1..100, got {jpeg_quality}')
  output = os.path.abspath(output)
  if os.path.exists(output) and not os.path.isdir(output):
    raise errors.InputError(f'output {output} exists and is not a folder')
  _check_output_outside(source, output)
  return output


def _check_output_outside(source: str, output: str) -> None:
  """Refuses an output folder inside the source: it would be read as part of the source."""
  if source in ('digits', 'tfds') or not os.path.isdir(source):
    return
  root = os.path.realpath(source)
  target = os.path.realpath(output)
  if target == root or target.startswith(root + os.sep):
    raise errors.InputError(
        f'--output {output} is inside the source {os.path.abspath(source)}; prepare into a '
        'folder outside it (inside, it would be read as part of the source)')


def ensure_prepared(source: str, output: str, *, image_size: int = 256,
                    strict: bool = False, workers: int = 1,
                    jpeg_quality: int = 95) -> dict[str, Any]:
  """`prepare` for callers such as train.py: returns at once when `output` is complete.

  Call it from one process per output folder or let the others wait: a file lock
  serialises concurrent calls, and the waiting ones then find the dataset complete.
  """
  description = prepared_format.read_dataset_json(output) if output else None
  if description is not None and prepared_format.is_complete(output):
    return _noop_report(os.path.abspath(output), description, image_size, source)
  return prepare(source, output, image_size=image_size, strict=strict,
                 workers=workers, jpeg_quality=jpeg_quality)


def _ignore_ctrl_c() -> None:
  """In a worker: Ctrl-C reaches the whole process group, but only the parent acts on it
  (it stops handing out parts; a worker finishes its part, or the parent ends it).

  The worker started with Ctrl-C blocked (`_ctrl_c_held`): one that was still importing
  this module when Ctrl-C came keeps it pending, and ignoring it here discards it.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
  """Holds back Ctrl-C in this thread while worker processes start.

  A spawned worker imports this module before its initializer runs; the blocked
  signal mask survives fork and exec, so a Ctrl-C during that import waits for
  `_ignore_ctrl_c` instead of printing a traceback. Here it is delivered when
  the block ends.
  """
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _execute(tasks: list[tuple[Any, ...]], workers: int,
             bar: _Progress) -> Iterator[Any]:
  """Runs (work, fn, *args) tasks, in worker processes if workers > 1; yields results.

  Results come in completion order; each task's `work` advances the progress line.
  """
  if workers <= 1 or len(tasks) <= 1:
    for work, fn, *args in tasks:
      result = fn(*args)
      bar.update(work, result['images'])
      yield result
    return
  # spawn, not fork: the caller may hold JAX or threads, which do not survive fork.
  context = multiprocessing.get_context('spawn')
  pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)),
                                                mp_context=context,
                                                initializer=_ignore_ctrl_c)
  try:
    with _ctrl_c_held():  # the workers start during the submits
      futures = {pool.submit(fn, *args): work for work, fn, *args in tasks}
    for future in concurrent.futures.as_completed(futures):
      result = future.result()
      bar.update(futures[future], result['images'])
      yield result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _run_parts(parts: list[_Part], work_dir: str, image_size: int, jpeg_quality: int,
               strict: bool, workers: int, progress: bool) -> None:
  bar = _Progress(sum(p.work for p in parts), len(parts), enabled=progress)
  tasks = [(p.work, _run_part, p, work_dir, image_size, jpeg_quality, strict)
           for p in parts]
  for _ in _execute(tasks, workers, bar):
    pass


def _train_counts(plan: _Plan, results: list[tuple[_Part, dict[str, Any]]]) -> np.ndarray:
  """Decoded training images per class; raises ValueError when a class has none."""
  train_counts = np.zeros(len(plan.class_names), np.int64)
  for part, result in results:
    if part.split == 'train':
      for label, count in result['label_counts']:
        train_counts[label] += count
  if not train_counts.any():
    raise errors.InputError(f'no training image of {plan.source} could be decoded')
  empty = [plan.class_names[i] for i in np.flatnonzero(train_counts == 0)]
  if empty:
    raise errors.InputError(f'classes without any decodable training image: '
                            f'{", ".join(empty[:5])}{" ..." if len(empty) > 5 else ""}')
  return train_counts


def _merge_stats(results: list[tuple[_Part, dict[str, Any]]], work_dir: str,
                 image_size: int) -> dict[str, np.ndarray]:
  """The mean image and RGB PCA of the training split, from each part's sums."""
  stats = _Stats(image_size)
  for part, _ in results:
    if part.split == 'train':
      with np.load(os.path.join(work_dir, part.name + '.npz')) as sums:
        stats.merge(sums['pixel_sum'], sums['outer_sum'], sums['count'])
  return stats.finish()


def _move_shards(results: list[tuple[_Part, dict[str, Any]]], work_dir: str, output: str
                 ) -> tuple[dict[str, list[Any]], dict[str, int], dict[str, int], list[Any]]:
  """Renames the parts' shards into place: (shards, sizes, skipped counts, skipped files)."""
  shards, sizes, skipped = {}, {}, {}
  skipped_files = []
  for split in prepared_format.SPLITS:
    filled = [(p, r) for p, r in results if p.split == split and r['converted']]
    shards[split] = []
    for i, (part, result) in enumerate(filled):
      name = f'{split}.array_record-{i:05d}-of-{len(filled):05d}'
      src, dst = (os.path.join(work_dir, part.name + '.array_record'),
                  os.path.join(output, name))
      if os.path.exists(src):  # Absent if an interrupted _finish moved it already.
        os.replace(src, dst)
      shards[split].append([name, result['converted']])
    sizes[split] = sum(n for _, n in shards[split])
    split_skips = [s for p, r in results if p.split == split for s in r['skipped']]
    skipped[split] = len(split_skips)
    skipped_files.extend(split_skips)
  return shards, sizes, skipped, skipped_files


def _check_shards(output: str, shards: dict[str, list[Any]],
                  results: list[tuple[_Part, dict[str, Any]]]) -> None:
  """Each final shard has the size and record count its part wrote (read back at write
  time), so dataset.json never describes a shard that a failed move or copy cut short."""
  written = {}
  for split in prepared_format.SPLITS:
    filled = [r for p, r in results if p.split == split and r['converted']]
    written.update({name: r.get('bytes') for (name, _), r in zip(shards[split], filled)})
  for split in prepared_format.SPLITS:
    for name, count in shards[split]:
      path = os.path.join(output, name)
      size = os.path.getsize(path) if os.path.isfile(path) else None
      if size is None or (written[name] is not None and size != written[name]):
        raise errors.UserError(f'{path} is {"missing" if size is None else f"{size} bytes"}, '
                               f'not the {written[name]} bytes written; delete {output} and '
                               'prepare again')
      reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
      try:
        found = reader.num_records()
      finally:
        reader.close()
      if found != count:
        raise errors.UserError(f'{path} holds {found} records, not the {count} written; '
                               f'delete {output} and prepare again')


def _finish(plan: _Plan, output: str, work_dir: str, image_size: int, jpeg_quality: int,
            workers: int, seconds: float) -> dict[str, Any]:
  """Merges the parts into the final layout; dataset.json is written last."""
  results = []
  for part in plan.parts:
    with open(os.path.join(work_dir, part.name + '.json')) as f:
      results.append((part, json.load(f)))
  train_counts = _train_counts(plan, results)
  statistics = _merge_stats(results, work_dir, image_size)
  stats_path = os.path.join(output, prepared_format.STATS_FILE)
  try:
    prepared_format.write_stats(stats_path, statistics)
  except OSError as e:
    raise write_error(stats_path, e) from e
  shards, sizes, skipped, skipped_files = _move_shards(results, work_dir, output)
  _check_shards(output, shards, results)
  if skipped_files:
    logging.warning('skipped %d undecodable files, e.g. %s: %s', len(skipped_files),
                    *skipped_files[0])

  report = {
      'source': plan.source, 'kind': plan.kind, 'converted': sizes, 'skipped': skipped,
      'skipped_files': skipped_files[:MAX_LISTED_SKIPS], **plan.notes, **(plan.official or {}),
      'rotated': sum(r.get('rotated', 0) for _, r in results),
      'workers': workers, 'seconds': round(seconds, 2),
  }
  description = {
      'format': prepared_format.FORMAT,
      'record': prepared_format.RECORD_LAYOUT,
      'source': plan.source,
      'kind': plan.kind,
      'image_size': image_size,
      'jpeg_quality': jpeg_quality,
      'num_classes': len(plan.class_names),
      'class_names': plan.class_names,
      'class_descriptions': plan.class_descriptions,
      'splits': sizes,
      'shards': shards,
      'stats_file': prepared_format.STATS_FILE,
      'train_class_counts': train_counts.tolist(),
      'eigvals': statistics['eigvals'].tolist(),
      'eigvecs': statistics['eigvecs'].tolist(),
      'channel_mean': statistics['channel_mean'].tolist(),
      'report': report,
      'complete': True,
  }
  if plan.official is not None:
    description['official_complete'] = plan.official['official_complete']
    description['source_files'] = plan.source_files
  description_path = os.path.join(output, prepared_format.DATASET_FILE)
  try:
    _write_json(description_path, description)
  except OSError as e:
    raise write_error(description_path, e) from e
  shutil.rmtree(work_dir, ignore_errors=True)
  return dict(report, output=output, noop=False)


# ----------------------------------------------------------------------------------
# Statistics for a tensorflow-datasets imagenet2012 read in place (source='tfds').


@functools.cache
def _tfds_train_records(data_dir: str):
  import tensorflow_datasets as tfds  # Slow to import; only this source needs it.

  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  if not builder.is_prepared():
    raise errors.MissingInputError(f'no prepared tfds imagenet2012 under {data_dir} '
                                   f'({builder.data_dir} is missing)')
  return tfds.data_source('imagenet2012', split='train', data_dir=data_dir,
                          download=False,
                          decoders={'image': tfds.decode.SkipDecoding()})


def _tfds_stats_part(data_dir: str, start: int, stop: int,
                     image_size: int) -> dict[str, Any]:
  records = _tfds_train_records(data_dir)
  stats = _Stats(image_size)
  for index in range(start, stop):
    # The very resize the 'tfds' input pipeline applies on the fly.
    stats.add(decoding.decode_and_resize(records[index]['image'], image_size))
  return {'pixel_sum': stats.pixel_sum, 'outer_sum': stats.outer_sum,
          'count': stats.count, 'images': stats.count}


def prepare_tfds_stats(data_dir: str, *, image_size: int = 256, workers: int = 1,
                       progress: bool = True) -> dict[str, Any]:
  """Writes the training statistics of tfds' imagenet2012 train split into data_dir.

  The 'tfds' input source reads the dataset in place and resizes on the fly; this
  computes the per-pixel mean and RGB PCA of exactly those resized images, streaming,
  so that source need not fall back to the ImageNet constants. A no-op if the file
  exists.
  """
  data_dir = os.path.abspath(data_dir)
  path = prepared_format.tfds_stats_file(data_dir, image_size)
  if os.path.isfile(path):
    return {'output': path, 'noop': True}
  start = time.monotonic()
  num_records = len(_tfds_train_records(data_dir))
  step = 2 * FILES_PER_PART
  tasks = [(min(step, num_records - i), _tfds_stats_part, data_dir, i,
            min(i + step, num_records), image_size)
           for i in range(0, num_records, step)]
  bar = _Progress(num_records, len(tasks), enabled=progress)
  stats = _Stats(image_size)
  for result in _execute(tasks, workers, bar):
    stats.merge(result['pixel_sum'], result['outer_sum'], result['count'])
  prepared_format.write_stats(path, stats.finish())
  return {'output': path, 'noop': False, 'converted': {'train': stats.count},
          'seconds': round(time.monotonic() - start, 2)}


# ----------------------------------------------------------------------------------
# Command line.


def summary_line(report: dict[str, Any]) -> str:
  """The one line `prepare` prints: what it stored, skipped, turned upright and ignored."""
  converted = report['converted']
  text = (f'prepared {report["output"]}: train {converted["train"]}, val {converted["val"]} '
          'images')
  if not converted['val']:
    text += (' (no validation images: launch.py refuses to train without them; add a val/ '
             'split to the source)')
  text += (f'; skipped {sum(report["skipped"].values())} undecodable; '
           f'{report.get("rotated", 0)} turned upright by their EXIF orientation')
  if 'ignored_files' in report:
    text += f'; ignored {report["ignored_files"]} other files'
  if report.get('official_complete'):
    text += '; the complete official ILSVRC-2012 set'
  elif 'official_complete' in report:
    text += (f'; not the complete official ILSVRC-2012 set: {_official_shortfall(report)} '
             '(--strict refuses it)')
  return text + f'; {report["seconds"]:.1f} s'


def _define_flags() -> None:
  # Defined only when run as a script: spawned workers re-import this file as
  # __mp_main__, and flags defined at import would then clash with the package copy.
  flags.DEFINE_string('source', None, 'Official-tars folder, ImageFolder root, '
                      '"digits", or "tfds" (statistics of a tfds imagenet2012 in '
                      '--output, its data_dir).', required=True)
  flags.DEFINE_string('output', None, 'Folder to write the prepared dataset to.',
                      required=True)
  flags.DEFINE_bool('strict', False, 'Fail on the first undecodable image instead of '
                    'skipping it, and refuse official tars that do not hold the whole '
                    'ILSVRC-2012 set (1000 synsets, 50,000 validation images).')
  flags.DEFINE_integer('image_size', 256, 'Side of the stored square images, pixels.')
  flags.DEFINE_integer('workers', 1, 'Processes converting in parallel; at most one per '
                       f'CPU core and one per {WORKER_BYTES // 2**20} MiB of available memory '
                       '(more are capped, with a log line).')
  flags.DEFINE_integer('jpeg_quality', 95, 'Quality of the stored JPEGs.')


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  report = prepare(f.source, f.output, image_size=f.image_size, strict=f.strict,
                   workers=f.workers, jpeg_quality=f.jpeg_quality)
  if report['noop']:
    print(f'{report["output"]} is already complete; nothing to do.')
    return
  if f.source == 'tfds':
    print(f'wrote {report["output"]} from {report["converted"]["train"]} tfds train '
          f'images; {report["seconds"]:.1f} s')
    return
  print(summary_line(report))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
