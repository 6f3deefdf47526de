"""One-time conversion of a dataset into the paper's preprocessed form (ArrayRecord shards,
stats.npz, dataset.json); `python -m alexnet_jax.prepare --help` is its manual.

This face hands on what code outside the package uses; the work is in the modules:
labels, tars, parts, sources (what to convert), shards, pixel_stats, pool,
progress_line (converting it), output_dir, finish (the output folder), driver
(`prepare`), tfds_stats (--source=tfds), command and __main__ (the command line).
"""

from alexnet_jax.prepare.command import summary_line
from alexnet_jax.prepare.driver import ensure_prepared
from alexnet_jax.prepare.driver import prepare
from alexnet_jax.prepare.labels import imagenet_validation_wnids
from alexnet_jax.prepare.labels import imagenet_wnids
from alexnet_jax.prepare.output_dir import LOCK_FILE
from alexnet_jax.prepare.output_dir import PARTIAL_DIR
from alexnet_jax.prepare.pool import WORKER_BYTES
from alexnet_jax.prepare.pool import worker_limit
from alexnet_jax.prepare.shards import convert_image
from alexnet_jax.prepare.sources import DIGIT_NAMES
from alexnet_jax.prepare.sources import IMAGE_EXTENSIONS
from alexnet_jax.prepare.tars import TRAIN_TAR
from alexnet_jax.prepare.tars import VAL_TAR
from alexnet_jax.prepare.tfds_stats import prepare_tfds_stats

__all__ = [
    'DIGIT_NAMES', 'IMAGE_EXTENSIONS', 'LOCK_FILE', 'PARTIAL_DIR', 'TRAIN_TAR', 'VAL_TAR',
    'WORKER_BYTES', 'convert_image', 'ensure_prepared', 'imagenet_validation_wnids',
    'imagenet_wnids', 'prepare', 'prepare_tfds_stats', 'summary_line', 'worker_limit',
]
