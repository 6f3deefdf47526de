"""Which config fields a resumed run may change: one decision per field, with its reason.

A run that resumes from its checkpoints continues the computation it started. A
field that changes what is computed or the order of the data would make the
resumed run something no single run is (a batch size that miscounts epochs and
restarts the data order, a wider network that the checkpoint does not fit), so a
change to it is REFUSED, and the run says how to get out (the stored config, or a
new workdir). A field that only changes what is logged, how often checkpoints are
written, how long the run lasts, when it evaluates or how the work is spread over
devices and threads is ACCEPTED, recorded in the workdir and written into its
config (storage/workdir_files.py).

`DECISIONS` holds every field of configs/imagenet.py and no other
(tests/test_resume_changes.py fails for a field without one, tests/test_config_typos.py
for one more): it is the list of fields known_fields checks every config against. A
field it lacks is a typo; known_fields refuses it before any comparison, and `compare`
refuses it too, so it is never recorded as an accepted change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

REFUSE = 'refuse'
ACCEPT = 'accept'


@dataclasses.dataclass(frozen=True)
class Decision:
  action: str  # REFUSE or ACCEPT
  reason: str  # one line: why


def _refuse(reason: str) -> Decision:
  return Decision(REFUSE, reason)


def _accept(reason: str) -> Decision:
  return Decision(ACCEPT, reason)


_MODEL = 'the checkpoint holds weights of the network it describes'
_DATA = 'changes the images the network sees'
_ORDER = 'changes the data order or the epoch count of the steps already taken'
_OPTIM = 'changes the update rule that produced the weights and the optimizer state'
_SCHEDULE = 'the schedule state in the checkpoint was built under it'

DECISIONS: dict[str, Decision] = {
    # ----------------------------------------------------------------- what the run is
    'seed': _refuse('seeds the init, dropout and the data order: a new seed is another run'),
    'init_from': _refuse('the run\'s weights started from that checkpoint: another start is '
                         'another run'),
    'batch_size': _refuse(f'{_ORDER}; the iterator position counts batches'),
    'num_epochs': _accept('only where the run ends; a finished run can be extended'),
    'num_train_steps': _accept('only where the run ends'),
    'eval_every_epochs': _accept('only when evaluations happen (with the plateau schedule, '
                                 'patience counts evaluations at the new cadence)'),
    'final_eval_crops': _accept('only the views of the last evaluation'),
    'evals': _accept('only which evaluations are made and logged, not what is trained'),
    # ----------------------------------------------------------------- devices
    'mesh.data': _accept('checkpoints restore into any sharding: the same computation, up to '
                         'the order of float sums (docs/design.md, "XLA:CPU measurements")'),
    'mesh.model': _accept('as mesh.data (also when it is auto)'),
    'mesh.rules': _accept('only which device holds which part of the weights'),
    # ----------------------------------------------------------------- the network
    'model.num_classes': _refuse(_MODEL),
    'model.towers': _refuse(_MODEL),
    'model.use_lrn': _refuse(f'changes the function computed; {_MODEL}'),
    'model.dropout_rate': _refuse('changes the function trained'),
    'model.conv1_padding': _refuse(f'changes the function computed; {_MODEL}'),
    'model.width': _refuse(_MODEL),
    'model.conv_widths': _refuse(_MODEL),
    'model.pool_size': _refuse('changes the function computed and the fc6 input size'),
    'model.pool_stride': _refuse('changes the function computed and the fc6 input size'),
    'model.dtype': _refuse('changes the arithmetic (bfloat16 or float32; auto picks by backend, '
                           'so pass the stored value to resume on another backend)'),
    'model.init_scheme': _refuse('the weights were initialised under it'),
    'model.input_scale': _refuse('changes the input every weight was trained on'),
    'model.lrn_k': _refuse(f'changes the function computed; {_MODEL}'),
    'model.lrn_alpha': _refuse(f'changes the function computed; {_MODEL}'),
    'model.input_std': _refuse('changes the input every weight was trained on'),
    'model.group_impl': _refuse('changes how grouped convolutions are computed (equal outputs '
                                'up to float order, but kept fixed within a run)'),
    # ----------------------------------------------------------------- the data
    'data.source': _refuse(f'{_DATA} (another reader, another resize)'),
    'data.dir': _accept('the dataset may move (a copy on local disk); its classes, split sizes '
                        'and statistics are compared with the run\'s dataset_info.json, and '
                        'another dataset is refused'),
    'data.prepare_from': _accept('only where a missing dataset is prepared from; the dataset '
                                 'itself is compared as for data.dir'),
    'data.storage': _accept('only how a missing dataset is prepared; a complete one is read in '
                            'the storage it has, and compared as for data.dir'),
    'data.image_size': _refuse(_DATA),
    'data.crop_size': _refuse(f'{_DATA}; {_MODEL}'),
    'data.random_crop': _refuse(_DATA),
    'data.flip': _refuse(_DATA),
    'data.lighting_std': _refuse(_DATA),
    'data.mean': _refuse('changes the input every weight was trained on'),
    'data.num_threads': _accept('the same batches for any thread count (tests/'
                                'test_reliability.py, DeterminismTest)'),
    'data.worker_count': _accept('the same batches for any worker count (DeterminismTest)'),
    'data.prefetch': _accept('only how far ahead batches are made'),
    'data.device_prefetch': _accept('only how far ahead batches reach the devices; checkpoints '
                                    'store the position of the batches consumed'),
    # ----------------------------------------------------------------- the update rule
    'optim.learning_rate': _accept('takes effect from the resumed step: the step schedule '
                                   'scales from it, the plateau schedule keeps its drops and '
                                   'scales the new base rate by them'),
    'optim.momentum': _refuse(_OPTIM),
    'optim.weight_decay': _refuse(_OPTIM),
    'optim.decay_bias': _refuse(_OPTIM),
    'optim.schedule': _refuse(_SCHEDULE),
    'optim.plateau_patience': _refuse(_SCHEDULE),
    'optim.plateau_factor': _refuse(_SCHEDULE),
    'optim.plateau_max_drops': _refuse(_SCHEDULE),
    'optim.step_epochs': _refuse('the learning rates of the epochs already trained followed it'),
    'optim.step_factor': _refuse('the learning rates of the epochs already trained followed it'),
    # ----------------------------------------------------------------- bookkeeping
    'checkpoint.every_steps': _accept('only how often checkpoints are written'),
    'checkpoint.keep': _accept('only how many checkpoints are kept'),
    'checkpoint.keep_best': _accept('only which checkpoints are kept'),
    'checkpoint.start_fresh_if_unusable': _accept('only what happens when no checkpoint reads'),
    'log.every_steps': _accept('only how often train metrics are logged'),
    'log.tensorboard': _accept('only whether TensorBoard files are written'),
    'log.progress': _accept('only the console progress bar'),
    'log.profile_steps': _accept('only which steps are profiled'),
    'log.wandb.project': _accept('only where metrics are mirrored (the W&B run id stays in the '
                                 'workdir)'),
    'log.wandb.entity': _accept('only where metrics are mirrored'),
    'log.wandb.name': _accept('only the name W&B shows'),
    'log.wandb.mode': _accept('only whether W&B uploads now or later'),
}

UNKNOWN = _refuse('not a field of any config (a typo?)')


def decision(field: str) -> Decision:
  """The decision for a dotted field name (UNKNOWN, refused, for a field no config has)."""
  return DECISIONS.get(field, UNKNOWN)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: the dotted fields of a (plain) config."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


@dataclasses.dataclass(frozen=True)
class Change:
  field: str
  stored: Any  # MISSING when the stored config lacks the field
  current: Any  # MISSING when the current config lacks it
  decision: Decision


MISSING = '(absent)'


def compare(stored: Mapping[str, Any], current: Mapping[str, Any]
            ) -> tuple[list[Change], list[Change]]:
  """(refused, accepted) changes between two plain (JSON-like) configs, by dotted field.

  A known field one side lacks is accepted: the program gained it since the run
  started, and its default is meant to keep the old behaviour. A field no config has
  is refused whatever its values.
  """
  old, new = flatten(stored), flatten(current)
  refused, accepted = [], []
  for field in sorted(set(old) | set(new)):
    before, after = old.get(field, MISSING), new.get(field, MISSING)
    if before == after:
      continue
    rule = decision(field)
    if MISSING in (before, after) and field in DECISIONS:
      rule = _accept('the program gained this field since the run started')
    (refused if rule.action == REFUSE else accepted).append(Change(field, before, after, rule))
  return refused, accepted
