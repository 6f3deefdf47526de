"""The work of a preparation: the parts it converts, each into one shard, and their images.

A part is the unit that is converted, resumed and counted as done: one synset
tar, or a chunk of FILES_PER_PART (val tar: twice as many) files. `Work` is all of
them for one source.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np

from alexnet_jax.prepare import tars

FILES_PER_PART = 512


@dataclasses.dataclass(frozen=True)
class Part:
  """A unit of work: its images go to one shard, in a fixed order.

  kind 'synset_tar': a `<wnid>.tar` inside the train tar at byte `offset`, `size` long,
    all of class `label`. 'tar_members': `items` = (name, offset, size, label) of files
    inside the tar at `path`. 'files': `items` = (path, label). 'arrays': `items` =
    (key, uint8 image, label).
  """
  split: str
  index: int
  kind: str
  weight: int  # Progress weight: bytes read (or images for 'arrays').
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
class Work:
  """What one preparation converts: the source as recognised, its classes and its parts."""
  kind: str  # 'imagenet_tars' | 'image_folder' | 'digits'
  source: str
  class_names: list[str]
  class_descriptions: list[str]
  parts: list[Part]
  notes: dict[str, int]  # Counts of inputs left out before conversion.
  # Official tars only: what the source holds of the official set (`labels.official_counts`),
  # and the sizes of the tars it was read from (`tars.source_files`).
  official: dict[str, Any] | None = None
  source_files: dict[str, int | None] | None = None


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  """`items` in consecutive slices of `size` (the last one shorter)."""
  for start in range(0, len(items), size):
    yield items[start:start + size]


def part_images(part: Part) -> Iterator[tuple[str, int, bytes | np.ndarray]]:
  """Yields (key for messages, label, encoded image or uint8 pixels)."""
  if part.kind == 'synset_tar':
    yield from tars.read_synset_tar(part.path, part.offset, part.size, part.member, part.label)
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
