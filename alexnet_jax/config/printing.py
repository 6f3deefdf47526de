"""`--print_config`: the resolved config, each field with the comment its config file gives it.

The comments are read from the sources, not kept beside them: the named config
file and the config modules it builds on (`from configs import imagenet`), each
parsed with `ast` (which statement sets which field) and `tokenize` (the
comments). A field's comment is the one at the end of its line, with the
comment-only lines below it that are indented further after the `#`
(continuations); failing that, the comment lines right above it. The shipped
configs/imagenet.py gives every field one; a file that overrides a field with a
comment of its own adds it after the base one.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import textwrap
import tokenize
from typing import Any, Optional

import ml_collections

from alexnet_jax.config import resolution
from alexnet_jax.config import resume_changes
from alexnet_jax.core import cli

BASE_MODULE = 'alexnet_jax.configs.imagenet'  # every field's comment, for files that have none (WORKDIR/config.py)
WIDTH = 100


def _field_of(target: ast.expr) -> Optional[str]:
  """'a.b' for the target `config.a.b` (any root name), None for anything else."""
  parts = []
  while isinstance(target, ast.Attribute):
    parts.append(target.attr)
    target = target.value
  if not isinstance(target, ast.Name) or not parts:
    return None
  return '.'.join(reversed(parts))


def _is_continuation(comment: str) -> bool:
  """'#   more text': a comment line that continues the one above (indented after the '#')."""
  return comment.startswith('#  ')


def _clean(lines: list[str]) -> str:
  return ' '.join(' '.join(line.lstrip('#').split()) for line in lines).strip()


def comments_of_source(source: str) -> dict[str, str]:
  """Dotted field -> its comment, for every `config.FIELD = ...` statement of `source`."""
  comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(
      io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
  lines = source.splitlines()
  comment_only = lambda n: 1 <= n <= len(lines) and lines[n - 1].lstrip().startswith('#')
  found: dict[str, str] = {}
  for node in ast.walk(ast.parse(source)):
    targets = (node.targets if isinstance(node, ast.Assign) else
               [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
    for field in filter(None, map(_field_of, targets)):
      text = _trailing(node.lineno, comments, comment_only) or _leading(
          node.lineno, comments, comment_only)
      if text:
        found[field] = text
  return found


def _trailing(line: int, comments: dict[int, str], comment_only: Any) -> str:
  """The comment ending the statement's first line, with its continuation lines."""
  if line not in comments or comment_only(line):
    return ''
  block = [comments[line]]
  below = line + 1
  while comment_only(below) and _is_continuation(comments.get(below, '')):
    block.append(comments[below])
    below += 1
  return _clean(block)


def _leading(line: int, comments: dict[int, str], comment_only: Any) -> str:
  """The comment lines right above the statement (not the continuation of an earlier one)."""
  above = line - 1
  while comment_only(above):
    above -= 1
  block = [comments[n] for n in range(above + 1, line)]
  if above in comments and not comment_only(above):  # the block may continue that comment
    while block and _is_continuation(block[0]):
      block.pop(0)
  return _clean(block)


def _imported_config_files(tree: ast.Module) -> list[str]:
  """Files of the modules `tree` imports that define get_config (the configs it builds on)."""
  names = []
  for node in tree.body:
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names += [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
  files = []
  for name in names:
    try:
      spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
      continue
    origin = getattr(spec, 'origin', None)
    if origin and origin.endswith('.py') and origin not in files:
      files.append(origin)
  return files


def field_comments(path: str, _depth: int = 0) -> dict[str, str]:
  """Dotted field -> comment from the config file at `path` and the configs it builds on.

  Base first: a file's own comment on a field it overrides is added after the
  base's, as '(name.py: ...)'.
  """
  try:
    with open(path) as f:
      source = f.read()
    tree = ast.parse(source)
  except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
    return {}
  merged: dict[str, str] = {}
  if not any(isinstance(n, ast.FunctionDef) and n.name == 'get_config' for n in tree.body):
    # A checkout's configs/NAME.py only hands on the packaged config it imports.
    for base in _imported_config_files(tree) if _depth < 4 else ():
      merged.update(field_comments(base, _depth + 1))
    return merged
  if _depth < 4:
    for base in _imported_config_files(tree):
      merged.update(field_comments(base, _depth + 1))
  name = os.path.basename(path)
  for field, text in comments_of_source(source).items():
    merged[field] = f'{merged[field]} ({name}: {text})' if field in merged else text
  return merged


def base_comments() -> dict[str, str]:
  """The comments of the shipped configs/imagenet.py, where it can be found."""
  try:
    spec = importlib.util.find_spec(BASE_MODULE)
  except (ImportError, ValueError):
    return {}
  return field_comments(spec.origin) if spec and spec.origin else {}


def describe(resolved: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
             comments: dict[str, str], source: str) -> str:
  """The text --print_config prints: one `field = value  # comment` per field."""
  given_fields = resume_changes.flatten(given.to_dict())
  lines = [f'# The resolved config of {source}; [was X]: a value this machine chose for X.']
  for field, value in resume_changes.flatten(resolved.to_dict()).items():
    head = f'{field} = {value!r}'
    note = comments.get(field, '')
    if field in given_fields and given_fields[field] != value:
      note = f'[was {given_fields[field]!r}] {note}'.strip()
    if not note:
      lines.append(head)
      continue
    if len(head) > WIDTH // 2:  # a long value (a tuple of rules): its comment goes below
      lines.append(head)
      lines += [f'  # {part}' for part in textwrap.wrap(note, width=WIDTH - 4)]
      continue
    indent = ' ' * (len(head) + 2)
    wrapped = textwrap.wrap(note, width=WIDTH - len(indent) - 2)
    lines.append(f'{head}  # {wrapped[0]}')
    lines += [f'{indent}# {part}' for part in wrapped[1:]]
  return '\n'.join(lines)


def print_config(config: ml_collections.ConfigDict, config_argument: str) -> None:
  """Prints the config of --config=`config_argument` resolved for this machine, commented.

  config_argument: the flag's value, a file with an optional ':argument'. A bad
  field is the usual one-line error (resolution.validate).
  """
  cli.start_backend()  # resolving reads the platform: one line where it cannot start
  path = config_argument.split(':', 1)[0]
  comments = {**base_comments(), **field_comments(path)}
  print(describe(resolution.load(config), config, comments, config_argument), flush=True)
