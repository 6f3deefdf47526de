"""Draws a run's pictures into WORKDIR/plots/ (see run_figures.py for what each shows).

  python -m alexnet_jax.plot --workdir=runs/digits [--step=N] [--max_train=2000] [--plots_dir=DIR]

- training_curves.png, throughput.png: from metrics.jsonl;
- conv1_kernels.png (the paper's figure 3): from the newest (or --step) checkpoint;
- nearest_neighbours.png (figure 4): from the checkpoint and the dataset; skipped,
  with a note, where the dataset is not on this machine.

Training writes the first three itself when it ends; this command redraws them
from a finished (or stopped) run. It only reads the workdir (no lock: it may run
beside the training); where WORKDIR/plots cannot be written (a read-only copy of
someone's run), --plots_dir writes the figures elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from PIL import Image

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.figures import run_figures
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import metric_log
from alexnet_jax.evaluation import finished_run
from alexnet_jax.model import alexnet


@dataclasses.dataclass(frozen=True)
class Outcome:
  name: str  # file name in WORKDIR/plots/
  path: str | None  # where it was written, None if skipped
  note: str = ''  # why it was skipped


def _writable(folder: str) -> None:
  """Raises UserError, before any drawing, when `folder` cannot be created or written."""
  try:
    fileio.ensure_writable_dir(folder)
  except OSError as e:
    raise errors.UserError(f'cannot write the figures into {folder} ({e.strerror or e}); '
                           'pass --plots_dir=DIR to write them elsewhere') from e


def _figure_fits(num_queries: int, num_neighbours: int) -> bool:
  """Whether nearest_neighbours.png opens in PIL without its decompression-bomb warning
  (more than PIL.Image.MAX_IMAGE_PIXELS pixels; PIL refuses twice that)."""
  size = run_figures.neighbour_figure_size(num_queries, num_neighbours)
  return size.width * size.height <= Image.MAX_IMAGE_PIXELS


def _largest_fitting(fits, most: int) -> int:
  """The largest n in [0, most] with fits(n) (0 if none); fits is true up to some n."""
  low, high = 0, most
  while low < high:
    middle = (low + high + 1) // 2
    low, high = (middle, high) if fits(middle) else (low, middle - 1)
  return low


def check_neighbour_figure(num_queries: int, num_neighbours: int) -> None:
  """Raises errors.InputError, before any work, for a figure 4 too large to open."""
  if num_queries < 1 or num_neighbours < 1:
    raise errors.InputError(f'--queries and --neighbours must be positive, got {num_queries} and '
                            f'{num_neighbours}')
  if _figure_fits(num_queries, num_neighbours):
    return
  size = run_figures.neighbour_figure_size(num_queries, num_neighbours)
  most = _largest_fitting(lambda k: k == 0 or _figure_fits(num_queries, k), num_neighbours)
  if most:
    advice = f'at --queries={num_queries}, --neighbours can be at most {most}'
  else:
    queries = _largest_fitting(lambda q: q == 0 or _figure_fits(q, 1), num_queries)
    advice = f'--queries can be at most {queries}'
  raise errors.InputError(
      f'--queries={num_queries} and --neighbours={num_neighbours} make a nearest-neighbour '
      f'figure of {size.width:,} x {size.height:,} pixels, more than PIL opens without a '
      f'decompression-bomb warning ({Image.MAX_IMAGE_PIXELS:,} pixels); {advice}')


def write_plots(workdir: str | os.PathLike[str], *, step: int | None = None,
                max_train: int = 2000, num_queries: int = 5,
                num_neighbours: int = 6, plots_dir: str | None = None) -> list[Outcome]:
  """Writes every picture the workdir allows; returns what was written or skipped and why.

  plots_dir: where the figures go; default WORKDIR/plots.

  Raises errors.InputError when figure 4 would be too large (check_neighbour_figure),
  FileNotFoundError when the workdir has neither metrics nor a checkpoint,
  checkpoint.CheckpointError when the checkpoint asked for is unreadable, UserError
  when the figures cannot be written.
  """
  check_neighbour_figure(num_queries, num_neighbours)
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.MissingInputError(f'workdir {workdir} does not exist')
  if not any(os.path.lexists(os.path.join(workdir, name))
             for name in (metric_log.METRICS_FILE, 'config.json')):
    # Refused before the plots folder is made: a folder that is not a run stays as it was.
    raise errors.MissingInputError(f'nothing to plot in {workdir}: no {metric_log.METRICS_FILE} '
                                   'and no config.json (not the workdir of a training run)')
  folder = plots_dir or run_figures.plots_dir(workdir)
  _writable(folder)
  try:
    return _write_plots(workdir, folder, step, max_train, num_queries, num_neighbours)
  except OSError as e:
    if isinstance(e, errors.UserError) or not e.filename or not os.fspath(e.filename).startswith(
        folder):
      raise
    raise errors.UserError(f'cannot write {e.filename} ({e.strerror})') from e


def _write_plots(workdir: str, folder: str, step: int | None, max_train: int, num_queries: int,
                 num_neighbours: int) -> list[Outcome]:
  outcomes = []
  try:
    written = run_figures.write_curve_plots(workdir, folder)
    outcomes += [Outcome(os.path.basename(p), p) for p in written]
    if len(written) == 1:
      outcomes.append(Outcome(run_figures.THROUGHPUT_FILE, None, 'no images_per_sec in metrics'))
  except FileNotFoundError as e:
    outcomes += [Outcome(run_figures.CURVES_FILE, None, str(e)),
                 Outcome(run_figures.THROUGHPUT_FILE, None, str(e))]

  try:
    config = finished_run.load_config(workdir)
    model = alexnet.from_config(config.model)
    params, _ = finished_run.restore_params(workdir, config, step)
  except FileNotFoundError as e:
    if not any(o.path for o in outcomes):
      raise errors.MissingInputError(f'nothing to plot in {workdir}: no {metric_log.METRICS_FILE} '
                                     f'and no checkpoint ({e})') from e
    return outcomes + [Outcome(run_figures.KERNELS_FILE, None, str(e)),
                       Outcome(run_figures.NEIGHBOURS_FILE, None, str(e))]
  outcomes.append(Outcome(run_figures.KERNELS_FILE, run_figures.plot_conv1_kernels(
      params['conv1']['kernel'], config.model.towers,
      os.path.join(folder, run_figures.KERNELS_FILE))))
  try:
    info = finished_run.dataset_info(workdir, config)
    path = run_figures.nearest_neighbour_figure(
        os.path.join(folder, run_figures.NEIGHBOURS_FILE), params=params, model=model,
        data_config=config.data, mean_image=input_pipeline.mean_for_config(info, config.data),
        class_descriptions=info.class_descriptions, num_queries=num_queries,
        num_neighbours=num_neighbours, max_train=max_train, seed=config.seed)
    outcomes.append(Outcome(run_figures.NEIGHBOURS_FILE, path))
  except FileNotFoundError as e:
    note = f'needs the dataset, which is not here: {e}'
    logging.info('%s skipped: %s', run_figures.NEIGHBOURS_FILE, note)
    outcomes.append(Outcome(run_figures.NEIGHBOURS_FILE, None, note))
  return outcomes


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
  flags.DEFINE_integer('step', None, 'Checkpoint step for the figures; default the newest.')
  flags.DEFINE_integer('max_train', 2000, 'Training images searched for nearest neighbours.',
                       lower_bound=1)
  flags.DEFINE_integer('queries', 5, 'Validation images in the nearest-neighbour figure.',
                       lower_bound=1)
  flags.DEFINE_integer('neighbours', 6, 'Neighbours shown per validation image (the figure '
                       'must stay under PIL\'s MAX_IMAGE_PIXELS: 700 at 5 queries).',
                       lower_bound=1)
  flags.DEFINE_string('plots_dir', None, 'Where to write the figures; default WORKDIR/plots.')
  flags.mark_flag_as_required('workdir')


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.start_reader()
  outcomes = write_plots(FLAGS.workdir, step=FLAGS.step, max_train=FLAGS.max_train,
                         num_queries=FLAGS.queries, num_neighbours=FLAGS.neighbours,
                         plots_dir=FLAGS.plots_dir)
  for o in outcomes:
    print(f'wrote   {o.path}' if o.path else f'skipped {o.name}: {o.note}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
