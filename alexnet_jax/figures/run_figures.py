"""Pictures of a run: training curves, throughput, and the paper's figures 3 and 4.

All drawing goes through matplotlib's object API onto an Agg canvas (no pyplot,
no global backend switch), so it works on headless hosts, inside the trainer
and from a notebook alike. Every figure has a fixed pixel size (FigureSpec).

- training_curves.png: loss, top-1 and top-5 error of train and val per epoch,
  the learning-rate drops marked (from metrics.jsonl: docs/design.md,
  "metrics.jsonl").
- throughput.png: training images per second over the run.
- conv1_kernels.png: the paper's figure 3, the learned conv1 kernels of each
  tower (the first half of the output channels fed tower 0's conv2, i.e. the
  paper's GPU 1; the second half tower 1).
- nearest_neighbours.png: the idea of the paper's figure 4: validation images
  next to the training images whose fc7 activations are nearest (Euclidean).

The trainer calls `write_end_of_training_plots`; `python -m alexnet_jax.plot`
redraws everything from a workdir (see plot.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from alexnet_jax.data import augment
from alexnet_jax.data import preprocess
from alexnet_jax.core import fileio
from alexnet_jax.data import input_pipeline
from alexnet_jax.storage import metric_log
from alexnet_jax.model import alexnet

PLOTS_DIR = 'plots'
CURVES_FILE = 'training_curves.png'
THROUGHPUT_FILE = 'throughput.png'
KERNELS_FILE = 'conv1_kernels.png'
NEIGHBOURS_FILE = 'nearest_neighbours.png'
DPI = 100
# A learning-rate change smaller than this ratio is float32 noise in the logged lr
# (0.01 is stored as 0.0100000007 or 0.0099999998), not a drop.
LR_CHANGE = 0.99


@dataclasses.dataclass(frozen=True)
class FigureSpec:
  width: int  # pixels
  height: int


CURVES_SIZE = FigureSpec(1500, 450)
THROUGHPUT_SIZE = FigureSpec(900, 400)
KERNELS_SIZE = FigureSpec(900, 500)
NEIGHBOUR_CELL = FigureSpec(150, 170)  # one image of figure 4, with its caption


def neighbour_figure_size(num_queries: int, num_neighbours: int) -> FigureSpec:
  """Pixels of nearest_neighbours.png: a row per query, the query and its neighbours."""
  return FigureSpec(NEIGHBOUR_CELL.width * (num_neighbours + 1),
                    NEIGHBOUR_CELL.height * num_queries)


def plots_dir(workdir: str | os.PathLike[str]) -> str:
  return os.path.join(os.fspath(workdir), PLOTS_DIR)


def _figure(size: FigureSpec) -> Figure:
  figure = Figure(figsize=(size.width / DPI, size.height / DPI), dpi=DPI)
  FigureCanvasAgg(figure)
  return figure


def save_png(figure: Figure, path: str) -> str:
  """Writes `figure` as PNG at its own pixel size, atomically; returns `path`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fileio.atomic_write(path, lambda f: figure.savefig(f, format='png', dpi=DPI), 'wb')
  return path


# ----------------------------------------------------------------------------- curves


def _number(value: Any) -> float:
  # metrics.jsonl stores NaN and inf as null.
  return math.nan if value is None else float(value)


def split_records(records: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
  """(train, eval) records, each sorted by step with one record per step (the last)."""
  by_kind: dict[str, dict[int, Mapping[str, Any]]] = {'train': {}, 'eval': {}}
  for r in records:
    if r.get('kind') in by_kind and isinstance(r.get('step'), int):
      by_kind[r['kind']][r['step']] = r
  return ([by_kind['train'][s] for s in sorted(by_kind['train'])],
          [by_kind['eval'][s] for s in sorted(by_kind['eval'])])


def epochs_of(records: Sequence[Mapping[str, Any]],
              train: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """The epoch of each record: its own `epoch`, else its step over steps per epoch.

  Only train records must carry `epoch` (metrics.REQUIRED_KEYS); eval records borrow
  the rate from them.
  """
  steps_per_epoch = next((r['step'] / r['epoch'] for r in train
                          if r.get('epoch') and r['step'] > 0), None)

  def epoch(r: Mapping[str, Any]) -> float:
    if r.get('epoch') is not None:
      return float(r['epoch'])
    return r['step'] / steps_per_epoch if steps_per_epoch else math.nan

  return np.array([epoch(r) for r in records], np.float64)


def learning_rate_drops(train: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, float]]:
  """(epoch, old lr, new lr) wherever the logged learning rate fell.

  A train line carries the rate its steps used, and rates change only at epoch
  ends, where a line is always written: the drop sits at the epoch of the last
  line with the old rate.
  """
  epochs = epochs_of(train, train)
  drops = []
  for i in range(1, len(train)):
    old, new = _number(train[i - 1].get('lr')), _number(train[i].get('lr'))
    if old > 0 and new < LR_CHANGE * old:
      drops.append((float(epochs[i - 1]), old, new))
  return drops


def _series(records: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> np.ndarray:
  return np.array([_number(r.get(key)) * scale for r in records], np.float64)


def plot_training_curves(records: Sequence[Mapping[str, Any]], path: str) -> str:
  """Loss, top-1 and top-5 error (train and val) against epochs, with the lr drops."""
  train, evals = split_records(records)
  if not train and not evals:
    raise ValueError('no train or eval records to plot')
  x_train, x_eval = epochs_of(train, train), epochs_of(evals, train)
  drops = learning_rate_drops(train)
  figure = _figure(CURVES_SIZE)
  panels = [('loss', 'loss', 'val_loss', None, 1.0, 'cross-entropy'),
            ('top-1 error', 'top1_err', 'val_top1_err', 'val10_top1_err', 100.0, '%'),
            ('top-5 error', 'top5_err', 'val_top5_err', 'val10_top5_err', 100.0, '%')]
  axes = figure.subplots(1, len(panels))
  for ax, (title, train_key, val_key, ten_key, scale, unit) in zip(axes, panels):
    if train:
      ax.plot(x_train, _series(train, train_key, scale), color='tab:blue', lw=1.2,
              label='train (running, with dropout)')
    if evals:
      ax.plot(x_eval, _series(evals, val_key, scale), color='tab:orange', marker='o', ms=3,
              lw=1.5, label='val, center crop')
      ten = _series(evals, ten_key, scale) if ten_key else np.array([])
      if np.isfinite(ten).any():
        ax.plot(x_eval, ten, color='tab:red', marker='*', ms=9, ls='none',
                label='val, 10-crop test')
    for i, (epoch, _, new) in enumerate(drops):
      ax.axvline(epoch, color='0.5', ls='--', lw=0.9,
                 label='learning-rate drop' if i == 0 else None)
      ax.annotate(f'lr {new:.3g}', (epoch, 1.0), xycoords=('data', 'axes fraction'),
                  xytext=(3, -12), textcoords='offset points', fontsize=8, color='0.35')
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
  # One legend above the panels, so it never hides a curve or a drop's label.
  entries = {}
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      entries.setdefault(label, handle)
  figure.legend(list(entries.values()), list(entries), loc='upper center', ncol=len(entries),
                fontsize=9, frameon=False)
  figure.tight_layout(rect=(0, 0, 1, 0.93))
  return save_png(figure, path)


def plot_throughput(records: Sequence[Mapping[str, Any]], path: str) -> str:
  """Training images per second (all devices) at each train line of metrics.jsonl."""
  train, _ = split_records(records)
  steps = np.array([r['step'] for r in train], np.float64)
  speed = _series(train, 'images_per_sec')
  if not np.isfinite(speed).any():
    raise ValueError('no train records with images_per_sec to plot')
  figure = _figure(THROUGHPUT_SIZE)
  ax = figure.subplots()
  ax.plot(steps, speed, color='tab:green', marker='.', lw=1)
  # The first window after a (re)start includes compilation; the median ignores it.
  median = float(np.nanmedian(speed))
  ax.axhline(median, color='0.4', ls=':', lw=1, label=f'median {median:,.0f} images/s')
  ax.set_title('training throughput (global batch, all devices; evaluation pauses included)')
  ax.set_xlabel('optimizer step')
  ax.set_ylabel('images / second')
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  figure.tight_layout()
  return save_png(figure, path)


# ----------------------------------------------------------------------------- figure 3


def normalize_kernels(kernel: np.ndarray) -> np.ndarray:
  """(k, k, 3, C) conv1 weights -> (C, k, k, 3) in [0, 1], each kernel min-max scaled.

  A constant kernel (no contrast to show) becomes mid-gray.
  """
  w = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
  low = w.min(axis=(1, 2, 3), keepdims=True)
  span = w.max(axis=(1, 2, 3), keepdims=True) - low
  return np.where(span > 0, (w - low) / np.where(span > 0, span, 1.0), 0.5)


def colour_share(kernel: np.ndarray) -> np.ndarray:
  """Per kernel (C,), the fraction of its variance that is colour rather than brightness.

  The kernel minus its gray (channel-mean) version carries the colour; 0 for a
  colour-agnostic kernel. The paper saw one tower's kernels near 0, the other's not.
  """
  w = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
  colour = w - w.mean(axis=-1, keepdims=True)
  total = w - w.mean(axis=(1, 2, 3), keepdims=True)
  energy = np.sum(total**2, axis=(1, 2, 3))
  return np.sum(colour**2, axis=(1, 2, 3)) / np.where(energy > 0, energy, 1.0)


def kernel_grid(kernels: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
  """(n, k, k, 3) images -> one (rows*(k+gap)+gap, columns*(k+gap)+gap, 3) mosaic, white gaps."""
  n, k = kernels.shape[:2]
  rows = max(1, math.ceil(n / columns))
  grid = np.ones((rows * (k + gap) + gap, columns * (k + gap) + gap, 3))
  for i, image in enumerate(kernels):
    r, c = divmod(i, columns)
    top, left = gap + r * (k + gap), gap + c * (k + gap)
    grid[top:top + k, left:left + k] = image
  return grid


def tower_slices(channels: int, towers: int) -> list[slice]:
  """The output channels each tower owns (tower-major order, as model.Conv lays them out)."""
  per = channels // towers
  return [slice(t * per, (t + 1) * per) for t in range(towers)]


def plot_conv1_kernels(kernel: np.ndarray, towers: int, path: str, columns: int = 16) -> str:
  """The paper's figure 3: conv1's kernels as an image grid, one panel per tower."""
  kernel = np.asarray(kernel)
  if kernel.ndim != 4 or kernel.shape[2] != 3:
    raise ValueError(f'conv1 kernel must be (k, k, 3, C), got {kernel.shape}')
  channels = kernel.shape[-1]
  images, shares = normalize_kernels(kernel), colour_share(kernel)
  groups = tower_slices(channels, towers) if towers > 1 else [slice(0, channels)]
  columns = min(columns, groups[0].stop - groups[0].start)
  figure = _figure(KERNELS_SIZE)
  axes = np.atleast_1d(figure.subplots(len(groups), 1))
  for t, (ax, group) in enumerate(zip(axes, groups)):
    ax.imshow(kernel_grid(images[group], columns), interpolation='nearest')
    ax.set_axis_off()
    who = f'tower {t} (the paper\'s GPU {t + 1})' if len(groups) > 1 else 'one tower'
    ax.set_title(f'{who}: kernels {group.start}-{group.stop - 1}, '
                 f'mean colour share {np.mean(shares[group]):.2f}', fontsize=10)
  figure.suptitle(f'conv1: {channels} kernels of {kernel.shape[0]}x{kernel.shape[1]}x3, '
                  'each scaled to its own min-max', fontsize=11)
  figure.tight_layout()
  return save_png(figure, path)


# ----------------------------------------------------------------------------- figure 4


def fc7_features(params: Any, image: jax.Array, crop: jax.Array, flip: jax.Array, *,
                 model: alexnet.AlexNet, mean_image: jax.Array) -> jax.Array:
  """fc7 activations (b, hidden) after its ReLU, of uint8 crops (b, c, c, 3), as in eval.

  The paper's figure 4 compares images by these "last hidden layer" vectors.
  """
  x = preprocess.normalize(image, crop, flip, jnp.zeros(image.shape[:1] + (3,), jnp.float32),
                        mean_image)
  _, state = model.apply({'params': params}, x, train=False,
                         capture_intermediates=lambda mdl, method: mdl.name == 'fc7')
  return nn.relu(state['intermediates']['fc7']['__call__'][0])


def nearest_neighbours(queries: np.ndarray, base: np.ndarray, k: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(indices, distances), each (q, k): the k rows of `base` nearest each query, nearest first."""
  queries, base = np.asarray(queries, np.float64), np.asarray(base, np.float64)
  squared = (np.sum(queries**2, axis=1)[:, None] + np.sum(base**2, axis=1)[None, :]
             - 2.0 * queries @ base.T)
  k = min(k, base.shape[0])
  order = np.argsort(squared, axis=1, kind='stable')[:, :k]
  # The expansion can dip slightly below zero for near-identical vectors.
  return order, np.sqrt(np.maximum(np.take_along_axis(squared, order, axis=1), 0.0))


@dataclasses.dataclass(frozen=True)
class Crops:
  """Center crops of stored images, as the eval pipeline cuts them."""
  image: np.ndarray  # uint8 (n, c, c, 3)
  crop: np.ndarray  # int32 (n, 2)
  flip: np.ndarray  # bool (n,)
  label: np.ndarray  # int32 (n,)


def load_center_crops(data_config: ml_collections.ConfigDict, split: str,
                      indices: Sequence[int]) -> Crops:
  """The center crops of records `indices` of `split` of the configured dataset."""
  source = input_pipeline.open_split(data_config, split)
  center = augment.center_crop_offsets(data_config.image_size, data_config.crop_size)
  transform = input_pipeline.EvalTransform(
      records=source.records, parse=source.parse, resize=source.resize,
      num_records=len(source.records), image_size=data_config.image_size,
      crop_size=data_config.crop_size, views=((*center, False),))
  examples = [transform(int(i)) for i in indices]
  return Crops(image=np.stack([e['image'][0] for e in examples]),
               crop=np.stack([e['crop'][0] for e in examples]),
               flip=np.array([e['flip'][0] for e in examples]),
               label=np.array([e['label'] for e in examples], np.int32))


def features_of(crops: Crops, params: Any, *, model: alexnet.AlexNet, mean_image: np.ndarray,
                batch: int = 128) -> np.ndarray:
  """fc7 features (n, hidden) of `crops`, in fixed-size batches (one compilation)."""
  fn = jax.jit(functools.partial(fc7_features, model=model))
  mean = jnp.asarray(mean_image, jnp.float32)
  n = len(crops.image)
  batch = min(batch, n)
  out = []
  for start in range(0, n, batch):
    part = [x[start:start + batch] for x in (crops.image, crops.crop, crops.flip)]
    short = batch - len(part[0])
    if short:  # pad the last batch with copies of its first row rather than recompile
      part = [np.concatenate([x, np.repeat(x[:1], short, axis=0)]) for x in part]
    out.append(np.asarray(fn(params, *part, mean_image=mean))[:batch - short])
  return np.concatenate(out)


def plot_nearest_neighbours(queries: Crops, neighbours: Sequence[Crops], distances: np.ndarray,
                            class_descriptions: Sequence[str], path: str) -> str:
  """Figure 4's idea: each row a validation image, then its nearest training images.

  Captions in green share the query's class, in red they do not.
  """
  q, k = distances.shape
  figure = _figure(neighbour_figure_size(q, k))
  axes = np.array(figure.subplots(q, k + 1, squeeze=False))
  short = lambda label: class_descriptions[label].split(',')[0][:18]
  for row in range(q):
    ax = axes[row, 0]
    ax.imshow(queries.image[row])
    ax.set_title(f'val: {short(queries.label[row])}', fontsize=9, fontweight='bold')
    for col in range(k):
      ax = axes[row, col + 1]
      label = neighbours[row].label[col]
      ax.imshow(neighbours[row].image[col])
      same = label == queries.label[row]
      ax.set_title(f'{short(label)}\nd={distances[row, col]:.3g}', fontsize=8,
                   color='tab:green' if same else 'tab:red')
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  figure.suptitle('nearest training images by fc7 distance (paper, figure 4)', fontsize=10)
  figure.tight_layout()
  return save_png(figure, path)


def nearest_neighbour_figure(path: str, *, params: Any, model: alexnet.AlexNet,
                             data_config: ml_collections.ConfigDict, mean_image: np.ndarray,
                             class_descriptions: Sequence[str], num_queries: int = 5,
                             num_neighbours: int = 6, max_train: int = 2000,
                             seed: int = 0) -> str:
  """Draws figure 4 for random validation images against a random training subset.

  Only `max_train` training images are searched (the paper searched all of them):
  the neighbours are the nearest within that sample. Needs the dataset.
  """
  if num_queries < 1 or num_neighbours < 1 or max_train < 1:
    raise ValueError('num_queries, num_neighbours and max_train must be >= 1')
  rng = np.random.default_rng(seed)
  num_val = len(input_pipeline.open_split(data_config, 'val').records)
  num_train = len(input_pipeline.open_split(data_config, 'train').records)
  query_ids = np.sort(rng.choice(num_val, min(num_queries, num_val), replace=False))
  train_ids = np.sort(rng.choice(num_train, min(max_train, num_train), replace=False))
  queries = load_center_crops(data_config, 'val', query_ids)
  pool = load_center_crops(data_config, 'train', train_ids)
  features = lambda crops: features_of(crops, params, model=model, mean_image=mean_image)
  order, distances = nearest_neighbours(features(queries), features(pool), num_neighbours)
  neighbours = [Crops(*(x[row] for x in (pool.image, pool.crop, pool.flip, pool.label)))
                for row in order]
  return plot_nearest_neighbours(queries, neighbours, distances, class_descriptions, path)


# ----------------------------------------------------------------------------- the run's plots


def write_curve_plots(workdir: str | os.PathLike[str],
                      folder: str | None = None) -> list[str]:
  """training_curves.png and throughput.png from WORKDIR/metrics.jsonl into `folder`
  (default WORKDIR/plots); the paths written."""
  records = metric_log.read_metrics(workdir)
  if not records:
    path = os.path.join(os.fspath(workdir), metric_log.METRICS_FILE)
    raise FileNotFoundError(f'no metrics in {path}')
  folder = folder or plots_dir(workdir)
  written = [plot_training_curves(records, os.path.join(folder, CURVES_FILE))]
  train, _ = split_records(records)
  if any(r.get('images_per_sec') is not None for r in train):
    written.append(plot_throughput(records, os.path.join(folder, THROUGHPUT_FILE)))
  return written


def write_end_of_training_plots(workdir: str | os.PathLike[str], params: Any,
                                towers: int) -> list[str]:
  """The trainer's last act: curves, throughput and figure 3 into WORKDIR/plots/ (host 0).

  Never raises: a run that trained is not failed by its pictures; problems are
  logged as warnings. Figure 4 needs a pass over training images, so it is left
  to `python -m alexnet_jax.plot`. Returns the paths written.
  """
  if jax.process_index() != 0:
    return []
  written = []
  try:
    written += write_curve_plots(workdir)
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('Training curves not plotted: %s', e)
  try:
    kernel = params['conv1']['kernel']
    if getattr(kernel, 'is_fully_addressable', True):
      written.append(plot_conv1_kernels(np.asarray(jax.device_get(kernel)), towers,
                                        os.path.join(plots_dir(workdir), KERNELS_FILE)))
    else:
      logging.info('conv1 kernels span several processes; python -m alexnet_jax.plot '
                   '--workdir=%s draws them from the checkpoint.', workdir)
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('conv1 kernels not plotted: %s', e)
  if written:
    logging.info('Plots written: %s', ', '.join(written))
  return written
