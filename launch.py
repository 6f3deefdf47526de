"""Trains and evaluates AlexNet from a checkout: the training command, alexnet_jax/launch.py.

  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet [--config.FIELD=VALUE ...]
  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet --dry_run
  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet --dry_run \
      --plan_devices=16 --plan_processes=2 --plan_platform=gpu   # a cluster, from a login node

The same command as `alexnet-train` and `python -m alexnet_jax.launch` of an installed package;
this file only lets a checkout run it without installing anything.
"""

from absl import flags

from alexnet_jax import launch

flags.adopt_module_key_flags(launch)  # --helpshort lists the command's flags

if __name__ == '__main__':
  launch.run()
