"""Command: weights trained elsewhere (Caffe, ONNX, torchvision) as an ordinary run.

  python -m alexnet_jax.import_weights --source=torchvision \
      --input=alexnet-owt-7be5be79.pth --workdir=runs/torchvision
  python -m alexnet_jax.import_weights --source=caffe --input=bvlc_alexnet.caffemodel \
      [--prototxt=deploy.prototxt] [--mean_file=imagenet_mean.binaryproto] --workdir=runs/bvlc

The workdir then holds a run at step 0 (run_writer) with the source's own test-time
preprocessing in its config and dataset description, which `evaluate`, `predict`,
`plot`, `export_weights` and fine-tuning read like any run. docs/reproduce.md says
where each file comes from and what accuracy it should give.

READERS maps each --source to a module whose `read(path, **options)` returns a
layout.ForeignNet (or a layout.RunWeights); it is imported only when chosen, so a
source's optional package (torch, protobuf, onnx) is needed only for that source. An
option (--mean_file, --prototxt) that the chosen reader's signature does not take is
refused rather than ignored.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.weights import layout
from alexnet_jax.weights import run_writer

# --source -> module of alexnet_jax.weights with `read(path, **options)`.
READERS = {
    'torchvision': 'torchvision_io',
    'safetensors': 'safetensors_io',
    'caffe': 'caffe',
    'onnx': 'onnx_io',
}


def reader(source: str) -> Callable[..., Any]:
  """The `read` function of --source, or errors.InputError naming the known sources."""
  if source not in READERS:
    raise errors.InputError(f'unknown --source {source!r}; expected one of {sorted(READERS)}')
  try:
    module = importlib.import_module(f'alexnet_jax.weights.{READERS[source]}')
  except ModuleNotFoundError as e:
    if e.name != f'alexnet_jax.weights.{READERS[source]}':
      raise
    raise errors.InputError(f'--source={source} is not available in this version') from None
  return module.read


def import_weights(source: str, input_path: str, workdir: str, *,
                   num_classes: int | None = None, **options: Any) -> layout.RunWeights:
  """Reads `input_path` with the reader of `source` and writes it as a run in `workdir`.

  options: the reader's own (mean_file, prototxt); those left None are not passed.
  """
  if not os.path.exists(input_path):
    raise errors.MissingInputError(f'--input {input_path} does not exist')
  run_writer.check_new_workdir(workdir)  # before the weights are read
  read = reader(source)
  given = {k: v for k, v in options.items() if v is not None}
  _check_options(read, source, given)
  net = read(input_path, **given)
  weights = layout.as_run(net, num_classes)
  note = f'{source}: {os.path.abspath(input_path)}'
  config = run_writer.write_run(workdir, weights.config, weights.params,
                                mean_image=weights.mean_image, source_note=note)
  return layout.RunWeights(config, weights.params, weights.mean_image)


def _check_options(read: Callable[..., Any], source: str, given: dict[str, Any]) -> None:
  """Refuses an option the reader of `source` does not take (it would be silently ignored)."""
  parameters = inspect.signature(read).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return
  for name in given:
    if name not in parameters:
      raise errors.InputError(f'--{name} does not apply to --source={source}')


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_enum('source', None, sorted(READERS), 'Format of --input.')
  flags.DEFINE_string('input', None, 'The weights file (.pth, .caffemodel, .onnx, .safetensors).')
  flags.DEFINE_string('workdir', None, 'New run folder to write.')
  flags.DEFINE_string('mean_file', None, 'caffe/onnx: a Caffe mean file (.binaryproto or .npy, '
                      'BGR); default: the per-channel mean 104/117/123 of BGR 0-255 pixels.')
  flags.DEFINE_string('prototxt', None, 'caffe: the deploy prototxt, where the .caffemodel '
                      'alone does not give the layer settings.')
  for name in ('source', 'input', 'workdir'):
    flags.mark_flag_as_required(name)


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  cli.start_reader()
  weights = import_weights(FLAGS.source, FLAGS.input, FLAGS.workdir,
                           mean_file=FLAGS.mean_file, prototxt=FLAGS.prototxt)
  model = weights.config.model
  print(f'{FLAGS.workdir}: {FLAGS.source} weights as a run at step 0 ({model.towers} '
        f'tower{"s" if model.towers > 1 else ""}, LRN {"on" if model.use_lrn else "off"}, '
        f'{weights.config.data.crop_size} crops, {model.num_classes} classes); evaluate with '
        f'python -m alexnet_jax.evaluate --workdir={FLAGS.workdir} --data_dir=DATA',
        flush=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
