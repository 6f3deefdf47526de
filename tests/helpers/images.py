"""Test images encoded as files hold them (JPEG, PNG), and the images a prepared split stores."""

import io
import json
import os
from typing import Optional

from array_record.python import array_record_module
import numpy as np
from PIL import Image

from alexnet_jax.data import decoding
from alexnet_jax.data import prepared_format


def encode(image: np.ndarray, fmt: str, mode: Optional[str] = None, **options) -> bytes:
  """`image` (uint8 HxW or HxWx3) as Pillow saves it in `fmt`, converted to `mode` first."""
  picture = Image.fromarray(image)
  buf = io.BytesIO()
  (picture.convert(mode) if mode else picture).save(buf, fmt, **options)
  return buf.getvalue()


def jpeg(image: np.ndarray, quality: int = 90, mode: Optional[str] = None, **options) -> bytes:
  return encode(image, 'JPEG', mode, quality=quality, **options)


def png(image: np.ndarray) -> bytes:
  return encode(image, 'PNG')


def read_split(folder: str, split: str) -> tuple[list[np.ndarray], list[int]]:
  """Decoded images and labels of a prepared split, in storage order."""
  with open(os.path.join(folder, prepared_format.DATASET_FILE)) as f:
    description = json.load(f)
  images, labels = [], []
  for name, count in description['shards'][split]:
    reader = array_record_module.ArrayRecordReader(os.path.join(folder, name))
    records = reader.read_all()
    reader.close()
    assert len(records) == count
    for record in records:
      data, label = prepared_format.decode_record(record)
      images.append(decoding.decode(data))
      labels.append(label)
  return images, labels
