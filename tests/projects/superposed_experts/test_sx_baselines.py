"""Baselines: merges on known trees, mixtures, the router, and the gap arithmetic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from projects.superposed_experts import baselines as bl
from superpose.nn import config as nn_config
from superpose.nn.testing import random_model

CFG = nn_config.PRESETS["gpt2"](vocab_size=50, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=8)


def _params(seed):
  return nnx.to_pure_dict(nnx.state(random_model(CFG, seed=seed), nnx.Param))


def test_simplex_grid():
  grid = bl.simplex_grid(2, 10)
  assert len(grid) == 11 and grid[0] == (1.0, 0.0) and grid[-1] == (0.0, 1.0)
  assert [round(w[1], 6) for w in grid] == [round(0.1 * i, 6) for i in range(11)]
  three = bl.simplex_grid(3, 3)
  assert len(three) == 10 and all(abs(sum(w) - 1) < 1e-12 for w in three) and (1 / 3, 1 / 3, 1 / 3) in three


def test_interpolation_endpoints_are_the_models():
  base, expert = _params(0), _params(1)
  graphdef = nnx.split(random_model(CFG))[0]
  tokens = jnp.arange(16).reshape(2, 8) % 50
  logits = lambda p: nnx.merge(graphdef, p)(tokens).logits_BTV
  for lam, want in ((0.0, base), (1.0, expert)):
    got = bl.interpolate([base, expert], (1 - lam, lam))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    np.testing.assert_array_equal(logits(got), logits(want))
  mid = bl.interpolate([base, expert], (0.5, 0.5))
  scale = lambda p: p["final_norm"]["scale"]
  np.testing.assert_allclose(scale(mid), (scale(base) + scale(expert)) / 2, rtol=1e-6)


def test_task_arithmetic_and_ties_on_known_deltas():
  base = {"w": jnp.zeros(5)}
  e1 = {"w": jnp.array([1.0, -2.0, 0.1, 3.0, 0.0])}
  e2 = {"w": jnp.array([2.0, 1.0, -0.1, -1.0, 0.5])}
  np.testing.assert_allclose(bl.task_arithmetic(base, [e1, e2], 0.5)["w"], [1.5, -0.5, 0.0, 1.0, 0.25])
  # density 0.4 keeps the top 2 of 5 magnitudes of each task vector: e1 → [0,-2,0,3,0]; e2 → [2,1,0,0,0].
  # Elected signs of the sum [2,-1,0,3,0]: +,-,0,+,0; kept entries agreeing with them: mean over agreeing.
  delta = bl.ties_delta([e1["w"], e2["w"]], density=0.4)
  np.testing.assert_allclose(delta, [2.0, -2.0, 0.0, 3.0, 0.0])
  np.testing.assert_allclose(bl.ties(base, [e1, e2], 0.5, density=0.4)["w"], [1.0, -1.0, 0.0, 1.5, 0.0])
  # Two agreeing entries are averaged, not summed.
  np.testing.assert_allclose(bl.ties_delta([jnp.array([4.0, 0.0]), jnp.array([2.0, 0.0])], density=0.5), [3.0, 0.0])


def test_mixture_weight_one_is_one_model_and_matches_probabilities():
  rng = np.random.default_rng(0)
  a, b = np.log(rng.uniform(0.01, 1, (4, 7))), np.log(rng.uniform(0.01, 1, (4, 7)))
  np.testing.assert_array_equal(bl.mixture_logprobs([a, b], [1.0, 0.0]), a.astype(np.float32))
  np.testing.assert_array_equal(bl.mixture_logprobs([a, b], [0.0, 1.0]), b.astype(np.float32))
  np.testing.assert_allclose(bl.mixture_logprobs([a, b], [0.3, 0.7]), np.log(0.3 * np.exp(a) + 0.7 * np.exp(b)),
                             rtol=1e-6)
  w = np.ones((4, 7))
  w[0, 3:] = 0
  assert bl.perplexity(a, w) == pytest.approx(np.exp(-(a * w).sum() / w.sum()))
  # Domain 0 is modelled only by expert 0 and domain 1 only by expert 1: uniform beats either corner.
  good, bad = np.full((3, 5), np.log(0.9)), np.full((3, 5), np.log(0.01))
  weights, _ = bl.best_mixture({"x": ([good, bad], np.ones((3, 5))), "y": ([bad, good], np.ones((3, 5)))})
  assert weights == (0.5, 0.5)
  weights, _ = bl.best_mixture({"x": ([good, bad], np.ones((3, 5)))})
  assert weights == (1.0, 0.0)


def test_router_separates_separable_data():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 1, (3, 20)) * 3
  y = rng.integers(0, 3, 600)
  x = centres[y] + rng.normal(0, 1, (600, 20)) + 100.0        # an offset: the router standardises
  router = bl.fit_router(x[:300], y[:300], 3)
  assert (router.predict(x[300:]) == y[300:]).mean() > 0.98
  logps = [np.full((4, 2), -float(k)) for k in range(3)]
  np.testing.assert_array_equal(bl.route(logps, np.array([0, 2, 1, 2])), [[0, 0], [-2, -2], [-1, -1], [-2, -2]])


def test_gap_fraction_and_best_interpolation():
  interp = {(1.0, 0.0): {"a": 10.0, "b": 40.0}, (0.5, 0.5): {"a": 14.0, "b": 18.0}, (0.0, 1.0): {"a": 30.0, "b": 9.0}}
  best = bl.best_interpolation(interp)
  assert best == (0.5, 0.5)                                 # mean 16 < 19.5 < 25
  oracle = {"a": 10.0, "b": 9.0}
  assert bl.gap_fraction(interp[best], interp[best], oracle) == 0.0
  assert bl.gap_fraction(oracle, interp[best], oracle) == 1.0
  # a: (14 − 12)/(14 − 10) = 0.5; b: (18 − 18)/(18 − 9) = 0 → mean 0.25; worse than interp is negative.
  assert bl.gap_fraction({"a": 12.0, "b": 18.0}, interp[best], oracle) == pytest.approx(0.25)
  assert bl.gap_fraction({"a": 18.0, "b": 18.0}, interp[best], oracle) == pytest.approx(-0.5)
  # A domain without a gap is left out of the mean.
  assert bl.gap_fraction({"a": 12.0, "b": 5.0}, {"a": 14.0, "b": 9.0}, oracle) == pytest.approx(0.5)
