"""The evaluations of a run: one evaluator per kind, built from the list in config.evals.

  config.evals = (('val', 'center_crop', 'val', 'every'), ('val10', 'ten_crop', 'val', 'final'))

Each entry is (name, kind, split, when): `name` is the prefix of its metrics keys
(val_loss, val_top1_err, val_top5_err), `kind` an evaluator of KINDS, `split` the
dataset split, `when` 'every' (each evaluation of the run) or 'final' (the last
one only). `val` must be listed, on the val split, every time: the plateau
schedule and the best checkpoint rank by val_top1_err. config.final_eval_crops
stays the switch of the paper's test: at 1 the 'final' 10-crop entries are left
out (the digits config, where a mirrored digit is another symbol).

The training loop and the `evaluate` command run the same evaluators: the loss
and errors are Experiment.evaluate's sums over every real example of the split.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Optional, Sequence

import ml_collections
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.data import input_pipeline

if TYPE_CHECKING:  # the config's validation imports this module; the experiment is above it
  from alexnet_jax.training import experiment
  from alexnet_jax.training import step_fns

EVERY, FINAL = 'every', 'final'
SPLITS = ('val', 'train')
METRICS = ('loss', 'top1_err', 'top5_err')  # each logged as f'{prefix}_{metric}'
# config.evals of configs that lack it (written before it existed); configs/imagenet.py sets
# the same.
DEFAULT_EVALS = (('val', 'center_crop', 'val', EVERY), ('val10', 'ten_crop', 'val', FINAL))

OnBatch = Callable[[dict[str, np.ndarray], 'step_fns.Batch'], None]


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One entry of config.evals."""
  name: str  # the metrics-key prefix
  kind: str  # a key of KINDS
  split: str  # one of SPLITS
  when: str  # EVERY or FINAL


class CropEvaluator:
  """Loss, top-1 and top-5 error of a train state over a split, `crops` views per image.

  shard: (index, count) of the slice of each batch this process reads;
  meshes.data_shard of the experiment's mesh in a training run, (0, 1) alone.
  """
  crops: ClassVar[int]

  def __init__(self, prefix: str, split: str, exp: experiment.Experiment,
               eval_step: Callable[..., Any], shard: tuple[int, int] = (0, 1),
               when: str = EVERY):
    self.prefix, self.split, self.when = prefix, split, when
    self.exp, self.eval_step, self.shard = exp, eval_step, shard

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of the split's eval batches, padded and masked."""
    config = self.exp.config
    return input_pipeline.create_eval_iterator(
        config.data, self.split, global_batch_size=config.batch_size, crops=self.crops,
        process_index=self.shard[0], process_count=self.shard[1])

  def measure(self, state: step_fns.TrainState,
              on_batch: Optional[OnBatch] = None) -> dict[str, float]:
    """{'loss', 'top1_err', 'top5_err', 'count'} over the split; on_batch as Experiment.evaluate."""
    return self.exp.evaluate(self.eval_step, state, self.batches(), on_batch=on_batch)

  def run(self, state: step_fns.TrainState) -> dict[str, float]:
    """The metrics as the run logs them: {f'{prefix}_loss': ..., ...}."""
    result = self.measure(state)
    return {f'{self.prefix}_{metric}': result[metric] for metric in METRICS}


class CenterCropEvaluator(CropEvaluator):
  """The central crop of each image."""
  crops = 1


class TenCropEvaluator(CropEvaluator):
  """The paper's test (section 4.1): four corners and the centre, each also mirrored."""
  crops = 10


KINDS: dict[str, type[CropEvaluator]] = {'center_crop': CenterCropEvaluator,
                                         'ten_crop': TenCropEvaluator}


def kind_for_crops(crops: int) -> str:
  """The evaluator kind of a view count (1 or 10), as the --crops flags name tests."""
  for kind, cls in KINDS.items():
    if cls.crops == crops:
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


def build(config: ml_collections.ConfigDict, exp: experiment.Experiment,
          eval_step: Callable[..., Any], shard: tuple[int, int]) -> list[CropEvaluator]:
  """The evaluators of config.evals that this run makes, in their listed order.

  A 'final' 10-crop entry is left out when config.final_eval_crops is 1.
  """
  out = []
  for spec in parse_evals(config):
    cls = KINDS[spec.kind]
    if spec.when == FINAL and cls.crops == 10 and config.final_eval_crops != 10:
      continue
    out.append(cls(spec.name, spec.split, exp, eval_step, shard, spec.when))
  return out


def due(evaluators: Sequence[CropEvaluator], final: bool) -> list[CropEvaluator]:
  """Those to run at an evaluation: the 'every' ones, and the 'final' ones at the last."""
  return [e for e in evaluators if e.when == EVERY or final]


def for_crops(crops: int, split: str, exp: experiment.Experiment,
              eval_step: Callable[..., Any]) -> CropEvaluator:
  """The evaluator of one view count over `split`, in one process: the evaluate command's."""
  return KINDS[kind_for_crops(crops)](split, split, exp, eval_step)
