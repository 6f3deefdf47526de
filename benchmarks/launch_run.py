r"""One real training run through launch.py, measured; then the eval step's images/s.

  python -m benchmarks.launch_run --data=PREPARED_DIR --workdir=/tmp/run \
      --batch_size=512 --steps=200 --json=e2e.json

Runs `python launch.py --config=configs/imagenet.py` (the paper's recipe, one model
axis: mesh.model=1) on a prepared dataset for `--steps` steps with model.num_classes
taken from the dataset, a metrics line every `--log_every` steps, evaluation only
at the end (center crop, then the paper's 10-crop test) and the config's checkpoint
cadence (it also saves at each epoch end and at the last step). Extra
`--config.FIELD=VALUE` flags after `--` are passed on.

From the run's own metrics.jsonl it reports images/second end to end (images over
time from the end of the first logged window, which holds the compilation, to the
last step; and the median window), the loss of every line (falling? finite? a NaN
stops launch.py itself with an error), the checkpoints written, and the final
evaluation. Then, in this process, it restores the newest checkpoint as
`alexnet_jax.evaluate` does and times the eval step over the first `--eval_batches`
batches of the train split (the larger one), for 1 and 10 crops: images/second
from the first finished batch to the last (the grain eval pipeline included; the
first batch holds the compilation).

The JSON is written after the run and again after each eval timing, so a time limit
loses only what had not finished.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--data', required=True, help='prepared dataset (alexnet_jax.prepare output)')
  p.add_argument('--workdir', required=True, help='the run\'s workdir (emptied first)')
  p.add_argument('--batch_size', type=int, default=512)
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--log_every', type=int, default=20)
  p.add_argument('--eval_batches', type=int, default=20,
                 help='batches timed per eval mode; 0: no eval timing')
  p.add_argument('--json', default='', help='write the results here')
  if '--' in argv:
    cut = list(argv).index('--')
    return p.parse_args(argv[:cut]), list(argv[cut + 1:])
  return p.parse_args(argv), []


def launch_command(args: argparse.Namespace, num_classes: int, extra: Sequence[str]) -> list[str]:
  return [sys.executable, 'launch.py', '--config=configs/imagenet.py',
          f'--workdir={args.workdir}', f'--config.data.dir={args.data}',
          f'--config.model.num_classes={num_classes}', '--config.mesh.model=1',
          f'--config.batch_size={args.batch_size}', f'--config.num_train_steps={args.steps}',
          f'--config.log.every_steps={args.log_every}', '--config.eval_every_epochs=100000',
          '--config.log.progress=False', *extra]


def train_rates(train: list[dict[str, Any]], batch: int) -> dict[str, Any]:
  """Images/second after the first logged window (the one with the compilation)."""
  images = seconds = 0.0
  windows = []
  for prev, line in zip(train, train[1:]):
    n = (line['step'] - prev['step']) * batch
    images += n
    seconds += n / line['images_per_sec']
    windows.append(line['images_per_sec'])
  return {'images_per_sec': images / seconds if seconds else None,
          'window_median_images_per_sec': statistics.median(windows) if windows else None,
          'window_min_images_per_sec': min(windows) if windows else None,
          'window_max_images_per_sec': max(windows) if windows else None,
          'first_window_images_per_sec': train[0]['images_per_sec'] if train else None,
          'steps_timed': train[-1]['step'] - train[0]['step'] if len(train) > 1 else 0}


def summarize_run(workdir: str, batch: int) -> dict[str, Any]:
  """What metrics.jsonl and the checkpoint folder say about a finished (or stopped) run."""
  path = os.path.join(workdir, 'metrics.jsonl')
  records = []
  if os.path.exists(path):
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if r.get('kind') == 'train']
  evals = [r for r in records if r.get('kind') == 'eval']
  losses = [r['loss'] for r in train]
  finite = all(l == l and abs(l) != float('inf') for l in losses)
  folder = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []
  return {'train_lines': [{k: r.get(k) for k in ('step', 'loss', 'top1_err', 'images_per_sec')}
                          for r in train],
          **train_rates(train, batch),
          'loss_first': losses[0] if losses else None, 'loss_last': losses[-1] if losses else None,
          'loss_falling': bool(losses) and finite and losses[-1] < losses[0],
          'all_losses_finite': finite, 'eval': evals[-1] if evals else None,
          'checkpoint_steps': steps}


def time_eval(workdir: str, crops: int, num_batches: int) -> dict[str, Any]:
  """Images/second of the eval step over the first batches of the train split, pipeline included."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.learning import experiment  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.evaluation import finished_run  # pylint: disable=g-import-not-at-top
  from alexnet_jax.sharding import meshes  # pylint: disable=g-import-not-at-top

  config = finished_run.load_config(workdir)
  info = finished_run.dataset_info(workdir, config)
  exp = experiment.setup(config, info)
  state, step = finished_run.restore_state(workdir, config, None, exp.abstract_state)
  eval_step = exp.eval_step()
  batches = input_pipeline.create_eval_iterator(
      config.data, 'train', global_batch_size=config.batch_size, crops=crops, process_index=0,
      process_count=1)
  stamps = []
  with meshes.use_mesh(exp.mesh, exp.rules):
    start = time.perf_counter()
    result = exp.evaluate(eval_step, state, itertools.islice(batches, num_batches),
                          on_batch=lambda local, batch: stamps.append(time.perf_counter()))
    end = time.perf_counter()  # evaluate ends with a device_get of the sums
  done = len(stamps)
  rate = (done - 1) * config.batch_size / (end - stamps[0]) if done > 1 else None
  return {'crops': crops, 'step': step, 'batches': done, 'batch_size': config.batch_size,
          'images_per_sec': rate, 'crop_views_per_sec': rate * crops if rate else None,
          'first_batch_s': stamps[0] - start if stamps else None, 'loss': result['loss'],
          'top1_err': result['top1_err'], 'device': str(jax.devices()[0])}


def _write(path: str, results: dict[str, Any]) -> None:
  if path:
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=1)
    os.replace(path + '.tmp', path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  with open(os.path.join(args.data, 'dataset.json')) as f:
    description = json.load(f)
  num_classes = description['num_classes']
  if os.path.exists(args.workdir):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(args.workdir)
  cmd = launch_command(args, num_classes, extra)
  print('+ ' + ' '.join(cmd), flush=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, check=False)
  wall = time.perf_counter() - start
  results = {'command': cmd, 'returncode': proc.returncode, 'wall_s': wall,
             'batch_size': args.batch_size, 'steps': args.steps, 'num_classes': num_classes,
             'train_images': description['splits'].get('train'),
             'val_images': description['splits'].get('val'),
             **summarize_run(args.workdir, args.batch_size)}
  _write(args.json, results)
  print(f'launch.py: exit {proc.returncode} after {wall:.0f} s; end to end '
        f'{results["images_per_sec"] or 0:.0f} img/s over {results["steps_timed"]} steps '
        f'(windows {results["window_min_images_per_sec"] or 0:.0f}-'
        f'{results["window_max_images_per_sec"] or 0:.0f}); loss {results["loss_first"]} -> '
        f'{results["loss_last"]}; checkpoints {results["checkpoint_steps"]}; final eval '
        f'{results["eval"]}', flush=True)
  if proc.returncode == 0 and args.eval_batches > 0:
    results['eval_timing'] = []
    for crops in (1, 10):
      timing = time_eval(args.workdir, crops, args.eval_batches)
      results['eval_timing'].append(timing)
      _write(args.json, results)
      print(f'eval, {crops} crop(s): {timing["images_per_sec"] or 0:.0f} images/s '
            f'({timing["crop_views_per_sec"] or 0:.0f} crops/s) over {timing["batches"]} batches '
            f'of {timing["batch_size"]}; first batch {timing["first_batch_s"]:.1f} s', flush=True)
  return results


if __name__ == '__main__':
  sys.exit(1 if main()['returncode'] else 0)
