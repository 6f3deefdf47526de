"""The fields a config may hold; any other is a typo, refused in one line naming the nearest.

The fields are those of configs/imagenet.py's get_config, which every shipped config
starts from; resume_changes.DECISIONS holds one decision for each of them (a test
keeps the two equal), so it is the list used here. A config file is plain Python
that may set any attribute (`c.optim.learnin_rate = 0.5` would otherwise train at
the default rate), and a stored config.json is a file anyone can edit, so both are
compared with the list. A known field may be absent: a config written before the
field existed keeps that field's default.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from alexnet_jax.config import resume_changes
from alexnet_jax.core import errors

FIELDS = frozenset(resume_changes.DECISIONS)
# Each field's enclosing sections ('optim' for 'optim.learning_rate'): not fields themselves.
SECTIONS = frozenset(f.rsplit('.', 1)[0] for f in FIELDS if '.' in f)


def _plain(config: Any) -> Mapping[str, Any]:
  return config.to_dict() if hasattr(config, 'to_dict') else config


def unknown(config: Any) -> list[str]:
  """The dotted fields of `config` (a ConfigDict or its dict) that no config has, sorted."""
  return sorted(f for f in resume_changes.flatten(_plain(config))
                if f not in FIELDS and f not in SECTIONS)


def nearest(field: str) -> str | None:
  """The known field closest to `field` in spelling (difflib), or None when none is close."""
  matches = difflib.get_close_matches(field, sorted(FIELDS), n=1, cutoff=0.6)
  return matches[0] if matches else None


def describe(field: str) -> str:
  """'config.optim.learnin_rate, which is not a config field (did you mean ...?)'."""
  close = nearest(field)
  return (f'config.{field}, which is not a config field'
          + (f' (did you mean config.{close}?)' if close else ''))


def check(config: Any, where: str = 'the config',
          fix: str = 'the fields are those of configs/imagenet.py') -> None:
  """Raises errors.InputError naming every unknown field of `config` and its nearest field.

  `where` says whose fields they are ('the config', or a stored file) and `fix` what to
  do, both for the one line of the message.
  """
  names = unknown(config)
  if names:
    raise errors.InputError(f'{where} sets {"; and ".join(describe(n) for n in names)}; {fix}')
