r"""One-time conversion of a dataset into the paper's preprocessed form.

  python -m alexnet_jax.prepare --source=SRC --output=DIR [--strict] \
      [--image_size=256] [--workers=N] [--jpeg_quality=95] [--format=jpeg|raw] [--verify]

SRC is one of:
  * a folder with the official ILSVRC-2012 tars, as tensorflow-datasets' imagenet2012
    expects them: `ILSVRC2012_img_train.tar` (one `<wnid>.tar` per synset inside) and
    `ILSVRC2012_img_val.tar` (flat `ILSVRC2012_val_NNNNNNNN.JPEG` files, labelled from
    tfds' `validation_labels.txt`). Both are read in place, never extracted to disk.
  * an ImageFolder root: `train/<class>/<image>` and `val/<class>/<image>` (any image
    format PIL reads; the extension does not have to match the content).
  * the word `digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8
    images, 10 classes), upsampled and JPEG-encoded through the same path; every
    fifth image of each class (in load_digits order) is validation.
  * the word `tfds` with --output=DATA_DIR: nothing is converted; the training
    statistics of a tensorflow-datasets imagenet2012 already prepared (ArrayRecord) in
    DATA_DIR are written next to it, for input source 'tfds' (see input_pipeline).
  A `val/` folder or val tar is optional (the val split is then empty).

The official tars are checked before they are trusted: each must be a plain (not
compressed) tar read to its end-of-archive marker, every `<wnid>.tar` member a
whole tar (and read to its end when converted). A cut, compressed or damaged
tar is one `error:` line, and nothing made from it is kept. How much of the
official set the tars hold (1000 synsets, 50,000 validation images) is in the
summary line and dataset.json (`official_complete`, `train_synsets`,
`val_images`); --strict refuses less than all of it. dataset.json records the
tars' sizes (`source_files`): a rerun on other tars (a cut copy replaced by the
whole file) is refused, not taken as already complete.

Each image becomes the paper's input: turned upright when an EXIF orientation tag
says so, shorter side resized to image_size (pixel-area averaging when shrinking,
bicubic when enlarging), central image_size x image_size crop, re-encoded as JPEG.
Grayscale, CMYK, palette and PNG images are converted to RGB; files that cannot be
decoded are skipped and listed in the report (or stop the run with --strict). The
summary line counts the turned photos and the files ignored (links to nothing
included), and says when the val split is empty (training refuses such a dataset).

With --format=raw the same pixels are stored before encoding instead, and read
without decoding (docs/design.md, "Raw storage"): per split `<split>.u8` (uint8
(N, S, S, 3), no header, memory-mappable) and `<split>.labels.npy` (int32), with a
CRC-32 per 4096 images in dataset.json, checked on read-back after writing. The
size (N*S*S*3 bytes: about 252 GB for ImageNet at 256) is printed first, and a
disk without room for it is refused before anything is written.

DIR afterwards (--format=jpeg):
  train.array_record-00000-of-000NN ...  records: int32 little-endian label + JPEG
  val.array_record-00000-of-000MM ...
  stats.npz      training-set statistics of the stored (decoded) pixels:
                 mean_image (S, S, 3) float32 in 0-255 units; channel_mean (3,);
                 covariance (3, 3), eigvals (3,), eigvecs (3, 3; columns) of the RGB
                 covariance of pixels scaled to [0, 1], eigenvalues descending.
  dataset.json   classes (wnids, in tfds labels.txt order for ImageNet), human-readable
                 names, split sizes, shard list, image_size, the preparation report.
                 Written last: it is the completeness marker.

Interruptions: work happens in parts (one per synset tar, or ~512 files) recorded in
DIR/_partial/; a re-run resumes from the parts already done and a folder without
dataset.json is never taken for a dataset. A re-run on a complete DIR is a no-op
(with --verify it reads all of DIR back against its checksums, writing nothing). A
part's shard is read back (record count and CRC-32 of each record) before the part
counts as done, and the final shards are checked before dataset.json is written. Any
failure (a full disk, Ctrl-C, an undecodable image with --strict) removes the files of
the part being written (a damaged source tar: all of DIR's preparation files); errors
are one `error:` line with exit status 2, Ctrl-C one `interrupted:` line with 130.
DIR may not lie inside SRC. --workers is capped at one per CPU core and one per
WORKER_BYTES of available memory.
"""

# The docstring above is the command's --help text (absl prints the main module's), and
# the flags are defined here so that --helpshort lists them as this command's own.

from __future__ import annotations

from absl import app
from absl import flags

from alexnet_jax.prepare import command
from alexnet_jax.prepare import pool


def _define_flags() -> None:
  # Defined only when run as the command: `import alexnet_jax.prepare` (the trainer,
  # the tests) must not add these flags to another program's.
  flags.DEFINE_string('source', None, 'Official-tars folder, ImageFolder root, '
                      '"digits", or "tfds" (statistics of a tfds imagenet2012 in '
                      '--output, its data_dir).', required=True)
  flags.DEFINE_string('output', None, 'Folder to write the prepared dataset to.',
                      required=True)
  flags.DEFINE_bool('strict', False, 'Fail on the first undecodable image instead of '
                    'skipping it, and refuse official tars that do not hold the whole '
                    'ILSVRC-2012 set (1000 synsets, 50,000 validation images).')
  flags.DEFINE_integer('image_size', 256, 'Side of the stored square images, pixels.')
  flags.DEFINE_integer('workers', 1, 'Processes converting in parallel; at most one per '
                       f'CPU core and one per {pool.WORKER_BYTES // 2**20} MiB of available '
                       'memory (more are capped, with a log line).')
  flags.DEFINE_integer('jpeg_quality', 95, 'Quality of the stored JPEGs.')
  flags.DEFINE_enum('format', 'jpeg', ['jpeg', 'raw'], 'How the images are stored: "jpeg" '
                    '(ArrayRecord shards of JPEGs) or "raw" (the decoded uint8 pixels in one '
                    'memory-mappable file per split: no decoding when read, several times the '
                    'size; the size is stated, and checked against the free space, first).')
  flags.DEFINE_bool('verify', False, 'On a complete --output: read every image back and check '
                    'it (raw: the CRC-32 of each chunk in dataset.json; jpeg: every record of '
                    'every shard), instead of only reporting that it is complete. Writes nothing.')


if __name__ == '__main__':
  _define_flags()
  app.run(command.main)
