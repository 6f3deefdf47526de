"""Command: a run's weights for other frameworks.

  python -m alexnet_jax.export_weights --workdir=runs/a --to=safetensors --output=a.safetensors
  python -m alexnet_jax.export_weights --workdir=runs/tv --to=torchvision --output=alexnet.pth
      [--step=newest|best|N]

safetensors: any run, in this project's own layout with its config and mean image
(weights/safetensors_io.py); `import_weights --source=safetensors` reads it back
bit for bit. torchvision: a state_dict in torchvision's AlexNet layout (its keys and
shapes), for runs of that architecture: one tower, no LRN, conv1 padding 2, 3x3
pooling with stride 2, a 6x6 map into fc6 (export_formats.torchvision_mismatch);
another run is refused in one line. At torchvision's widths (64-192-384-256-256,
4096) `torchvision.models.alexnet()` loads it as it is. The weights expect the run's
own input, which the command prints.

WRITERS maps each --to to a function `(run, output path) -> None`, looked up by name
so that a format's optional package is needed only for that format.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.core import fileio
from alexnet_jax.evaluation import finished_run
from alexnet_jax.weights import layout

# --to -> 'module:function' of alexnet_jax.weights writing a FinishedRun to a path.
WRITERS = {
    'torchvision': 'export_formats:write_torchvision',
    'safetensors': 'export_formats:write_safetensors',
    'onnx': 'onnx_io:write_run',
}


def writer(fmt: str) -> Callable[[finished_run.FinishedRun, str], None]:
  """The writer of --to, or errors.InputError naming the known formats."""
  if fmt not in WRITERS:
    raise errors.InputError(f'unknown --to {fmt!r}; expected one of {sorted(WRITERS)}')
  module_name, function = WRITERS[fmt].split(':')
  try:
    module = importlib.import_module(f'alexnet_jax.weights.{module_name}')
  except ModuleNotFoundError as e:
    if e.name != f'alexnet_jax.weights.{module_name}':
      raise
    raise errors.InputError(f'--to={fmt} is not available in this version') from None
  return getattr(module, function)


def describe_input(config: ml_collections.ConfigDict, mean: np.ndarray) -> str:
  """The input a run's weights expect, in one line."""
  crop = config.data.crop_size
  if np.asarray(mean).ndim == 1:
    mean_text = 'minus the per-channel mean (' + ', '.join(f'{m:.3f}' for m in mean) + ')'
  else:
    mean_text = f'minus the per-pixel mean image (mean_image.npy of the run, {mean.shape})'
  text = f'{crop}x{crop} RGB crops of 0-255 pixels {mean_text}'
  if config.model.input_scale != 1.0:
    text += f', times {config.model.input_scale}'
  std = config.model.get('input_std')
  if std is not None:
    text += ', divided per channel by (' + ', '.join(f'{s:.3f}' for s in std) + ')'
  return text


def export_weights(workdir: str, fmt: str, output: str, step: Any = None) -> str:
  """Writes the run's weights (newest checkpoint, or `step`) to `output`; returns the
  one-line description of the input they expect."""
  write = writer(fmt)
  fileio.check_output_path(output, '--output')  # before any weights are read
  config = finished_run.load_config(workdir)
  if step is not None and isinstance(step, str):
    step = finished_run.choose_step(workdir, config, finished_run.parse_step(step))
  run = finished_run.load_run(workdir, step)
  run = finished_run.FinishedRun(run.config, run.model, jax.device_get(run.params), run.info,
                                 run.step)
  write(run, output)
  return describe_input(run.config, run.mean_image)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Workdir of a run (trained or imported).')
  flags.DEFINE_enum('to', None, sorted(WRITERS), 'Format to write.')
  flags.DEFINE_string('output', None, 'File to write.')
  flags.DEFINE_string('step', finished_run.NEWEST,
                      f"Checkpoint: '{finished_run.NEWEST}' (default), '{finished_run.BEST}' or "
                      'a step number.')
  for name in ('workdir', 'to', 'output'):
    flags.mark_flag_as_required(name)


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  cli.start_reader()
  expects = export_weights(FLAGS.workdir, FLAGS.to, FLAGS.output, FLAGS.step)
  print(f'{FLAGS.output}: {FLAGS.to} weights of {FLAGS.workdir}; they expect {expects}',
        flush=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
