"""lm_loss's accuracy: the argmax-free hit test equals ``argmax == target``, ties included."""

import jax.numpy as jnp
import numpy as np

from superpose.train.losses import argmax_hits, lm_loss


def test_argmax_hits_equal_argmax_with_ties():
  rng = np.random.default_rng(0)
  # few distinct values per row: many ties, targets on and off the first maximum
  logits = rng.integers(0, 4, (6, 50, 9)).astype(np.float32)
  targets = rng.integers(0, 9, (6, 50))
  targets[:, ::3] = logits[:, ::3].argmax(-1)  # make sure the first maximum is hit too
  want = logits.argmax(-1) == targets
  got = np.asarray(argmax_hits(jnp.asarray(logits), jnp.asarray(targets)))
  assert want.any() and not want.all()
  np.testing.assert_array_equal(got, want)
  # a later maximum is a miss; out-of-range targets are misses
  row = jnp.asarray([[[3.0, 1.0, 3.0]]])
  assert bool(argmax_hits(row, jnp.asarray([[0]])).all())
  assert not bool(argmax_hits(row, jnp.asarray([[2]])).any())
  assert not bool(argmax_hits(row, jnp.asarray([[3]])).any())
  assert not bool(argmax_hits(row, jnp.asarray([[-1]])).any())


def test_lm_loss_accuracy_is_weighted_argmax_accuracy():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((3, 20, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 20))
  targets[0] = logits[0].argmax(-1)
  weights = (rng.random((3, 20)) < 0.7).astype(np.float32)
  _, metrics = lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  want = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
  np.testing.assert_allclose(float(metrics["accuracy"]), want, rtol=1e-6)
