"""Section 3.2: the one-GPU comparison net, against which the two-GPU net is 1.7% / 1.2% better.

The paper: the two-GPU scheme "reduces our top-1 and top-5 error rates by 1.7%
and 1.2%, respectively, as compared with a net with half as many kernels in each
convolutional layer trained on one GPU", and its footnote: "The one-GPU net
actually has the same number of kernels as the two-GPU net in the final
convolutional layer. This is because most of the net's parameters are in the first
fully-connected layer, which takes the last convolutional layer as input. So to
make the two nets have approximately the same number of parameters, we did not
halve the size of the final convolutional layer (nor the fully-connected layers
which follow)."

So: one tower (every layer sees all channels), conv1-conv4 at half width (48, 128,
192, 192 kernels), conv5 at 256 and fc6/fc7 at 4096 as in the paper. That is
59,798,312 parameters against the two-tower net's 60,965,224
(tests/test_paper_configs.py writes out the arithmetic). The paper trained it on
one GPU, hence mesh.model=1 (the data axis takes every device).

  python launch.py --config=configs/paper/one_tower.py --workdir=runs/paper/one_tower \
      --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet

# Kernels of conv1-conv5 at width 1.0: conv1-conv4 halved, conv5 kept (the footnote).
CONV_WIDTHS = (48, 128, 192, 192, 256)


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.towers = 1  # One tower: no grouped convolutions.
  config.model.conv_widths = CONV_WIDTHS  # Multiplied by model.width like the paper's widths.
  config.mesh.model = 1  # Trained on one GPU in the paper: nothing split per tower.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
