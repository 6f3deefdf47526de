"""Section 4.1: training without the PCA lighting augmentation.

The paper: altering the intensities of the RGB channels along their principal
components "reduces the top-1 error rate by over 1%". This config sets the
lighting alphas' standard deviation to 0 (no shift); crops and flips stay.

  python launch.py --config=configs/paper/no_lighting.py --workdir=runs/paper/no_lighting \
      --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.data.lighting_std = 0.0  # No PCA lighting shift.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
