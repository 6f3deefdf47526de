r"""A synthetic ImageFolder tree (train/ and val/) to prepare and train on, made in parallel.

  python -m benchmarks.synthetic_imagenet --output=/tmp/synth --classes=10 \
      --train_per_class=5120 --val_per_class=100 --workers=16
  python -m alexnet_jax.prepare --source=/tmp/synth --output=/tmp/synth_prepared --workers=16

Each image is a random 256x320 window of one of scikit-learn's two bundled photos
(natural texture, so its JPEG decodes like a photograph's, unlike noise), randomly
flipped and colour-scaled, then blended with its class's colour (evenly spaced hues):
the class is visible in every crop, so a network can learn it in a few hundred steps
and a falling loss shows that training works. Saved as JPEG (quality 90) under
`OUTPUT/{train,val}/n{class:08d}/{index}.JPEG`, the ImageFolder layout that
`alexnet_jax.prepare` reads. Used by benchmarks/gpu.sh for the input pipeline and the
end-to-end run on the GPU machine.
"""

from __future__ import annotations

import argparse
import colorsys
import multiprocessing
import os
import sys
import time
from typing import Sequence

import numpy as np

HEIGHT, WIDTH = 256, 320
CLASS_WEIGHT = 0.35  # share of the class colour in each pixel
_PHOTOS: list[np.ndarray] = []


def class_colour(label: int, classes: int) -> np.ndarray:
  """RGB of class `label`: hues evenly spaced around the colour wheel."""
  return np.array(colorsys.hsv_to_rgb(label / classes, 0.9, 0.9), np.float32) * 255


def _load_photos() -> None:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  _PHOTOS[:] = [np.asarray(p, np.float32) for p in datasets.load_sample_images().images]


def make_image(label: int, classes: int, rng: np.random.Generator) -> np.ndarray:
  """One (HEIGHT, WIDTH, 3) uint8 image of class `label`."""
  photo = _PHOTOS[int(rng.integers(len(_PHOTOS)))]
  top = int(rng.integers(0, photo.shape[0] - HEIGHT + 1))
  left = int(rng.integers(0, photo.shape[1] - WIDTH + 1))
  image = photo[top:top + HEIGHT, left:left + WIDTH] * rng.uniform(0.8, 1.2, 3)
  if rng.random() < 0.5:
    image = image[:, ::-1]
  image = (1 - CLASS_WEIGHT) * image + CLASS_WEIGHT * class_colour(label, classes)
  return np.clip(image, 0, 255).astype(np.uint8)


def _write(task: tuple[str, str, int, int, int, int]) -> int:
  """Writes images [start, stop) of one class of one split; returns how many."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root, split, label, classes, start, stop = task
  folder = os.path.join(root, split, f'n{label:08d}')
  os.makedirs(folder, exist_ok=True)
  for i in range(start, stop):
    rng = np.random.default_rng([0 if split == 'train' else 1, label, i])
    Image.fromarray(make_image(label, classes, rng)).save(
        os.path.join(folder, f'{i}.JPEG'), quality=90)
  return stop - start


def generate(output: str, *, classes: int, train_per_class: int, val_per_class: int,
             workers: int = 1, chunk: int = 256) -> int:
  """Writes the tree under `output`; returns the number of images written."""
  tasks = []
  for split, count in (('train', train_per_class), ('val', val_per_class)):
    for label in range(classes):
      tasks += [(output, split, label, classes, s, min(s + chunk, count))
                for s in range(0, count, chunk)]
  if workers <= 1:
    _load_photos()
    return sum(map(_write, tasks))
  with multiprocessing.get_context('fork').Pool(workers, initializer=_load_photos) as pool:
    return sum(pool.imap_unordered(_write, tasks))


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--output', required=True)
  p.add_argument('--classes', type=int, default=10)
  p.add_argument('--train_per_class', type=int, default=512)
  p.add_argument('--val_per_class', type=int, default=20)
  p.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  count = generate(args.output, classes=args.classes, train_per_class=args.train_per_class,
                   val_per_class=args.val_per_class, workers=args.workers)
  print(f'wrote {count} {WIDTH}x{HEIGHT} JPEGs ({args.classes} classes) to {args.output} in '
        f'{time.perf_counter() - start:.1f} s with {args.workers} workers', flush=True)


if __name__ == '__main__':
  main()
