r"""Downloads the wheels the GPU machine lacks into a git-ignored folder, for benchmarks/gpu.sh.

  python -m benchmarks.fetch_wheels                 # into .whl/ (git-ignored), ~7 MiB
  python -m benchmarks.fetch_wheels --dry_run       # prints the pip command only
  python -m benchmarks.fetch_wheels --extra=cloudpickle==3.1.1   # a package a new image lacks

The GPU machine (benchmarks/README.md, section 5) runs Python 3.12 with its own jax,
CUDA plugin and torch, and has no network. This project's data stack and its pins of
flax, optax and orbax-checkpoint travel there as wheels, downloaded here with `pip
download --only-binary=:all: --no-deps` for CPython 3.12 on manylinux x86_64. The
versions are requirements.txt's pins (portpicker, which grain imports, is pinned
here). Their other dependencies (absl-py, etils, numpy, protobuf, cloudpickle,
tensorstore, msgpack, ...) were all in the H200 image of 30 Nov 2026 (its env.json in
benchmarks/results/h200_2026-11-30/); `--extra` adds any another image lacks.

The device tool carries at most 64 MiB of ignored files, so the folder's wheels are
summed after the download and the command fails (status 1) above --limit_mib. gpu.sh
installs whatever lies in the folder without network:
`pip install --no-index --no-deps --target DIR .whl/*.whl`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Taken at requirements.txt's pins; the GPU image's own versions differ or are absent.
FROM_REQUIREMENTS = ('grain', 'array-record', 'simplejpeg', 'ml-collections', 'tensorboardX',
                     'flax', 'optax', 'orbax-checkpoint')
NOT_IN_REQUIREMENTS = ('portpicker==1.6.0',)  # grain's dependency, absent from the image
# grain's wheels are tagged manylinux_2_24/2_28, the others manylinux2014 (= 2_17).
PLATFORMS = ('manylinux2014_x86_64', 'manylinux_2_17_x86_64', 'manylinux_2_24_x86_64',
             'manylinux_2_28_x86_64')
LIMIT_MIB = 64


def pinned(requirements: str, names: Sequence[str]) -> list[str]:
  """`name==version` of each name, from a requirements file's `name==version` lines."""
  pins = {}
  with open(requirements) as f:
    for line in f:
      match = re.match(r'^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)', line)
      if match:
        pins[_key(match.group(1))] = f'{match.group(1)}=={match.group(2)}'
  missing = [n for n in names if _key(n) not in pins]
  if missing:
    raise SystemExit(f'error: {requirements} pins none of {missing}')
  return [pins[_key(n)] for n in names]


def _key(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def pip_command(packages: Sequence[str], dest: str, python: str = sys.executable,
                python_version: str = '3.12') -> list[str]:
  """`pip download` of exactly these wheels for CPython `python_version` on manylinux x86_64."""
  platforms = [arg for p in PLATFORMS for arg in ('--platform', p)]
  return [python, '-m', 'pip', 'download', '--only-binary=:all:', '--no-deps',
          '--python-version', python_version, '--implementation', 'cp', *platforms,
          '--dest', dest, *packages]


def folder_bytes(folder: str) -> dict[str, int]:
  """Size of each wheel in `folder`."""
  return {name: os.path.getsize(os.path.join(folder, name))
          for name in sorted(os.listdir(folder)) if name.endswith('.whl')}


def size_error(folder: str, limit_mib: float) -> str:
  """The error line when the wheels in `folder` exceed `limit_mib` MiB, else ''."""
  total = sum(folder_bytes(folder).values()) / 2**20
  if total <= limit_mib:
    return ''
  return (f'error: {total:.1f} MiB of wheels in {folder} exceed {limit_mib:g} MiB: remove old '
          'versions or drop packages the GPU image has')


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--dest', default=os.path.join(ROOT, '.whl'), help='folder of the wheels')
  p.add_argument('--python_version', default='3.12', help="the GPU machine's Python")
  p.add_argument('--extra', default='', help='comma-separated further name==version')
  p.add_argument('--limit_mib', type=float, default=LIMIT_MIB,
                 help='fail above this many MiB of wheels in --dest')
  p.add_argument('--dry_run', action='store_true', help='print the pip command, run nothing')
  args = p.parse_args(argv)
  packages = (pinned(os.path.join(ROOT, 'requirements.txt'), FROM_REQUIREMENTS)
              + list(NOT_IN_REQUIREMENTS) + [x for x in args.extra.split(',') if x])
  cmd = pip_command(packages, args.dest, python_version=args.python_version)
  print('+ ' + ' '.join(cmd), flush=True)
  if args.dry_run:
    return 0
  os.makedirs(args.dest, exist_ok=True)
  proc = subprocess.run(cmd, check=False)
  if proc.returncode:
    print(f'error: pip download failed (status {proc.returncode})', file=sys.stderr)
    return proc.returncode
  sizes = folder_bytes(args.dest)
  for name, size in sizes.items():
    print(f'  {size / 2**20:7.2f} MiB  {name}')
  total = sum(sizes.values()) / 2**20
  print(f'{len(sizes)} wheels, {total:.1f} MiB in {args.dest} (limit {args.limit_mib:g} MiB)')
  error = size_error(args.dest, args.limit_mib)
  if error:
    print(error, file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
