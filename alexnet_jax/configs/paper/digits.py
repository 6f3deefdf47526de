"""The paper's ablations at digits scale: configs/digits.py with one change of configs/paper/.

  python launch.py --config=configs/paper/digits.py:no_lrn --workdir=runs/digits_no_lrn
  python launch.py --config=configs/paper/digits.py --workdir=runs/digits_baseline

The name after the colon is a module of configs/paper (ABLATIONS); without one,
or with `baseline`, this is configs/digits.py itself. Each change is the same
`apply` as the ImageNet config's, so it scales with the digits net (one_tower's
widths are multiplied by model.width=0.25: 12, 32, 48, 48, 64). Digits runs prove
that each config trains and evaluates end to end; they cannot show effects of
the size the paper measured on ImageNet (docs/reproduce.md).
"""

import importlib

import ml_collections

from alexnet_jax.configs import digits
from alexnet_jax.configs.paper import ABLATIONS

BASELINE = 'baseline'


def get_config(ablation: str = BASELINE) -> ml_collections.ConfigDict:
  config = digits.get_config()
  if ablation in ('', BASELINE):
    return config
  if ablation not in ABLATIONS:
    raise ValueError(f'unknown ablation {ablation!r}; expected one of '
                     f'{(BASELINE,) + ABLATIONS}')
  return importlib.import_module(f'alexnet_jax.configs.paper.{ablation}').apply(config)
