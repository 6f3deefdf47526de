"""Section 4.1, first form: training without random crops and horizontal flips.

The paper gives no error rate for this: "Without this scheme, our network
suffers from substantial overfitting, which would have forced us to use much
smaller networks." This config trains on the central 224 crop of each 256 image,
never mirrored (the crop evaluation uses); PCA lighting (the second form) stays.

  python launch.py --config=configs/paper/no_augmentation.py \
      --workdir=runs/paper/no_augmentation --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.data.random_crop = False  # The central crop only ...
  config.data.flip = False  # ... never mirrored.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
