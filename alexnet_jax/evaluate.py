"""Evaluates trained runs on a whole split: one network, or an ensemble of several.

  python -m alexnet_jax.evaluate --workdir=runs/a [--step=newest|best|N] [--crops=1|10]
      [--split=val] [--data_dir=DIR] [--force]
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b ... [--output=FILE]

One --workdir: the checkpoint's loss, top-1 and top-5 error over the split, by
the very eval step training uses (step.eval_step through experiment.setup), so
the numbers equal the run's own evaluation of that checkpoint. The result is
written to WORKDIR/eval/<step>-<crops>crop.json (`-<split>` added for other
splits than val); asking again is answered from that file unless --force.

Several --workdir: the paper's "5 CNNs" row (Table 2). Each network's prediction
of an image (the mean softmax output of its views) is averaged over the
networks, and the errors are those of the averaged prediction. Each member is
also reported (and cached) on its own. The runs must have been trained on the
same dataset with the same class list.

--step: `newest` (default), `best` (the kept checkpoint with the lowest
validation error, as orbax stored it for the keep_best policy) or a step number;
with several runs, each resolves it itself. --crops defaults to the test the run
ended with (config.final_eval_crops). --data_dir replaces the run's config.data.dir
(the data moved, or another machine).

The work is done in alexnet_jax/evaluation/: checkpoint_eval.py (one run, through
the evaluator the training loop uses), ensemble.py (several) and eval_cache.py
(the files in WORKDIR/eval/).

The step is sharded like training: over the run's own mesh (config.mesh) when
the devices here can form it, else data-parallel over as many devices as divide
the batch. It runs as one process, over that process's devices. The runs are only read:
checkpoints are opened read-only (safe beside a run still training), no workdir lock is
taken (like predict and plot) and nothing but WORKDIR/eval/ is written.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from alexnet_jax.core import cli
from alexnet_jax.core import fileio
from alexnet_jax.evaluation import checkpoint_eval
from alexnet_jax.evaluation import ensemble as ensemble_eval
from alexnet_jax.config import eval_schema
from alexnet_jax.evaluation import finished_run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_multi_string('workdir', None, 'Workdir of a training run; several: their '
                            'ensemble (averaged softmax outputs).')
  flags.DEFINE_string('step', finished_run.NEWEST,
                      f"Checkpoint: '{finished_run.NEWEST}', '{finished_run.BEST}' (lowest "
                      'validation error among the kept ones) or a step number.')
  flags.DEFINE_enum('crops', None, ['10', '1'], '10: the paper\'s 10-crop test; 1: center crop. '
                    'Default: the test the run ended with (config.final_eval_crops).')
  flags.DEFINE_enum('split', 'val', list(eval_schema.SPLITS),
                    'Split of the dataset to evaluate on.')
  flags.DEFINE_string('data_dir', None, 'Dataset folder; default the run\'s config.data.dir.')
  flags.DEFINE_bool('force', False, 'Evaluate again even if WORKDIR/eval/ holds the result.')
  flags.DEFINE_string('output', None, 'Also write the result (the ensemble\'s, with several '
                      '--workdir) to this JSON file (a regular file or a new one; a symlink '
                      'is written through to its target).')
  flags.mark_flag_as_required('workdir')


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.start_reader()
  if FLAGS.output:  # before the evaluation, whose result a bad path would otherwise lose
    fileio.check_output_path(FLAGS.output, '--output')
  crops = None if FLAGS.crops is None else int(FLAGS.crops)
  options = dict(step=FLAGS.step, crops=crops, split=FLAGS.split, data_dir=FLAGS.data_dir,
                 force=FLAGS.force)
  start = time.monotonic()
  if len(FLAGS.workdir) == 1:
    result = checkpoint_eval.evaluate_run(FLAGS.workdir[0], **options)
  else:
    ensemble = ensemble_eval.evaluate_ensemble(FLAGS.workdir, **options)
    for member in ensemble.members:
      print(member.line())
    result = ensemble.result
  print(result.line())
  if FLAGS.output:
    fileio.atomic_write(FLAGS.output,
                        lambda f: f.write(json.dumps(result.to_json(), indent=1) + '\n'))
  logging.info('Evaluated in %.1f s.', time.monotonic() - start)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
