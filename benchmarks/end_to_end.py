r"""End-to-end training throughput through launch.py, with and without per-step host work.

  python -m benchmarks.end_to_end                       # digits; ~5 min on 2 cores
  python -m benchmarks.end_to_end --configs=digits,imagenet_like --rounds=1

Each variant is a fresh `python launch.py --config=... --workdir=...` run with the same
data, seed and step count; only the logging and checkpoint cadence differ:

  quiet        a metrics line (and host sync) every quarter of the run, no periodic
               checkpoint (checkpoint.every_steps=100000; epoch ends still save, in
               every variant)
  log_1        log.every_steps=1: a metrics line, a device->host copy and a host
               sync every step
  ckpt_10      checkpoint.every_steps=10: an (async) orbax save every 10 steps
  log_1_ckpt_10  both
  prefetch_0   as quiet, with data.device_prefetch=0: the main thread copies each batch
               to the devices when the step needs it (every other variant has the
               default, 2 batches copied ahead by a thread)

images/second come from the run's own metrics.jsonl (`images_per_sec` of each train
line times its interval), summed from step S = steps // 4 (after compilation and the
first batches; every variant logs that step) to the last step, so every variant is
timed over the same steps. The
rounds interleave the variants; each variant's median is printed with its ratio to
`quiet`. A ratio near 1.0 (within the machine's noise) means the cadence costs nothing.

Configs:
  digits         configs/digits.py as shipped (a reduced net on 64x64 crops of the
                 scikit-learn digits, batch 64), prepared into a temporary folder.
  imagenet_like  configs/imagenet.py (the paper net, 224 crops of 256x256 images,
                 mesh.model=1, batch 32) on generated ImageNet-layout JPEGs (8 classes,
                 an ImageFolder train/ and val/ tree), prepared first. Slow on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = 'quiet'  # log.every_steps: a quarter of the run (see timed_window)
VARIANTS = {
    'quiet': {'log.every_steps': QUIET, 'checkpoint.every_steps': 100000},
    'log_1': {'log.every_steps': 1, 'checkpoint.every_steps': 100000},
    'ckpt_10': {'log.every_steps': QUIET, 'checkpoint.every_steps': 10},
    'log_1_ckpt_10': {'log.every_steps': 1, 'checkpoint.every_steps': 10},
    'prefetch_0': {'log.every_steps': QUIET, 'checkpoint.every_steps': 100000,
                   'data.device_prefetch': 0},
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  csv = lambda s: [x for x in s.split(',') if x]
  p.add_argument('--configs', type=csv, default=['digits'], help='digits, imagenet_like')
  p.add_argument('--variants', type=csv, default=list(VARIANTS), help=f'of {list(VARIANTS)}')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--digits_steps', type=int, default=150, help='train steps of a digits run')
  p.add_argument('--imagenet_steps', type=int, default=24,
                 help='train steps of an imagenet_like run')
  p.add_argument('--keep', default='', help='keep the runs and data in this folder')
  args = p.parse_args(argv)
  for v in args.variants:
    if v not in VARIANTS:
      p.error(f'unknown variant {v!r}')
  for c in args.configs:
    if c not in ('digits', 'imagenet_like'):
      p.error(f'unknown config {c!r}')
  return args


def make_imagenet_like(folder: str, train_per_class: int = 100, val_per_class: int = 4,
                       classes: int = 8) -> str:
  """An ImageFolder tree of generated 500x375 photos-like JPEGs, prepared to 256x256."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import prepared_format  # pylint: disable=g-import-not-at-top
  from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top

  prepared = os.path.join(folder, 'prepared')
  if prepared_format.is_complete(prepared):
    return prepared
  photos = [np.asarray(p) for p in datasets.load_sample_images().images]
  rng = np.random.default_rng(0)
  raw = os.path.join(folder, 'raw')
  for split, count in (('train', train_per_class), ('val', val_per_class)):
    for c in range(classes):
      os.makedirs(os.path.join(raw, split, f'n{c:08d}'), exist_ok=True)
      for i in range(count):
        photo = photos[(c + i) % len(photos)]
        top = rng.integers(0, photo.shape[0] - 375 + 1)
        left = rng.integers(0, photo.shape[1] - 500 + 1)
        image = photo[top:top + 375, left:left + 500] * rng.uniform(0.7, 1.3, 3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(raw, split, f'n{c:08d}', f'{i}.JPEG'), quality=90)
  prepare.prepare(raw, prepared, image_size=256, progress=False)
  return prepared


def config_args(name: str, data_dir: str, args: argparse.Namespace) -> list[str]:
  common = ['--config.log.progress=False', '--config.eval_every_epochs=100000']
  if name == 'digits':
    return ['--config=configs/digits.py', f'--config.data.dir={data_dir}',
            f'--config.num_train_steps={args.digits_steps}'] + common
  return ['--config=configs/imagenet.py', f'--config.data.dir={data_dir}',
          '--config.model.num_classes=8', '--config.batch_size=32', '--config.mesh.model=1',
          '--config.final_eval_crops=1', f'--config.num_train_steps={args.imagenet_steps}',
          '--config.optim.schedule=constant'] + common


def run(name: str, variant: str, data_dir: str, workdir: str, args: argparse.Namespace,
        env: dict[str, str]) -> dict[str, Any]:
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, 'launch.py', f'--workdir={workdir}', *config_args(name, data_dir, args)]
  steps = args.digits_steps if name == 'digits' else args.imagenet_steps
  start_step = max(1, steps // 4)
  cmd += [f'--config.{k}={start_step if v == QUIET else v}'
          for k, v in VARIANTS[variant].items()]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  train = [r for r in lines if r['kind'] == 'train']
  first = start_step
  batch = _batch_size(name)
  images, seconds, last = 0, 0.0, None
  for r in train:
    if last is not None and r['step'] > first:
      n = (r['step'] - last) * batch
      images += n
      seconds += n / r['images_per_sec']
    last = r['step']
  return {'images_per_sec': images / seconds if seconds else float('nan'),
          'steps_timed': train[-1]['step'] - first, 'train_lines': len(train), 'wall_s': wall,
          'final_loss': train[-1]['loss']}


def _batch_size(name: str) -> int:
  return 64 if name == 'digits' else 32


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  root = args.keep or tempfile.mkdtemp(prefix='e2e_bench_')
  os.makedirs(root, exist_ok=True)
  results: dict[str, Any] = {}
  env = dict(os.environ)
  # launch.py adds alexnet_jax.core.xla_flags's XLA:CPU option itself unless XLA_FLAGS sets it.
  print(f'runs: XLA_FLAGS={env.get("XLA_FLAGS", "")!r}, {os.cpu_count()} cores')
  try:
    for name in args.configs:
      if name == 'digits':
        data_dir = os.path.join(root, 'digits')  # prepared by the first run (prepare_from)
      else:
        start = time.perf_counter()
        data_dir = make_imagenet_like(os.path.join(root, 'imagenet_like'))
        print(f'imagenet_like: generated and prepared in {time.perf_counter() - start:.0f} s')
      rates: dict[str, list[float]] = {v: [] for v in args.variants}
      for r in range(args.rounds):
        for variant in args.variants:
          out = run(name, variant, data_dir, os.path.join(root, f'{name}_{variant}'), args, env)
          rates[variant].append(out['images_per_sec'])
          print(f'  {name} round {r + 1}: {variant:<14s} {out["images_per_sec"]:8.1f} img/s over '
                f'{out["steps_timed"]} steps ({out["train_lines"]} train lines, run '
                f'{out["wall_s"]:.0f} s, final loss {out["final_loss"]:.3f})', flush=True)
      base = args.variants[0]
      print(f'\n{name}: images/second from metrics.jsonl, median of {args.rounds} rounds')
      print(f'{"variant":<16}{"img/s":>9}{"vs " + base:>12}')
      results[name] = {}
      for variant in args.variants:
        ratios = [a / b for a, b in zip(rates[variant], rates[base])]
        results[name][variant] = {'images_per_sec': statistics.median(rates[variant]),
                                  'ratio': statistics.median(ratios)}
        print(f'{variant:<16}{statistics.median(rates[variant]):9.1f}'
              f'{statistics.median(ratios):11.2f}x')
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  return results


if __name__ == '__main__':
  main()
