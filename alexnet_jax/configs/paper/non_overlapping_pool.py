"""Section 3.4: non-overlapping max-pooling (stride s = window z = 2) instead of s=2, z=3.

The paper: overlapping pooling "reduces the top-1 and top-5 error rates by 0.4%
and 0.3%, respectively, as compared with the non-overlapping scheme s = 2, z = 2,
which produces output of equivalent dimensions". At a 224 crop (conv1 padding 2)
the maps are the same sizes (55 -> 27 -> 13 -> 6), so the parameter count is the
paper's 60,965,224; everything else is configs/imagenet.py.

  python launch.py --config=configs/paper/non_overlapping_pool.py \
      --workdir=runs/paper/non_overlapping_pool --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.pool_size = 2  # z = 2: windows no longer overlap ...
  config.model.pool_stride = 2  # ... at the paper's stride s = 2.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
