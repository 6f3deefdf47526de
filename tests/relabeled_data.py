"""A copy of a prepared dataset with some labels of one split changed: a planted fault.

The images, statistics and dataset.json stay as they were, as when a dataset is
prepared again from a source whose labels were edited.
"""

import json
import os
import shutil
import struct

from array_record.python import array_record_module

from alexnet_jax.data import prepared_format
from alexnet_jax.prepare import shards


def relabeled_copy(data_dir: str, destination: str, split: str, count: int,
                   num_classes: int) -> str:
  """Copies `data_dir` to `destination` with the first `count` labels of `split` moved by one."""
  shutil.copytree(data_dir, destination)
  with open(os.path.join(destination, prepared_format.DATASET_FILE)) as f:
    description = json.load(f)
  left = count
  for name, _ in description['shards'][split]:
    path = os.path.join(destination, name)
    reader = array_record_module.ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    writer = array_record_module.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
    for record in records:
      if left > 0:
        label = (struct.unpack_from('<i', record)[0] + 1) % num_classes
        record = struct.pack('<i', label) + record[4:]
        left -= 1
      writer.write(record)
    writer.close()
  assert left == 0, f'the {split} split has fewer than {count} records'
  return destination
