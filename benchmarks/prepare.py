r"""Wall-clock time of `alexnet_jax.prepare` on the quick start's digits.

  python -m benchmarks.prepare                  # digits at 72 px, 3 rounds
  python -m benchmarks.prepare --image_size=256 --rounds=1

Each round prepares scikit-learn's 1,797 digits into a fresh temporary folder and
prints its seconds and images/second; the median closes the output. The tests do
not time anything (a figure under load says nothing about correctness); this is
where the figure lives.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from alexnet_jax import prepare


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=72)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--workers', type=int, default=1)
  args = parser.parse_args()
  seconds = []
  for round_index in range(args.rounds):
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      report = prepare.prepare('digits', os.path.join(tmp, 'digits'), image_size=args.image_size,
                               workers=args.workers, progress=False)
      seconds.append(time.perf_counter() - start)
    images = sum(report['converted'].values())
    print(f'round {round_index + 1}: {seconds[-1]:.2f} s, {images / seconds[-1]:.0f} images/s')
  print(f'median of {args.rounds}: {statistics.median(seconds):.2f} s '
        f'(digits at {args.image_size} px, {args.workers} worker(s))')


if __name__ == '__main__':
  main()
