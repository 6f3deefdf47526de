"""The schema of config.evals: which evaluations a run makes, checked before it starts.

  config.evals = (('val', 'center_crop', 'val', 'every'), ('val10', 'ten_crop', 'val', 'final'))

Each entry is (name, kind, split, when): `name` is the prefix of its metrics keys
(val_loss, val_top1_err, val_top5_err), `kind` one of KINDS, `split` the dataset split,
`when` 'every' (each evaluation of the run) or 'final' (the last one only). `val` must
be listed, on the val split, every time: the plateau schedule and the best checkpoint
rank by val_top1_err. The evaluators themselves live in alexnet_jax.evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from alexnet_jax.core import errors

EVERY, FINAL = 'every', 'final'
# Evaluator kinds and the views of each image they average (alexnet_jax.evaluation builds them).
KINDS = {'center_crop': 1, 'ten_crop': 10}
SPLITS = ('val', 'train')
# config.evals of configs that lack it (written before it existed); configs/imagenet.py sets
# the same.
DEFAULT_EVALS = (('val', 'center_crop', 'val', EVERY), ('val10', 'ten_crop', 'val', FINAL))


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One entry of config.evals."""
  name: str  # the metrics-key prefix
  kind: str  # a key of KINDS
  split: str  # one of SPLITS
  when: str  # EVERY or FINAL


def kind_for_crops(crops: int) -> str:
  """The evaluator kind of a view count (1 or 10), as the --crops flags name tests."""
  for kind, views in KINDS.items():
    if views == crops:
      return kind
  raise errors.InputError(f'crops must be 1 (center) or 10 (the paper\'s test), got {crops}')


def _spec(entry: Any) -> EvalSpec:
  """One entry of config.evals, checked; raises errors.InputError naming what is wrong."""
  if not isinstance(entry, (tuple, list)) or len(entry) != 4 or not all(
      isinstance(x, str) for x in entry):
    raise errors.InputError(f'config.evals entries must be (name, kind, split, when), got '
                            f'{entry!r}')
  spec = EvalSpec(*entry)
  if not spec.name.isidentifier():
    raise errors.InputError(f'config.evals: the name {spec.name!r} must be a word (it prefixes '
                            'the metrics keys)')
  if spec.kind not in KINDS:
    raise errors.InputError(f'config.evals: unknown evaluator {spec.kind!r} in {spec.name!r}; '
                            f'known: {", ".join(KINDS)}')
  if spec.split not in SPLITS:
    raise errors.InputError(f'config.evals: the split of {spec.name!r} must be one of {SPLITS}, '
                            f'got {spec.split!r}')
  if spec.when not in (EVERY, FINAL):
    raise errors.InputError(f"config.evals: when of {spec.name!r} must be '{EVERY}' or "
                            f"'{FINAL}', got {spec.when!r}")
  return spec


def parse_evals(config: ml_collections.ConfigDict) -> list[EvalSpec]:
  """config.evals as EvalSpecs (DEFAULT_EVALS where the config lacks the field), checked."""
  entries = config.get('evals', DEFAULT_EVALS)
  if not isinstance(entries, (tuple, list)):
    raise errors.InputError(f'config.evals must be a tuple of (name, kind, split, when), got '
                            f'{entries!r}')
  specs = [_spec(entry) for entry in entries]
  names = [s.name for s in specs]
  for name in names:
    if names.count(name) > 1:
      raise errors.InputError(f'config.evals lists {name!r} twice: its metrics would collide')
  if not any(s.name == 'val' and s.split == 'val' and s.when == EVERY for s in specs):
    raise errors.InputError(
        f"config.evals must hold ('val', <kind>, 'val', '{EVERY}'): the schedule and the best "
        f'checkpoint rank by val_top1_err; got {names}')
  return specs


def validate_evals(config: ml_collections.ConfigDict) -> None:
  """Raises errors.InputError, in one line, for a config.evals the run cannot follow."""
  parse_evals(config)
