"""ImageNet's class labels as tensorflow-datasets ships them, and class descriptions.

The official tars carry wnids only: their label order and the validation labels
come from tfds' imagenet2012 label files, and how much of the official set a
source holds is counted against them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Sequence

from alexnet_jax.core import errors

# Optional wnid -> description files a user may keep next to the data (Kaggle's and
# Caffe's); the official tars themselves carry no human-readable class names.
DESCRIPTION_FILES = ('LOC_synset_mapping.txt', 'synset_words.txt')


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


def official_counts(train_synsets: int, val_images: int) -> dict[str, Any]:
  """How much of the official ILSVRC-2012 set the tars hold: [found, official] counts."""
  synsets, images = len(imagenet_wnids()), len(imagenet_validation_wnids())
  return {'official_complete': train_synsets == synsets and val_images == images,
          'train_synsets': [train_synsets, synsets], 'val_images': [val_images, images]}


def official_shortfall(official: dict[str, Any]) -> str:
  """'465 of 1000 synsets, 10 of 50,000 validation images'."""
  (synsets, all_synsets), (images, all_images) = official['train_synsets'], official['val_images']
  return (f'{synsets} of {all_synsets} synsets, {images:,} of {all_images:,} validation '
          'images')


def read_descriptions(folder: str, class_names: Sequence[str]) -> list[str]:
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
