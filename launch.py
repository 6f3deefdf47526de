"""Trains and evaluates AlexNet.

  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet [--config.FIELD=VALUE ...]
  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet --dry_run

This file is intentionally short: everything it runs lives in the `alexnet_jax`
library, importable and testable on its own.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import plan
from alexnet_jax import platform
from alexnet_jax import sharding
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots are written.')
flags.DEFINE_bool('dry_run', False, 'Resolve config and mesh, print the plan, and exit.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for multi-process runs (else taken from the cluster '
                    'environment, e.g. SLURM, when there is one).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
flags.DEFINE_bool('auto_distributed', False,
                  'Let JAX discover the processes of the job itself (Cloud TPU pod slices, whose '
                  'worker list comes from the TPU metadata rather than the environment).')
flags.mark_flags_as_required(['config', 'workdir'])


@cli.report_user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  added = platform.configure_xla_cpu()  # before anything starts JAX's backend
  if added:
    logging.info('XLA:CPU options added to XLA_FLAGS: %s', ' '.join(added))
  config = cli.config_from_flag('config')
  sharding.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                            auto_detect=FLAGS.auto_distributed)
  cli.start_backend()
  logging.info('JAX process %d of %d; local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.dry_run:
    plan.dry_run(config, FLAGS.workdir)
    return
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
