"""The evaluations of a run: an evaluator for each entry of config.evals.

alexnet_jax.config.evals checks the list (name, kind, split, when); here each entry
becomes a CropEvaluator of its kind's views per image. config.final_eval_crops stays
the switch of the paper's test: at 1 the 'final' 10-crop entries are left out (the
digits config, where a mirrored digit is another symbol).

The training loop and the `evaluate` command run the same evaluators: the loss
and errors are Experiment.evaluate's sums over every real example of the split.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import ml_collections
import numpy as np

from alexnet_jax.config import eval_schema
from alexnet_jax.data import input_pipeline

from alexnet_jax.learning import experiment
from alexnet_jax.learning import step_fns

METRICS = ('loss', 'top1_err', 'top5_err')  # each logged as f'{prefix}_{metric}'

OnBatch = Callable[[dict[str, np.ndarray], step_fns.Batch], None]


class CropEvaluator:
  """Loss, top-1 and top-5 error of a train state over a split, `crops` views per image.

  shard: (index, count) of the slice of each batch this process reads;
  placement.data_shard of the experiment's mesh in a training run, (0, 1) alone.
  """
  def __init__(self, prefix: str, split: str, exp: experiment.Experiment,
               eval_step: Callable[..., Any], crops: int, shard: tuple[int, int] = (0, 1),
               when: str = eval_schema.EVERY):
    self.prefix, self.split, self.when, self.crops = prefix, split, when, crops
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


def build(config: ml_collections.ConfigDict, exp: experiment.Experiment,
          eval_step: Callable[..., Any], shard: tuple[int, int]) -> list[CropEvaluator]:
  """The evaluators of config.evals that this run makes, in their listed order.

  A 'final' 10-crop entry is left out when config.final_eval_crops is 1.
  """
  out = []
  for spec in eval_schema.parse_evals(config):
    crops = eval_schema.KINDS[spec.kind]
    if spec.when == eval_schema.FINAL and crops == 10 and config.final_eval_crops != 10:
      continue
    out.append(CropEvaluator(spec.name, spec.split, exp, eval_step, crops, shard, spec.when))
  return out


def due(evaluators: Sequence[CropEvaluator], final: bool) -> list[CropEvaluator]:
  """Those to run at an evaluation: the 'every' ones, and the 'final' ones at the last."""
  return [e for e in evaluators if e.when == eval_schema.EVERY or final]


def for_crops(crops: int, split: str, exp: experiment.Experiment,
              eval_step: Callable[..., Any]) -> CropEvaluator:
  """The evaluator of one view count over `split`, in one process: the evaluate command's."""
  eval_schema.kind_for_crops(crops)  # 1 or 10, refused in one line otherwise
  return CropEvaluator(split, split, exp, eval_step, crops)
