r"""The machine's facts before benchmarks/gpu.sh runs, and its summary table after.

  python -m benchmarks.gpu_summary env OUT_DIR       # OUT_DIR/env.json
  python -m benchmarks.gpu_summary table OUT_DIR [PARTS_FILE]   # prints the summary table

`env`: nvidia-smi's GPU, driver and clocks, the CPU and cores, and the version and
file of every Python package the runs use (the GPU image's own, or the wheels
carried into PYTHONPATH: both are listed).

`table` reads the JSON files the parts of gpu.sh wrote (any may be missing: a part
that was skipped or ran out of time) and prints the figures issue 17 asks for: the
JAX train step in images/s with its TFLOP/s against the bf16 matmul measured in the
same run and against the datasheet's dense bf16 rate; PyTorch's step; the input
pipeline against the step; the launch.py run end to end and its 10-crop eval.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any

# NVIDIA H200 SXM datasheet: 1,979 TFLOP/s bf16 tensor core "with sparsity"; dense is half.
DATASHEET_BF16_TFLOPS = 989.5
DATASHEET_SOURCE = 'NVIDIA H200 datasheet (SXM): 1,979 TFLOP/s bf16 with 2:4 sparsity, 989.5 dense'
GOAL_STEP_IMG_S = 16_000  # issue 17: one H200, bf16, the paper net's train step
GOAL_E2E_RATIO = 0.9  # the end-to-end run within 10% of the step's rate
PACKAGES = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda13-pjrt', 'flax', 'optax',
            'orbax-checkpoint', 'chex', 'grain', 'array-record', 'ml-collections', 'simplejpeg',
            'tensorboardX', 'tensorstore', 'etils', 'numpy', 'ml-dtypes', 'torch', 'triton',
            'pillow', 'opencv-python-headless', 'scikit-learn', 'absl-py', 'protobuf',
            'msgpack', 'portpicker')
FILES = {'env': 'env.json', 'step': 'step_jax.json', 'torch': 'step_torch.json',
         'input': 'input.json', 'e2e': 'e2e.json', 'learn': 'e2e_learn.json'}


def _run(cmd: list[str]) -> str:
  try:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          check=False).stdout.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    return f'unavailable: {e}'


def _normalize(name: str) -> str:
  return name.lower().replace('_', '-').replace('.', '-')


def collect_env() -> dict[str, Any]:
  """What the figures depend on: GPU, driver, CPU, Python packages (version and location)."""
  found: dict[str, list[dict[str, str]]] = {}
  for dist in importlib.metadata.distributions():  # in sys.path order: the first is imported
    key = _normalize(dist.metadata['Name'] or '')
    found.setdefault(key, []).append({'version': dist.version,
                                      'location': str(dist.locate_file(''))})
  packages = {}
  for name in PACKAGES:
    dists = found.get(_normalize(name))
    # The one Python imports, and any it shadows (the image's own, under carried wheels).
    packages[name] = dict(dists[0], shadowed=dists[1:]) if dists else None
  cpu = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                 '')
  mem = ''
  if os.path.exists('/proc/meminfo'):
    with open('/proc/meminfo') as f:
      mem = f.readline().strip()
  return {
      'gpu': _run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm,'
                   'clocks.max.mem,power.limit,pstate,temperature.gpu', '--format=csv']),
      'nvidia_smi': _run(['nvidia-smi']),
      'cpu': cpu, 'host_cores': os.cpu_count(), 'memory': mem,
      'python': sys.version, 'executable': sys.executable, 'platform': platform.platform(),
      'pythonpath': os.environ.get('PYTHONPATH', ''), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'packages': packages,
  }


def _read(out: str, key: str) -> dict[str, Any] | None:
  path = os.path.join(out, FILES[key])
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    return {'error': f'{path}: {e}'}


def _fmt(value: Any, spec: str = ',.0f') -> str:
  return '-' if value is None else format(value, spec)


def table(out: str, parts: str = '') -> str:
  """The summary text of the JSON files in `out` (and of gpu.sh's part list `parts`)."""
  lines = []
  env = _read(out, 'env') or {}
  gpu = env.get('gpu', '?').splitlines()
  lines.append(f'GPU: {gpu[-1] if gpu else "?"}; host cores {env.get("host_cores")}; '
               f'python {env.get("python", "?").split()[0]}')
  pk = env.get('packages') or {}
  lines.append('versions: ' + ', '.join(f'{n} {(pk.get(n) or {}).get("version", "-")}'
                                        for n in ('jax', 'jaxlib', 'flax', 'optax',
                                                  'orbax-checkpoint', 'grain', 'torch')))
  step = _read(out, 'step') or {}
  for run in step.get('runs', [])[:1]:
    lines.append(f'JAX {run.get("jax")} on {run.get("backend")}: {run.get("device_kind")}; '
                 f'XLA_FLAGS={run.get("xla_flags")!r}')
  peaks = step.get('peaks', {})
  bf16_peak = peaks.get('bfloat16')
  lines.append('bf16 matmul measured here (square, side 8192 on a GPU, 2048 on a CPU; jax.jit, '
               f'best sample): '
               f'{_fmt(bf16_peak and bf16_peak / 1e3, ",.1f")} TFLOP/s; datasheet '
               f'{DATASHEET_BF16_TFLOPS} ({DATASHEET_SOURCE})')
  if peaks.get('float32'):
    lines.append(f'float32 matmul measured here (JAX default precision): '
                 f'{peaks["float32"] / 1e3:,.1f} TFLOP/s')
  lines.append('')
  lines.append('JAX train step (one GPU), images/s:')
  lines.append(f'{"net":<15}{"dtype":<16}{"variant":<10}{"batch":>6}{"img/s":>10}{"TFLOP/s":>9}'
               f'{"of mm":>7}{"of ds":>7}{"compile":>9}')
  best = {}
  for r in step.get('rows', []):
    tflops = r['jax_img_s'] * r['train_gflop_per_image'] / 1e3
    of_ds = f'{tflops / DATASHEET_BF16_TFLOPS:7.0%}' if r['dtype'] == 'bfloat16' else f'{"":>7}'
    peak = peaks.get(r['dtype'])
    of_mm = f'{tflops * 1e3 / peak:7.0%}' if peak else f'{"-":>7}'
    dtype = r['dtype'] + ('' if r.get('matmul_precision', 'default') == 'default'
                          else f'/{r["matmul_precision"]}')
    lines.append(f'{r["net"]:<15}{dtype:<16}{r["variant"]:<10}{r["batch"]:>6}'
                 f'{r["jax_img_s"]:10,.0f}{tflops:9.1f}{of_mm}{of_ds}{r["compile_s"]:8.0f}s')
    if r['net'] == 'paper' and r['variant'] == 'shipped':
      key = r['dtype']
      if key not in best or r['jax_img_s'] > best[key]['jax_img_s']:
        best[key] = r
  if step.get('rows'):
    gflop = step['rows'][0]['train_gflop_per_image']
    lines.append(f'(training FLOPs per image: 6 x forward multiply-adds of model.layer_table = '
                 f'{gflop:.2f} GFLOP for the paper net; "of mm": of the bf16/f32 matmul measured '
                 f'above, "of ds": of the datasheet\'s dense bf16)')
  b = best.get('bfloat16')
  if b:
    lines.append(f'best bf16 paper step: {b["jax_img_s"]:,.0f} img/s at batch {b["batch"]} '
                 f'(goal {GOAL_STEP_IMG_S:,}: {"met" if b["jax_img_s"] >= GOAL_STEP_IMG_S else "not met"})')
  at512 = next((r for r in step.get('rows', []) if r['net'] == 'paper' and r['batch'] == 512
                and r['dtype'] == 'bfloat16' and r['variant'] == 'shipped'), None)

  torch = _read(out, 'torch') or {}
  if torch.get('rows'):
    lines.append('')
    lines.append(f'PyTorch step ({torch["runs"][0].get("torch")}, {torch["rows"][0]["dtype"]} '
                 'autocast), images/s; JAX bf16 at the same batch:')
    for r in torch['rows']:
      jax_row = next((j for j in step.get('rows', []) if j['net'] == r['net'] and
                      j['batch'] == r['batch'] and j['dtype'] == r['dtype'] and
                      j['variant'] == 'shipped'), None)
      ratio = f'JAX/PT {jax_row["jax_img_s"] / r["img_s"]:.2f}x' if jax_row else ''
      lines.append(f'  {r["net"]:<8}{r["mode"]:<15}{r["batch"]:>6}{r["img_s"]:10,.0f}  '
                   f'warm-up {r["compile_s"]:.0f}s  {ratio}')

  inp = _read(out, 'input') or {}
  rates = (inp.get('images_per_sec') or {}).get('prepared', {})
  if rates:
    lines.append('')
    cores = inp.get('cores')
    cells = ', '.join(f'{k} {v:,.0f}' for k, v in rates.items())
    lines.append(f'input pipeline (prepared 256x256 shards, batch {inp.get("batch_size")}, '
                 f'{cores} cores), images/s: {cells}')
    top = max(rates.get('grain_n', 0), rates.get('grain_p', 0))
    if b and top:
      lines.append(f'  best all-core rate / best bf16 step rate: {top / b["jax_img_s"]:.2f}x'
                   + (f'; / step at batch 512: {top / at512["jax_img_s"]:.2f}x' if at512 else ''))

  for key, title in (('e2e', 'launch.py end to end (configs/imagenet.py)'),
                     ('learn', 'launch.py, he init (does bf16 training learn?)')):
    e2e = _read(out, key)
    if not e2e:
      continue
    lines.append('')
    lines.append(f'{title}: batch {e2e.get("batch_size")}, {e2e.get("steps")} steps, '
                 f'{e2e.get("num_classes")} classes, {e2e.get("train_images")} train images; '
                 f'exit {e2e.get("returncode")}, {e2e.get("wall_s", 0):.0f} s')
    lines.append(f'  images/s after the first window: {_fmt(e2e.get("images_per_sec"))} '
                 f'(windows {_fmt(e2e.get("window_min_images_per_sec"))}-'
                 f'{_fmt(e2e.get("window_max_images_per_sec"))}, median '
                 f'{_fmt(e2e.get("window_median_images_per_sec"))})'
                 + (f'; / step at batch {e2e.get("batch_size")}: '
                    f'{e2e["images_per_sec"] / at512["jax_img_s"]:.2f}x (goal >= {GOAL_E2E_RATIO})'
                    if at512 and e2e.get('images_per_sec') and e2e.get('batch_size') == 512
                    else ''))
    losses = [round(t['loss'], 3) for t in e2e.get('train_lines', [])]
    lines.append(f'  loss by log line: {losses}; all finite: {e2e.get("all_losses_finite")}; '
                 f'checkpoints: {e2e.get("checkpoint_steps")}')
    ev = e2e.get('eval') or {}
    # metrics.jsonl writes a NaN as null.
    lines.append('  final eval: ' + ', '.join(f'{k} {_fmt(v, ".4f") if v is not None else "NaN"}'
                                              for k, v in ev.items() if k.startswith('val')))
    for t in e2e.get('eval_timing', []):
      lines.append(f'  eval step, {t["crops"]} crops: {_fmt(t["images_per_sec"])} images/s '
                   f'({_fmt(t["crop_views_per_sec"])} crops/s), {t["batches"]} batches of '
                   f'{t["batch_size"]}')
  if parts and os.path.exists(parts):
    with open(parts) as f:
      lines.append('')
      lines.append('parts (name exit seconds): ' + '; '.join(f.read().split('\n')).strip('; '))
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) not in (3, 4) or argv[1] not in ('env', 'table'):
    raise SystemExit(__doc__.split('\n\n')[1])
  out = argv[2]
  if argv[1] == 'env':
    env = collect_env()
    with open(os.path.join(out, FILES['env']), 'w') as f:
      json.dump(env, f, indent=1)
    print(env['gpu'])
    print(f'{env["cpu"]}, {env["host_cores"]} cores; {env["memory"]}; python {env["python"]}')
    for name, p in env['packages'].items():
      if not p:
        print(f'  {name:<24} not installed')
        continue
      hidden = ''.join(f'; shadows {d["version"]} in {d["location"]}' for d in p['shadowed'])
      print(f'  {name:<24} {p["version"]}  {p["location"]}{hidden}')
    return
  print(table(out, argv[3] if len(argv) > 3 else ''))


if __name__ == '__main__':
  main(sys.argv)
