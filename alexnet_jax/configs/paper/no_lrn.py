"""Section 3.3: the network without local response normalisation.

The paper: "Response normalization reduces our top-1 and top-5 error rates by
1.4% and 1.2%, respectively." This config removes both LRN layers (after the
ReLUs of conv1 and conv2); everything else is configs/imagenet.py.

  python launch.py --config=configs/paper/no_lrn.py --workdir=runs/paper/no_lrn \
      --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.use_lrn = False  # No LRN after conv1 and conv2.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
