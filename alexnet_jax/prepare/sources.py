"""Recognising a source (digits, the official tars, an ImageFolder) and listing its work.

`list_work` reads the source only (listings, the tars' checks): a source it
refuses leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import tarfile
from typing import Mapping

from absl import logging
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from alexnet_jax.prepare import labels
from alexnet_jax.prepare import parts
from alexnet_jax.prepare import tars

IMAGE_EXTENSIONS = frozenset((
    '.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.gif', '.tif', '.tiff',
    '.webp', '.ppm', '.pgm', '.pbm', '.pnm'))
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
               'nine')
_VAL_NAME_RE = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')
_WNID_TAR_RE = re.compile(r'(n\d{8})\.tar')


def list_work(source: str) -> parts.Work:
  """Recognises the source and lists its parts; raises on unusable sources."""
  if source == 'digits':
    return _list_digits()
  if not source:
    raise errors.InputError('no source given: pass --source=FOLDER or --source=digits')
  if not os.path.exists(source):
    raise errors.MissingInputError(f'source folder {source} does not exist')
  if not os.path.isdir(source):
    raise errors.InputError(f'source {source} is not a folder (give the folder that holds '
                            f'{tars.TRAIN_TAR}, or an ImageFolder root)')
  source = os.path.abspath(source)
  if os.path.isfile(os.path.join(source, tars.TRAIN_TAR)):
    return _list_tars(source)
  if os.path.isdir(os.path.join(source, 'train')):
    return _list_image_folder(source)
  what = ('is empty' if not os.listdir(source)
          else f'holds neither {tars.TRAIN_TAR} nor train/')
  raise errors.InputError(
      f'source folder {source} {what}: it should hold the official tars ({tars.TRAIN_TAR}, '
      f'{tars.VAL_TAR}) or an ImageFolder tree (train/<class>/<image>, val/<class>/<image>)')


def _list_digits() -> parts.Work:
  from sklearn import datasets  # Imported here: slow, and only this source needs it.

  digits = datasets.load_digits()
  # load_digits holds 0..16 intensities; map them onto the 0..255 range of a photo.
  pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
  targets = digits.target.astype(int)
  seen = np.zeros(10, int)
  splits = {'train': [], 'val': []}
  for i, label in enumerate(targets):
    split = 'val' if seen[label] % 5 == 0 else 'train'
    seen[label] += 1
    splits[split].append((f'digits[{i}]', pixels[i], int(label)))
  found = []
  for split in prepared_format.SPLITS:
    for index, chunk in enumerate(parts.chunks(splits[split], parts.FILES_PER_PART)):
      found.append(parts.Part(split, index, 'arrays', weight=len(chunk), items=tuple(chunk)))
  return parts.Work('digits', 'digits', [str(i) for i in range(10)], list(DIGIT_NAMES),
                    found, {})


def _list_tars(folder: str) -> parts.Work:
  """The parts of the official tars: one per synset tar, the val images in chunks."""
  train_tar = os.path.join(folder, tars.TRAIN_TAR)
  all_wnids = labels.imagenet_wnids()
  source_files = tars.source_files(folder)
  synsets = _train_synsets(train_tar, set(all_wnids))
  class_names = [w for w in all_wnids if w in synsets]
  label_of = {w: i for i, w in enumerate(class_names)}
  found = [
      parts.Part('train', i, 'synset_tar', weight=synsets[w].size, path=train_tar,
                 offset=synsets[w].offset_data, size=synsets[w].size, label=i,
                 member=synsets[w].name)
      for i, w in enumerate(class_names)
  ]
  notes = {'val_outside_classes': 0}
  val_tar = os.path.join(folder, tars.VAL_TAR)
  val_images = 0
  if os.path.isfile(val_tar):
    val_parts, val_images, notes['val_outside_classes'] = _val_parts(val_tar, label_of)
    found.extend(val_parts)
  else:
    logging.warning('%s not found: the val split will be empty', val_tar)
  return parts.Work('imagenet_tars', folder, class_names,
                    labels.read_descriptions(folder, class_names), found, notes,
                    labels.official_counts(len(class_names), val_images), source_files)


def _train_synsets(train_tar: str, known: set[str]) -> dict[str, tarfile.TarInfo]:
  """The <wnid>.tar members of the outer train tar by wnid, each checked to be a whole tar."""
  members = [m for m in tars.tar_members(train_tar) if m.isfile()]
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
      tars.check_synset_tar(f, train_tar, member)
  return synsets


def _val_parts(val_tar: str,
               label_of: Mapping[str, int]) -> tuple[list[parts.Part], int, int]:
  """The val parts of the official val tar: (parts, files in the tar, files outside the classes).

  Labels come from the file numbers (tfds validation_labels.txt); images of a
  class absent from a partial train tar are left out and counted.
  """
  val_wnids = labels.imagenet_validation_wnids()
  val_members = [m for m in tars.tar_members(val_tar) if m.isfile()]
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
  found = [parts.Part('val', index, 'tar_members', weight=sum(c[3] for c in chunk),
                      path=val_tar, items=tuple(c[1:] for c in chunk))
           for index, chunk in enumerate(parts.chunks(items, parts.FILES_PER_PART * 2))]
  return found, len(val_members), outside


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


def _list_image_folder(root: str) -> parts.Work:
  train_dir = os.path.join(root, 'train')
  class_names = _class_folders(train_dir)
  if not class_names:
    raise errors.InputError(f'{train_dir} holds no class folders (expected '
                            'train/<class>/<image>)')
  try:
    known = set(labels.imagenet_wnids())
  except FileNotFoundError:  # no tensorflow-datasets: its labels.txt is sorted, as these are
    known = set()
  if all(name in known for name in class_names):
    # ImageNet classes take tfds' labels.txt order (a sorted list, as it happens).
    order = {w: i for i, w in enumerate(labels.imagenet_wnids())}
    class_names.sort(key=order.__getitem__)
  label_of = {name: i for i, name in enumerate(class_names)}
  notes = {'ignored_files': 0}
  found = []
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
    for index, chunk in enumerate(parts.chunks(items, parts.FILES_PER_PART)):
      found.append(parts.Part(split, index, 'files',
                              weight=sum(os.path.getsize(p) for p, _ in chunk),
                              items=tuple(chunk)))
  return parts.Work('image_folder', root, class_names,
                    labels.read_descriptions(root, class_names), found, notes)
