"""The losses and error counts of model/losses.py (and the eval step's probability sums)
against numpy, ties and NaNs included."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.learning import step_fns
from alexnet_jax.model import losses


def numpy_cross_entropy(logits, labels):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_z = np.log(np.exp(shifted).sum(axis=1))
  return log_z - shifted[np.arange(len(labels)), labels]


def numpy_topk_wrong(scores, labels, k):
  """The worst order of ties: sorted by score, the label after every class scoring the same.

  A NaN score of another class sorts as +inf (above the label); a NaN label score is wrong.
  """
  wrong = []
  for row, label in zip(np.asarray(scores, np.float64), labels):
    is_label = np.arange(len(row)) == label
    keyed = np.where(np.isnan(row) & ~is_label, np.inf, row)
    order = np.lexsort((is_label, -keyed))  # last key first: score descending, label last
    wrong.append(np.isnan(row[label]) or label not in order[:k])
  return np.array(wrong, np.float64)


class LossesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.logits = rng.normal(size=(64, 12)).astype(np.float32) * 3
    self.labels = rng.integers(0, 12, size=64)
    self.mask = rng.random(64) < 0.6

  def test_cross_entropy_matches_numpy(self):
    expected = numpy_cross_entropy(self.logits, self.labels)
    got = losses.cross_entropy_per_example(jnp.asarray(self.logits), jnp.asarray(self.labels))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(losses.cross_entropy(self.logits, self.labels), expected.mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.cross_entropy(self.logits, self.labels, self.mask),
                               expected[self.mask].mean(), rtol=1e-5)

  def test_cross_entropy_is_float32_for_bf16_logits(self):
    loss = losses.cross_entropy(jnp.asarray(self.logits, jnp.bfloat16), self.labels)
    self.assertEqual(loss.dtype, jnp.float32)
    rounded = np.asarray(jnp.asarray(self.logits, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(loss, numpy_cross_entropy(rounded, self.labels).mean(), rtol=1e-5)

  @parameterized.parameters((1, 5), (1, 3, 12))
  def test_topk_matches_numpy(self, *ks):
    wrong = losses.topk_wrong(jnp.asarray(self.logits), jnp.asarray(self.labels), ks)
    errors = losses.topk_errors(self.logits, self.labels, ks)
    masked = losses.topk_errors(self.logits, self.labels, ks, mask=self.mask)
    for k, w, e, m in zip(ks, wrong, errors, masked):
      expected = numpy_topk_wrong(self.logits, self.labels, k)
      np.testing.assert_array_equal(w, expected)
      self.assertAlmostEqual(float(e), expected.mean(), places=6)
      self.assertAlmostEqual(float(m), expected[self.mask].mean(), places=6)
    if 12 in ks:  # every class is in the top 12 of 12
      self.assertEqual(float(errors[ks.index(12)]), 0.0)

  def test_softmax_probabilities_rank_like_logits(self):
    probs = np.exp(self.logits) / np.exp(self.logits).sum(axis=1, keepdims=True)
    for a, b in zip(losses.topk_errors(probs, self.labels), losses.topk_errors(self.logits, self.labels)):
      self.assertAlmostEqual(float(a), float(b), places=6)

  def test_padding_with_nan_is_masked_out_and_nan_label_score_is_wrong(self):
    logits = self.logits.copy()
    logits[~self.mask] = np.nan
    mask = jnp.asarray(self.mask)
    loss = losses.cross_entropy(logits, self.labels, mask)
    np.testing.assert_allclose(loss, numpy_cross_entropy(self.logits, self.labels)[self.mask].mean(),
                               rtol=1e-5)
    _, top5 = losses.topk_errors(logits, self.labels, mask=mask)
    self.assertAlmostEqual(float(top5), numpy_topk_wrong(self.logits, self.labels, 5)[self.mask].mean(),
                           places=6)
    all_wrong = losses.topk_errors(logits, self.labels)  # unmasked: NaN rows count as wrong
    self.assertAlmostEqual(float(all_wrong[1]),
                           (numpy_topk_wrong(self.logits, self.labels, 5)[self.mask].sum()
                            + (~self.mask).sum()) / 64, places=6)

  def test_constant_logits_are_wrong(self):
    # Ties count against the label: with 10 equal logits, every label is 10th of 10,
    # so the top-1 and top-5 errors are 1 (not 0, as when ties counted for the label).
    scores, labels = np.zeros((4, 10), np.float32), np.array([0, 3, 5, 9])
    expected = [numpy_topk_wrong(scores, labels, k).mean() for k in (1, 5)]
    self.assertEqual(expected, [1.0, 1.0])
    self.assertEqual([float(e) for e in losses.topk_errors(scores, labels)], expected)
    # With no more classes than k, every class is among the top k.
    self.assertEqual(float(losses.topk_errors(np.zeros((2, 3)), np.array([0, 2]))[1]), 0.0)

  @parameterized.parameters((1, 2, 5), (3, 11, 12))
  def test_ties_match_numpy(self, *ks):
    # Scores from 4 values over 12 classes: nearly every label ties with other classes.
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(256, 12)).astype(np.float32)
    labels = rng.integers(0, 12, size=256)
    for k, w in zip(ks, losses.topk_wrong(jnp.asarray(scores), jnp.asarray(labels), ks)):
      expected = numpy_topk_wrong(scores, labels, k)
      np.testing.assert_array_equal(w, expected)
      # The case is one where the rule matters: ties in the label's favour would differ.
      above = (scores > scores[np.arange(256), labels][:, None]).sum(axis=1)
      if k < 12:
        self.assertGreater(np.sum(expected != (above >= k)), 10)

  def test_nan_of_another_class_counts_against_the_label(self):
    scores = np.array([[2.0, np.nan, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]], np.float32)
    labels = np.array([0, 3])
    self.assertEqual([float(e) for e in losses.topk_errors(scores, labels, ks=(1, 2))],
                     [numpy_topk_wrong(scores, labels, k).mean() for k in (1, 2)])
    self.assertEqual(numpy_topk_wrong(scores, labels, 1).tolist(), [1.0, 0.0])

  def test_eval_sums_count_a_uniform_prediction_wrong(self):
    # The eval step ranks softmax outputs: equal logits give equal probabilities.
    probs = jax.nn.softmax(jnp.zeros((5, 10)))
    sums = step_fns.probability_sums(probs, jnp.arange(5), jnp.ones(5, bool))
    self.assertEqual((float(sums['top1_wrong']), float(sums['top5_wrong'])), (5.0, 5.0))


if __name__ == '__main__':
  absltest.main()
