"""Comparisons of parameter trees, and a clock a test moves by hand."""

import jax
import numpy as np


def assert_trees_close(got, want, what: str = '', rtol: float = 2e-5, atol: float = 2e-7
                       ) -> None:
  """Every leaf of `got` within rtol/atol of the same leaf of `want`; a failure names `what`
  and the leaf's path. The default tolerance admits another float summation order (another
  mesh, another device count) and no more."""
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol,
                               err_msg=f'{what}{jax.tree_util.keystr(path)}')


class FakeClock:
  """A time source that reads `now`, which the test sets."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now
