"""Quickstart: a reduced AlexNet on scikit-learn's bundled handwritten digits.

The whole pipeline runs (JPEG shards, random crops, PCA lighting, two towers,
the paper's optimizer, checkpoints, 10-crop evaluation) on a laptop CPU in a few
minutes. The dataset (1,797 real 8x8 scans, 10 classes) is prepared into
`data.dir` on first use.

  python launch.py --config=configs/digits.py --workdir=runs/digits
"""

import ml_collections

from alexnet_jax.configs import imagenet


def get_config() -> ml_collections.ConfigDict:
  config = imagenet.get_config()
  config.batch_size = 64
  config.num_epochs = 20
  config.eval_every_epochs = 5
  # The 10-crop test mirrors half its views: right for ImageNet, wrong for digits.
  config.final_eval_crops = 1

  config.mesh.data = -1
  config.mesh.model = 'auto'  # 1 on a laptop's one device, 2 on an even device count.

  config.model.num_classes = 10
  config.model.width = 0.25  # conv widths 24, 64, 96, 96, 64; fc 1024
  # He init on unit-scale inputs: at this width the paper's N(0, 0.01^2) init leaves
  # the loss flat for many epochs (the trap Caffe's reproduction reported).
  config.model.init_scheme = 'he'
  config.model.input_scale = 1 / 64
  config.model.dropout_rate = 0.5

  config.data.source = 'prepared'
  config.data.dir = 'data/digits'  # relative to the current directory
  config.data.prepare_from = 'digits'  # prepared on first use
  config.data.image_size = 72  # digits are upsampled from 8x8 to 72x72
  config.data.crop_size = 64  # random 64x64 crops: small shifts, like the paper's 224 of 256
  config.data.flip = False  # a mirrored digit is another symbol

  config.optim.learning_rate = 0.01
  config.optim.schedule = 'step'
  config.optim.step_epochs = (15,)

  config.checkpoint.every_steps = 200
  config.log.every_steps = 20
  return config
