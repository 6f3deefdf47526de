"""Command: train and evaluate AlexNet (`alexnet-train`, `python -m alexnet_jax.launch`).

  alexnet-train --config=imagenet --workdir=runs/imagenet [--config.FIELD=VALUE ...]
  alexnet-train --config=imagenet --workdir=runs/imagenet --dry_run
  alexnet-train --config=imagenet --workdir=runs/imagenet --dry_run \
      --plan_devices=16 --plan_processes=2 --plan_platform=gpu   # a cluster, from a login node

A checkout's `python launch.py ...` runs this command with the same flags. Everything it
runs lives in the package's other modules, importable and testable on their own.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax.config import printing
from alexnet_jax.core import cli
from alexnet_jax.distributed import environment
from alexnet_jax.distributed import startup
from alexnet_jax.distributed import watch
from alexnet_jax.training import dry_run
from alexnet_jax.core import xla_flags
from alexnet_jax.training import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots are written.')
flags.DEFINE_bool('dry_run', False, 'Resolve config and mesh, print the plan, and exit.')
flags.DEFINE_bool('print_config', False,
                  'Print the resolved config, each field with its comment, and exit.')
# The cluster a dry run plans for without having it, and the figures of its estimates.
flags.DEFINE_integer('plan_devices', None,
                     'With --dry_run: plan for this many accelerator devices instead of the '
                     'visible ones (an abstract mesh; no devices needed).')
flags.DEFINE_integer('plan_processes', None,
                     'With --plan_devices: processes of the job (hosts, or one per GPU); '
                     'default 1.')
flags.DEFINE_enum('plan_platform', None, list(dry_run.PLATFORMS),
                  'With --plan_devices: the platform, which decides model.dtype \'auto\'.')
flags.DEFINE_integer('plan_host_cores', None,
                     'With --plan_devices: CPU cores per process, for data.num_threads -1 '
                     "(default: this machine's).")
flags.DEFINE_float('plan_device_memory_gib', None,
                   'With --dry_run: memory per device; the plan fails when its estimate does '
                   'not fit and names the largest per-device batch that does.')
flags.DEFINE_float('plan_images_per_sec', None,
                   'With --dry_run: training images per second of the whole job, for the time '
                   'of an epoch and of the run.')
flags.DEFINE_float('plan_peak_tflops', None,
                   'With --dry_run and --plan_efficiency: peak TFLOP/s of one device at the '
                   'compute dtype, for the time estimates.')
flags.DEFINE_float('plan_efficiency', None,
                   'With --plan_peak_tflops: the fraction of the peak a train step achieves.')
flags.DEFINE_integer('plan_train_images', None,
                     'With --dry_run: the train split size when the dataset cannot be read '
                     'from this machine (ImageNet: 1281167).')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for multi-process runs (else taken from the cluster '
                    'environment, e.g. SLURM, when there is one).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
flags.DEFINE_integer('coordinator_port', None,
                     'Port of the coordinator on the first node of a SLURM step or TPU slice, '
                     'instead of the one chosen (docs/cluster.md, "Coordinator and peers").')
flags.DEFINE_integer('distributed_timeout', environment.DEFAULT_TIMEOUT_S,
                     'Seconds each process of a multi-process run waits for the others at '
                     'start (and for their config) before it stops with one line.')
flags.DEFINE_bool('auto_distributed', False,
                  'Let JAX discover the processes of the job itself (Cloud TPU pod slices, whose '
                  'worker list comes from the TPU metadata rather than the environment).')
flags.mark_flag_as_required('config')
# Required as mark_flag_as_required does it (the same message), except by --print_config.
flags.register_validator('workdir', lambda value: value is not None or FLAGS.print_config,
                         message='Flag --workdir must have a value other than None.')


@cli.report_user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  target = dry_run.Target(
      devices=FLAGS.plan_devices, processes=FLAGS.plan_processes, platform=FLAGS.plan_platform,
      host_cores=FLAGS.plan_host_cores, device_memory_gib=FLAGS.plan_device_memory_gib,
      images_per_sec=FLAGS.plan_images_per_sec, peak_tflops=FLAGS.plan_peak_tflops,
      efficiency=FLAGS.plan_efficiency, train_images=FLAGS.plan_train_images)
  target.check()
  if not FLAGS.dry_run:
    target.used_without_dry_run()
  added = xla_flags.configure_xla_cpu()  # before anything starts JAX's backend
  if added:
    logging.info('XLA:CPU options added to XLA_FLAGS: %s', ' '.join(added))
  config = cli.config_from_flag('config')
  if FLAGS.print_config:
    return printing.print_config(config, FLAGS['config'].config_filename)
  startup.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto_detect=FLAGS.auto_distributed,
                           timeout_s=FLAGS.distributed_timeout,
                           coordinator_port=FLAGS.coordinator_port)
  cli.start_backend()
  logging.info('JAX process %d of %d; local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.dry_run:
    dry_run.dry_run(config, FLAGS.workdir, target)
    return
  trainer.train_and_evaluate(config, FLAGS.workdir)


def run() -> None:
  """Parses the command line and trains (or plans); exits with the run's status."""
  # exit_together outside report_user_errors: a process that stops (after its one line)
  # tells the other processes of the run.
  app.run(watch.exit_together(main), flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
