"""Section 4.2: training without dropout in fc6 and fc7.

The paper gives no error rate for this: "Without dropout, our network exhibits
substantial overfitting. Dropout roughly doubles the number of iterations
required to converge." Compare the train and validation curves of the two runs
(WORKDIR/plots/training_curves.png) as well as the final errors.

  python launch.py --config=configs/paper/no_dropout.py --workdir=runs/paper/no_dropout \
      --config.data.dir=/data/imagenet_prepared
"""

import ml_collections

from alexnet_jax.configs import imagenet


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.dropout_rate = 0.0  # No dropout after fc6 and fc7.
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply(imagenet.get_config())
