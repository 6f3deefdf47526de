r"""Images/second of PyTorch's train step of the same net: eager, channels_last, torch.compile.

  python -m benchmarks.torch_step --modes=eager,channels_last --batches=128,256,512,1024 \
      --dtype=bfloat16 --json=torch.json
  python -m benchmarks.torch_step --modes=compile --batches=512 --json=torch.json --json_append

The reference of benchmarks/train_step.py (`TorchStep`: the same network with groups=2
and the paper's LRN, uint8 NHWC crops in, cross-entropy, SGD with momentum and weight
decay), timed on its own rather than interleaved with JAX, on CUDA when there is one:

  eager          NCHW, bf16 autocast (or float32)
  channels_last  the net and its input in NHWC memory order
  compile        channels_last under torch.compile (default mode, static shapes):
                 forward and backward compiled by Inductor at the warm-up step, whose
                 time is reported as compile_s

Each (mode, batch) row: the median images/second over `--rounds` rounds of `--steps`
steps after `--warmup` steps (cuDNN's algorithm search runs in the first). The JSON is
rewritten after every row, so a time limit keeps the finished ones. The torch part is
kept out of the JAX process: JAX takes most of the GPU's memory when it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

from benchmarks import train_step

MODES = {'eager': {}, 'channels_last': {'channels_last': True},
         'compile': {'channels_last': True, 'compile': True}}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  csv = lambda s: [x for x in s.split(',') if x]
  p.add_argument('--modes', type=csv, default=['eager', 'channels_last'], help=f'of {list(MODES)}')
  p.add_argument('--nets', type=csv, default=['paper'], help=f'of {sorted(train_step.NETS)}')
  p.add_argument('--batches', type=lambda s: [int(x) for x in csv(s)], default=[256])
  p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--json', default='')
  p.add_argument('--json_append', action='store_true', help='keep the rows already in --json')
  args = p.parse_args(argv)
  for m in args.modes:
    if m not in MODES:
      p.error(f'unknown mode {m!r}; choose from {list(MODES)}')
  for n in args.nets:
    if n not in train_step.NETS:
      p.error(f'unknown net {n!r}')
  return args


def _write(path: str, out: dict[str, Any]) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(out, f, indent=1)
  os.replace(path + '.tmp', path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import torch  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  name = torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'
  print(f'PyTorch {torch.__version__}, device {device} ({name}), cuDNN '
        f'{torch.backends.cudnn.version()}, {torch.get_num_threads()} threads', flush=True)
  out: dict[str, Any] = {'rows': [], 'runs': []}
  if args.json and args.json_append and os.path.exists(args.json):
    with open(args.json) as f:
      out = json.load(f)
  out['runs'].append({'argv': sys.argv[1:] if argv is None else list(argv),
                      'torch': torch.__version__, 'device': name,
                      'cudnn': torch.backends.cudnn.version()})
  rows = []
  for net in args.nets:
    for mode in args.modes:
      for batch in args.batches:
        case = train_step.Case(net, batch, args.dtype, (1, 1))
        macs = train_step.forward_macs(_model(net))
        print(f'  {net}, {mode}, batch {batch}, {args.dtype}:', flush=True)
        step = train_step.TorchStep(case, warmup=args.warmup, **MODES[mode])
        rates = []
        for r in range(args.rounds):
          rates.append(step.run(args.steps))
          print(f'    round {r + 1}: {rates[-1]:9.1f} img/s', flush=True)
        row = {'net': net, 'mode': mode, 'batch': batch, 'dtype': args.dtype, 'device': name,
               'img_s': statistics.median(rates), 'img_s_min': min(rates),
               'img_s_max': max(rates), 'compile_s': step.compile_s,
               'train_gflop_per_image': 6 * macs / 1e9}
        row['gflop_s'] = row['img_s'] * row['train_gflop_per_image']
        rows.append(row)
        out['rows'].append(row)
        if args.json:
          _write(args.json, out)
        del step
        if device == 'cuda':
          torch.cuda.empty_cache()
  print(f'\nPyTorch train step, images/second (median of {args.rounds} rounds of {args.steps} '
        'steps)')
  print(f'{"net":<12}{"mode":<15}{"batch":>6}{"img/s":>10}{"range":>19}{"GFLOP/s":>10}'
        f'{"warm-up":>9}')
  for r in rows:
    print(f'{r["net"]:<12}{r["mode"]:<15}{r["batch"]:>6}{r["img_s"]:10.1f}'
          f'{r["img_s_min"]:10.1f}-{r["img_s_max"]:<8.1f}{r["gflop_s"]:10.0f}'
          f'{r["compile_s"]:8.1f}s')
  return rows


def _model(net: str):
  from alexnet_jax.model import alexnet  # pylint: disable=g-import-not-at-top
  return alexnet.AlexNet(**train_step.NETS[net])


if __name__ == '__main__':
  main()
