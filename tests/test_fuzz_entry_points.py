"""The fuzz harness's fast profile (tests/fuzz): hostile inputs of every class through the
real commands; `python -m tests.fuzz --profile=long` runs the long one."""

from absl.testing import absltest

from tests.fuzz.suite import FuzzTest  # pylint: disable=unused-import

if __name__ == '__main__':
  absltest.main()
