"""The documentation stands alone and agrees with the package.

- No file of the repository points at notes outside it: a reader has only the
  repository, and the facts the code relies on are in docs/design.md.
- README.md's Layout table lists exactly the modules of alexnet_jax/ (the Layers
  table of docs/design.md is checked by tests/test_layering.py, which reads it).
- Every citation of docs/design.md names one of its headings. The format (the path,
  a comma, the heading in double quotes) is defined at the top of docs/design.md.

"Files of the repository" are the tracked files plus the untracked ones git does not
ignore (new files count before they are committed), as `git ls-files` lists them.
"""

import glob
import os
import re
import subprocess

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = 'docs/design.md'
README = 'README.md'
THIS_FILE = 'tests/test_docs.py'  # its sample citations test the parser, not design.md

# Notes the project was written from, which users never see. Their names are put together
# from pieces, so that this file, which must name them, does not itself cite them.
_SPEC, _NOTES, _SHARED = 'SP' + 'EC', 'FIELD' + '_NOTES', 'sha' + 'red'
FORBIDDEN_STRINGS = (f'{_SPEC} section', f'{_SPEC}.md', _NOTES, 'STY' + 'LE.md', f'../{_SHARED}',
                     f'/work/{_SHARED}')
FORBIDDEN_WORD = re.compile(rf'\b{_SPEC}\b')  # "<name>'s", "(<name>)"; not PartitionSpec
# The path, a comma, then (across a comment's line break if need be) a quoted heading.
CITATION = re.compile(r'docs/design\.md,')
QUOTED = re.compile(r'[ \t]*(?:\n[ \t]*(?:#[ \t]*)?)?"([^"\n]*(?:\n[ \t]*(?:#[ \t]*)?[^"\n]*)?)"')
LINK = re.compile(r'design\.md#([^\s)\]>`\'"]*)')
MODULE_CELL = re.compile(r'`alexnet_jax/((?:\w+/)*\w+)\.py`')


def repository_files() -> list[str]:
  """Paths (relative to the repository) of tracked and not-ignored untracked files."""
  proc = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                        cwd=REPO, capture_output=True, text=True, check=True)
  paths = sorted(set(proc.stdout.splitlines()))
  return [p for p in paths if os.path.isfile(os.path.join(REPO, p))]  # not deleted ones


def read_text(path: str) -> str | None:
  """The file's text, or None for a binary file."""
  with open(os.path.join(REPO, path), 'rb') as f:
    data = f.read()
  if b'\0' in data:
    return None
  return data.decode('utf-8', errors='replace')


def text_files() -> dict[str, str]:
  texts = {}
  for path in repository_files():
    text = read_text(path)
    if text is not None:
      texts[path] = text
  return texts


def forbidden_references(texts: dict[str, str]) -> list[str]:
  """'path:line: text' of every line that points at notes outside the repository."""
  hits = []
  for path, text in texts.items():
    for number, line in enumerate(text.splitlines(), 1):
      if any(s in line for s in FORBIDDEN_STRINGS) or FORBIDDEN_WORD.search(line):
        hits.append(f'{path}:{number}: {line.strip()}')
  return hits


def markdown_headings(text: str) -> list[str]:
  """The `##` and `###` headings of a markdown text, outside fenced code."""
  headings, fenced = [], False
  for line in text.splitlines():
    if line.startswith('```'):
      fenced = not fenced
    elif not fenced:
      match = re.match(r'#{2,3} (.+?)\s*#*\s*$', line)
      if match:
        headings.append(match.group(1))
  return headings


def github_anchor(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def design_citations(texts: dict[str, str]) -> list[tuple[str, int, str | None]]:
  """(path, line, cited heading or None when not in the citation format) of every citation."""
  found = []
  for path, text in texts.items():
    for match in CITATION.finditer(text):
      line = text.count('\n', 0, match.start()) + 1
      quoted = QUOTED.match(text, match.end())
      heading = None
      if quoted:
        heading = re.sub(r'\s*\n[ \t]*(?:#[ \t]*)?', ' ', quoted.group(1)).strip()
      found.append((path, line, heading))
  return found


def section(text: str, heading: str) -> str:
  """The lines of a `## heading` section, up to the next `## ` heading."""
  lines = text.splitlines()
  start = lines.index(f'## {heading}')
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')),
             len(lines))
  return '\n'.join(lines[start + 1:end])


def package_modules() -> list[str]:
  """Every module of the package as a path under alexnet_jax/ without '.py' ('data/sources').

  A package's __init__.py (its docstring names its modules) is not a module of its own.
  """
  paths = glob.glob(os.path.join(REPO, 'alexnet_jax', '**', '*.py'), recursive=True)
  package = os.path.join(REPO, 'alexnet_jax')
  return sorted(os.path.relpath(p, package)[:-3] for p in paths
                if os.path.basename(p) != '__init__.py')


class StandsAloneTest(absltest.TestCase):

  def test_no_reference_to_notes_outside_the_repository(self):
    hits = forbidden_references(text_files())
    self.assertEmpty(hits, 'files cite notes users never see; cite docs/design.md (or state '
                     'the fact) instead:\n' + '\n'.join(hits))

  def test_the_check_sees_every_form(self):
    texts = {'a.py': f'# see {_SPEC} section 3\nx = PartitionSpec()\n',
             'b.md': f"{_SPEC}'s formula\n{_NOTES}\n../{_SHARED}/x\n/work/{_SHARED}/{_SPEC}.md\n"}
    self.assertEqual([h.split(':')[:2] for h in forbidden_references(texts)],
                     [['a.py', '1'], ['b.md', '1'], ['b.md', '2'], ['b.md', '3'], ['b.md', '4']])


class LayoutTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.modules = package_modules()
    self.assertNotEmpty(self.modules)

  def assert_lists_modules(self, listed: list[str], where: str):
    duplicates = sorted({m for m in listed if listed.count(m) > 1})
    self.assertEmpty(duplicates, f'{where} lists these modules more than once')
    self.assertEqual(
        sorted(listed), self.modules,
        f'{where} must list exactly the modules of alexnet_jax/; '
        f'missing: {sorted(set(self.modules) - set(listed))}, '
        f'no such module: {sorted(set(listed) - set(self.modules))}')

  def test_readme_layout_lists_every_module(self):
    with open(os.path.join(REPO, README)) as f:
      layout = section(f.read(), 'Layout')
    listed = [m for row in layout.splitlines() if row.startswith('|')
              for m in MODULE_CELL.findall(row)]
    self.assert_lists_modules(listed, f'{README}, "Layout" (each `alexnet_jax/PATH.py` once)')


class DesignCitationTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    with open(os.path.join(REPO, DESIGN)) as f:
      self.headings = markdown_headings(f.read())

  def test_headings_are_unique(self):
    repeated = sorted({h for h in self.headings if self.headings.count(h) > 1})
    self.assertEmpty(repeated, f'{DESIGN} repeats headings, so citing them is ambiguous')

  def test_citations_name_headings(self):
    bad = []
    texts = {p: t for p, t in text_files().items() if p != THIS_FILE}
    for path, line, heading in design_citations(texts):
      if heading is None:
        bad.append(f'{path}:{line}: not in the format docs/design.md, "<heading>"')
      elif heading not in self.headings:
        bad.append(f'{path}:{line}: {DESIGN} has no heading {heading!r}')
    self.assertEmpty(bad, f'\n'.join(bad) + f'\nheadings of {DESIGN}: {self.headings}')

  def test_links_name_headings(self):
    anchors = {github_anchor(h) for h in self.headings}
    bad = []
    for path, text in {p: t for p, t in text_files().items() if p != THIS_FILE}.items():
      for match in LINK.finditer(text):
        if match.group(1) not in anchors:
          line = text.count('\n', 0, match.start()) + 1
          bad.append(f'{path}:{line}: no heading of {DESIGN} has the anchor #{match.group(1)}')
    self.assertEmpty(bad, '\n'.join(bad))

  def test_the_parser_reads_every_form(self):
    texts = {'a.py': ('x = 1  # docs/design.md, "Layers"\n'
                      '# as docs/design.md,\n# "The update rule" says\n'
                      '"""Why (docs/design.md, "Checkpoints and\n    preemption")."""\n'
                      '# docs/design.md, data\n')}
    self.assertEqual(design_citations(texts),
                     [('a.py', 1, 'Layers'), ('a.py', 2, 'The update rule'),
                      ('a.py', 4, 'Checkpoints and preemption'), ('a.py', 6, None)])
    self.assertEqual(github_anchor('XLA:CPU measurements'), 'xlacpu-measurements')
    self.assertEqual(github_anchor('metrics.jsonl'), 'metricsjsonl')


if __name__ == '__main__':
  absltest.main()
