"""The prepare command: what `main` does with the flags, and the summary line it prints.

The flags themselves are defined by `__main__` (see there why).
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import app
from absl import flags

from alexnet_jax.core import cli
from alexnet_jax.prepare import driver
from alexnet_jax.prepare import labels


def summary_line(report: dict[str, Any]) -> str:
  """The one line `prepare` prints: what it stored, skipped, turned upright and ignored."""
  converted = report['converted']
  text = (f'prepared {report["output"]}: train {converted["train"]}, val {converted["val"]} '
          'images')
  if not converted['val']:
    text += (' (no validation images: launch.py refuses to train without them; add a val/ '
             'split to the source)')
  text += (f'; skipped {sum(report["skipped"].values())} undecodable; '
           f'{report.get("rotated", 0)} turned upright by their EXIF orientation')
  if 'ignored_files' in report:
    text += f'; ignored {report["ignored_files"]} other files'
  if report.get('official_complete'):
    text += '; the complete official ILSVRC-2012 set'
  elif 'official_complete' in report:
    text += (f'; not the complete official ILSVRC-2012 set: '
             f'{labels.official_shortfall(report)} (--strict refuses it)')
  return text + f'; {report["seconds"]:.1f} s'


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  report = driver.prepare(f.source, f.output, image_size=f.image_size, strict=f.strict,
                          workers=f.workers, jpeg_quality=f.jpeg_quality,
                          storage=f.format, verify=f.verify)
  if 'verified' in report:
    print(f'{report["output"]} is complete: all {report["verified"]:,} images read back and '
          'their checksums match.')
    return
  if report['noop']:
    print(f'{report["output"]} is already complete; nothing to do.')
    return
  if f.source == 'tfds':
    print(f'wrote {report["output"]} from {report["converted"]["train"]} tfds train '
          f'images; {report["seconds"]:.1f} s')
    return
  print(summary_line(report))
