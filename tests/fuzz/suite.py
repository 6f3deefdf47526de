"""The fuzz tests: each class of hostile input (inputs.CLASSES) drawn by hypothesis, run
through the real commands, every case checked against runner.violations.

Profiles (ALEXNET_FUZZ_PROFILE, or `python -m tests.fuzz --profile=...`):
  fast  in the test suite: a fixed seed, a few cases per class on the cheap commands
        (dry runs, summary, a tiny pre-made run), about two minutes on 2 cores;
  long  many cases per class on every command, including training resumes; cases that
        hit another feature's defect (runner.Case.elsewhere) are reported as expected
        failures, never failing the run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st
import numpy as np

from tests import fakes
from tests import trained_run
from tests.fuzz import findings
from tests.fuzz import inputs
from tests.fuzz import runner


@dataclasses.dataclass(frozen=True)
class Profile:
  examples: dict[str, int]  # class -> cases drawn
  slow: bool  # also the slow commands (prepare, plot, evaluate, training resumes)
  timeout: float  # seconds per case
  seed: int = 2612


PROFILES = {
    'fast': Profile({'config': 30, 'plan': 8, 'path': 20, 'name': 8, 'workdir_file': 12,
                     'env': 1}, slow=False, timeout=60),
    'long': Profile({'config': 150, 'plan': 40, 'path': 150, 'name': 40, 'workdir_file': 120,
                     'env': 60}, slow=True, timeout=120),
}


def profile() -> Profile:
  return PROFILES[os.environ.get('ALEXNET_FUZZ_PROFILE', 'fast')]


def _strategies(slow: bool) -> dict[str, st.SearchStrategy[inputs.Draw]]:
  return {'config': st.one_of(inputs.config_overrides(), inputs.config_files()),
          'plan': inputs.plan_numbers(), 'path': inputs.path_flags(slow),
          'name': inputs.odd_names(slow), 'workdir_file': inputs.workdir_files(slow),
          'env': inputs.environment(slow)}


class FuzzTest(absltest.TestCase):
  """Every class of hostile input through the real commands: runner.violations must be empty."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.profile = profile()
    cls.root = tempfile.mkdtemp(prefix='alexnet_fuzz_')
    run = trained_run.workdir()
    image = os.path.join(cls.root, 'good.JPEG')
    with open(image, 'wb') as f:
      f.write(fakes.jpeg(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)))
    source = os.path.join(cls.root, 'small_source')
    fakes.write_image_folder(source, ('a', 'b'), 2, 1, np.random.default_rng(1))
    cls.fixtures = inputs.Fixtures(os.path.join(cls.root, 'cases'), run,
                                   os.path.join(os.path.dirname(run), 'data'), image, source)
    cls.server = runner.Server()
    cls.findings: list[str] = []
    cls.expected: list[str] = []

  @classmethod
  def tearDownClass(cls):
    cls.server.close()
    for dirpath, dirnames, _ in os.walk(cls.root):  # read-only folders of the path cases
      for name in dirnames:
        path = os.path.join(dirpath, name)
        if not os.path.islink(path):
          os.chmod(path, 0o755)
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def run_draw(self, draw: inputs.Draw) -> tuple[runner.Case, runner.Result, list[str]]:
    case = self.fixtures.build(draw, self.profile.timeout)
    result = self.server.run(case)
    return case, result, runner.violations(case, result)

  def fuzz(self, kind: str) -> None:
    """Runs the findings of `kind`, then draws the profile's cases; fails listing every case
    that broke a property (or, for a finding, ended otherwise than pinned)."""
    prof = self.profile
    strategy = _strategies(prof.slow)[kind]
    if not prof.slow:
      strategy = strategy.filter(lambda d: not d.elsewhere)
    failures = []

    def check(draw: inputs.Draw) -> None:
      case, result, broken = self.run_draw(draw)
      if os.environ.get('ALEXNET_FUZZ_VERBOSE'):
        print(f'[{kind}] {case.what[:70]!r}: status {result.status}, {result.seconds:.1f} s'
              f'{"; " + "; ".join(broken) if broken else ""}', file=sys.stderr, flush=True)
      if broken and case.elsewhere:
        self.expected.append(f'(expected: {case.elsewhere}) ' + runner.describe(case, result))
      elif broken:
        failures.append(runner.describe(case, result))

    for found in findings.FINDINGS:
      if found.draw.kind == kind:
        case, result, broken = self.run_draw(found.draw)
        seen = (result.status, findings.last_line(result.output, case))
        if broken or seen != (found.status, found.line):
          failures.append(f'expected {(found.status, found.line)}\n' +
                          runner.describe(case, result))
    body: Callable[[inputs.Draw], None] = hypothesis.given(strategy)(check)
    settings = hypothesis.settings(
        max_examples=prof.examples[kind], deadline=None, database=None, derandomize=False,
        phases=(hypothesis.Phase.generate,), print_blob=False,
        suppress_health_check=list(hypothesis.HealthCheck))
    start = time.monotonic()
    hypothesis.seed(prof.seed)(settings(body))()
    self.findings.extend(failures)
    self.assertEqual(failures, [], '\n\n'.join(failures) +
                     f'\n({kind}: {time.monotonic() - start:.0f} s)')

  def test_config_overrides(self):
    self.fuzz('config')

  def test_plan_numbers(self):
    self.fuzz('plan')

  def test_path_flags(self):
    self.fuzz('path')

  def test_odd_names(self):
    self.fuzz('name')

  def test_workdir_files(self):
    self.fuzz('workdir_file')

  def test_environment(self):
    self.fuzz('env')
