"""The console commands an installed package has: each runs one command module as `python -m`.

`pip install .` (see pyproject.toml, `[project.scripts]`) makes `alexnet-train`,
`alexnet-prepare`, `alexnet-evaluate`, `alexnet-predict`, `alexnet-plot`,
`alexnet-summary`, `alexnet-import-weights` and `alexnet-export-weights`. Each runs its
module exactly as `python -m alexnet_jax.MODULE` does
(the module's `__main__` block defines its flags), so the two spellings cannot drift apart.
"""

import runpy


def _run(module: str) -> None:
  # alter_sys: the module becomes __main__ as under `python -m` (absl's --helpshort lists the
  # main module's flags; grain's worker processes import __main__ by its spec).
  runpy.run_module(module, run_name='__main__', alter_sys=True)


def train() -> None:
  """alexnet-train: train and evaluate (alexnet_jax/launch.py; a checkout's launch.py)."""
  _run('alexnet_jax.launch')


def prepare() -> None:
  """alexnet-prepare: prepare a dataset into ArrayRecord shards and statistics."""
  _run('alexnet_jax.prepare')


def evaluate() -> None:
  """alexnet-evaluate: evaluate checkpoints over a split; ensembles of runs."""
  _run('alexnet_jax.evaluate')


def predict() -> None:
  """alexnet-predict: classify image files with a run's checkpoint."""
  _run('alexnet_jax.predict')


def plot() -> None:
  """alexnet-plot: redraw a run's figures."""
  _run('alexnet_jax.plot')


def summary() -> None:
  """alexnet-summary: the network a config builds, without creating it."""
  _run('alexnet_jax.summary')


def import_weights() -> None:
  """alexnet-import-weights: Caffe, ONNX, torchvision or safetensors weights as a run."""
  _run('alexnet_jax.import_weights')


def export_weights() -> None:
  """alexnet-export-weights: a run's weights for torchvision, safetensors or ONNX."""
  _run('alexnet_jax.export_weights')
