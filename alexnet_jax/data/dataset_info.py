"""What a run knows about its dataset: classes, split sizes and training statistics.

`DatasetInfo` is what every source describes itself as (`sources.load_info`), what a
workdir stores and what the model, the loop and the figures read; kept apart from
the sources so that its readers need no record reader.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import preprocess


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset."""
  num_classes: int
  class_names: tuple[str, ...]  # wnids (ImageNet) or folder names, in label order.
  class_descriptions: tuple[str, ...]  # Human-readable names, else the class names.
  split_sizes: dict[str, int]  # 'train', 'val' -> number of examples.
  image_size: int  # Side of the stored (or on-the-fly resized) square images.
  mean_image: np.ndarray  # float32 (S, S, 3), 0-255 units.
  eigvals: np.ndarray  # float32 (3,), RGB covariance of [0, 1] pixels, descending.
  eigvecs: np.ndarray  # float32 (3, 3), columns are the components.
  stats_source: str  # Where mean/PCA come from: a file path or 'imagenet_constants'.


def mean_for_config(info: DatasetInfo,
                    data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The `mean_image` argument of `preprocess.normalize`: (S, S, 3) or per channel (3,).

  data.mean is 'pixel' or 'channel' (the config's validation checks it).
  """
  if data_config.mean == 'pixel':
    return info.mean_image
  return preprocess.channel_mean_image(info.mean_image)


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
  """Full global batches per pass over the train split (0 if the batch is larger).

  The train stream is endless, so the remainder of one epoch starts the next batch.
  """
  return info.split_sizes['train'] // global_batch_size


def check_trainable(info: DatasetInfo, where: str) -> None:
  """Refuses a dataset of fewer than two classes: its softmax is 1 whatever the weights, so
  training would report loss 0 from the first step and learn nothing."""
  if info.num_classes < 2:
    raise errors.InputError(
        f'the dataset in {where} has {info.num_classes} class'
        f'{"" if info.num_classes == 1 else "es"} ({", ".join(info.class_names) or "none"}): '
        'a classifier needs two or more (with one its loss is 0 from the first step and it '
        'learns nothing); prepare a source with a folder per class')
