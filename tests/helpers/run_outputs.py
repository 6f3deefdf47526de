"""What an imported run computes, read the way evaluate and predict read any run, and test
images for it.

`run_logits` takes predict's centre view of each stored image and the on-device
normalisation (data.preprocess.normalize) with the run's own mean, then the run's model:
the path every imported run's numbers go through.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax import predict
from alexnet_jax.data import preprocess
from alexnet_jax.evaluation import finished_run


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
  """uint8 (n, 256, 256, 3), different in each channel so that a channel swap shows, smooth
  enough that a crop one pixel off changes the outputs little but measurably."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (n, 16, 16, 3))
  images = coarse.repeat(16, axis=1).repeat(16, axis=2)
  return np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype(np.uint8)


def run_logits(workdir: str, images: np.ndarray) -> np.ndarray:
  """Centre-crop logits (n, classes) of the run in `workdir` on stored uint8 images."""
  run = finished_run.load_run(workdir)
  views = [predict.views_of(im, run.config.data.crop_size, 1) for im in images]
  batch = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
  x = preprocess.normalize(batch['image'], batch['crop'], batch['flip'],
                           np.zeros((len(images), 3), np.float32), run.mean_image)
  return np.asarray(run.model.apply({'params': run.params}, x, train=False))


def model_input(workdir: str, images: np.ndarray) -> np.ndarray:
  """The run's model input (n, 3, c, c), NCHW, for its centre crops, computed here in numpy:
  RGB 0-255 minus the mean (cut like the crop), times input_scale, divided by input_std."""
  run = finished_run.load_run(workdir)
  crop = run.config.data.crop_size
  top = (images.shape[1] - crop) // 2
  x = images[:, top:top + crop, top:top + crop].astype(np.float32)
  mean = np.asarray(run.mean_image, np.float32)
  x = x - (mean if mean.ndim == 1 else mean[top:top + crop, top:top + crop])
  x = x * np.float32(run.config.model.input_scale)
  if run.config.model.get('input_std') is not None:
    x = x / np.asarray(run.config.model.input_std, np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
