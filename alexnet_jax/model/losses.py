"""Softmax cross-entropy and top-k errors, the quantities the paper reports.

Pure jax functions for the train and eval steps. They compute in float32 even
when the logits are bfloat16, and take an optional mask of real examples so a
padded last eval batch does not count its padding.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _masked_mean(values: Array, mask: Optional[Array]) -> Array:
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(bool)
  # where, not multiply: a padded example may hold NaN, and NaN * 0 is NaN.
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)


def cross_entropy_per_example(logits: Array, labels: Array) -> Array:
  """-log softmax(logits)[label] for each example: [batch, classes], [batch] -> [batch]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def cross_entropy(logits: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Mean softmax cross-entropy over the (masked-in) examples, a float32 scalar."""
  return _masked_mean(cross_entropy_per_example(logits, labels), mask)


def topk_wrong(scores: Array, labels: Array, ks: Sequence[int] = (1, 5)) -> tuple[Array, ...]:
  """Per example and per k: 1.0 where the label is not among the k highest scores, else 0.0.

  `scores` may be logits or probabilities (only their order matters). The rank of
  the label is the number of OTHER classes that do not score strictly lower, so a
  tie counts against the label: the error is the largest that any order of the tied
  classes would give, and constant scores over C > k classes give a top-k error of
  1, never 0. A NaN score
  counts against the label too: for the label, it makes the example wrong; for
  another class, that class ranks above the label. docs/design.md, "Top-k errors".
  """
  scores = scores.astype(jnp.float32)
  label_score = jnp.take_along_axis(scores, labels[:, None].astype(jnp.int32), axis=-1)
  # Counting beats sorting here: one compare per class, no top_k. `~(<)` rather than
  # `>=` so that NaN scores count; minus 1 for the label itself.
  rank = jnp.sum(~(scores < label_score), axis=-1) - 1
  unusable = jnp.isnan(label_score[:, 0])
  return tuple(((rank >= k) | unusable).astype(jnp.float32) for k in ks)


def topk_errors(scores: Array, labels: Array, ks: Sequence[int] = (1, 5),
                mask: Optional[Array] = None) -> tuple[Array, ...]:
  """Top-k error rates (fractions in [0, 1]) over the (masked-in) examples, one per k."""
  return tuple(_masked_mean(w, mask) for w in topk_wrong(scores, labels, ks))
