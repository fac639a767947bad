"""Baselines: merges on known trees, mixtures, the router, and the gap arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from projects.superposed_experts import baselines as bl
from superpose.nn import config as nn_config
from superpose.nn.testing import random_model

CFG = nn_config.PRESETS["gpt2"](
  vocab_size=50, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=8
)


def _params(seed):
  return nnx.to_pure_dict(nnx.state(random_model(CFG, seed=seed), nnx.Param))


def test_simplex_grid():
  grid = bl.simplex_grid(2, 10)
  assert len(grid) == 11 and grid[0] == (1.0, 0.0) and grid[-1] == (0.0, 1.0)
  assert [round(w[1], 6) for w in grid] == [round(0.1 * i, 6) for i in range(11)]
  three = bl.simplex_grid(3, 3)
  assert (
    len(three) == 10
    and all(abs(sum(w) - 1) < 1e-12 for w in three)
    and (1 / 3, 1 / 3, 1 / 3) in three
  )


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
  np.testing.assert_allclose(
    bl.task_arithmetic(base, [e1, e2], 0.5)["w"], [1.5, -0.5, 0.0, 1.0, 0.25]
  )
  # density 0.4 keeps the top 2 of 5 magnitudes of each task vector: e1 → [0,-2,0,3,0]; e2 →
  # [2,1,0,0,0]. Elected signs of the sum [2,-1,0,3,0]: +,-,0,+,0; kept entries agreeing with them:
  # mean over agreeing.
  delta = bl.ties_delta([e1["w"], e2["w"]], density=0.4)
  np.testing.assert_allclose(delta, [2.0, -2.0, 0.0, 3.0, 0.0])
  np.testing.assert_allclose(
    bl.ties(base, [e1, e2], 0.5, density=0.4)["w"], [1.0, -1.0, 0.0, 1.5, 0.0]
  )
  # Two agreeing entries are averaged, not summed.
  np.testing.assert_allclose(
    bl.ties_delta([jnp.array([4.0, 0.0]), jnp.array([2.0, 0.0])], density=0.5), [3.0, 0.0]
  )


def test_mixture_weight_one_is_one_model_and_matches_probabilities():
  rng = np.random.default_rng(0)
  a, b = np.log(rng.uniform(0.01, 1, (4, 7))), np.log(rng.uniform(0.01, 1, (4, 7)))
  np.testing.assert_array_equal(bl.mixture_logprobs([a, b], [1.0, 0.0]), a.astype(np.float32))
  np.testing.assert_array_equal(bl.mixture_logprobs([a, b], [0.0, 1.0]), b.astype(np.float32))
  np.testing.assert_allclose(
    bl.mixture_logprobs([a, b], [0.3, 0.7]), np.log(0.3 * np.exp(a) + 0.7 * np.exp(b)), rtol=1e-6
  )
  w = np.ones((4, 7))
  w[0, 3:] = 0
  assert bl.perplexity(a, w) == pytest.approx(np.exp(-(a * w).sum() / w.sum()))
  # Domain 0 is modelled only by expert 0 and domain 1 only by expert 1: uniform beats either
  # corner.
  good, bad = np.full((3, 5), np.log(0.9)), np.full((3, 5), np.log(0.01))
  weights, _ = bl.best_mixture(
    {"x": ([good, bad], np.ones((3, 5))), "y": ([bad, good], np.ones((3, 5)))}
  )
  assert weights == (0.5, 0.5)
  weights, _ = bl.best_mixture({"x": ([good, bad], np.ones((3, 5)))})
  assert weights == (1.0, 0.0)


def test_router_separates_separable_data():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 1, (3, 20)) * 3
  y = rng.integers(0, 3, 600)
  x = centres[y] + rng.normal(0, 1, (600, 20)) + 100.0  # an offset: the router standardises
  router = bl.fit_router(x[:300], y[:300], 3)
  assert (router.predict(x[300:]) == y[300:]).mean() > 0.98
  logps = [np.full((4, 2), -float(k)) for k in range(3)]
  np.testing.assert_array_equal(
    bl.route(logps, np.array([0, 2, 1, 2])), [[0, 0], [-2, -2], [-1, -1], [-2, -2]]
  )


def test_gap_fraction_and_best_interpolation():
  interp = {
    (1.0, 0.0): {"a": 10.0, "b": 40.0},
    (0.5, 0.5): {"a": 14.0, "b": 18.0},
    (0.0, 1.0): {"a": 30.0, "b": 9.0},
  }
  best = bl.best_interpolation(interp)
  assert best == (0.5, 0.5)  # mean 16 < 19.5 < 25
  oracle = {"a": 10.0, "b": 9.0}
  assert bl.gap_fraction(interp[best], interp[best], oracle) == 0.0
  assert bl.gap_fraction(oracle, interp[best], oracle) == 1.0
  # a: (14 − 12)/(14 − 10) = 0.5; b: (18 − 18)/(18 − 9) = 0 → mean 0.25; worse than interp is
  # negative.
  assert bl.gap_fraction({"a": 12.0, "b": 18.0}, interp[best], oracle) == pytest.approx(0.25)
  assert bl.gap_fraction({"a": 18.0, "b": 18.0}, interp[best], oracle) == pytest.approx(-0.5)
  # A domain without a gap is left out of the mean.
  assert bl.gap_fraction({"a": 12.0, "b": 5.0}, {"a": 14.0, "b": 9.0}, oracle) == pytest.approx(0.5)


def _random_logps(k=3, n=4, t=9, seed=0):
  rng = np.random.default_rng(seed)
  return [np.log(rng.uniform(0.05, 0.95, (n, t))).astype(np.float32) for _ in range(k)]


def _mask(n=4, t=9):
  mask = np.ones((n, t), np.float32)
  mask[1, 6:] = 0  # trailing padding
  mask[2, 3] = 0  # a hole: must not update the posterior
  return mask


def _share_by_hand(logps, mask, rate, prior):
  """The definition in probability space, one position at a time (small sizes: no underflow)."""
  p = np.exp(np.stack(logps, -1).astype(np.float64))
  n, t_len, k = p.shape
  mix, weights = np.zeros((n, t_len)), np.zeros((n, t_len, k))
  for i in range(n):
    w = np.asarray(prior, np.float64) / np.sum(prior)
    for t in range(t_len):
      weights[i, t] = w
      if mask[i, t]:
        mix[i, t] = np.log(w @ p[i, t])
        w = w * p[i, t] / (w @ p[i, t])
        w = (1 - rate) * w + rate / k
  return mix, weights


def test_posterior_mixture_is_the_bayesian_mixture_and_causal():
  logps, mask, prior = _random_logps(), _mask(), (0.5, 0.3, 0.2)
  mix, weights = bl.posterior_mixture(logps, mask, prior)
  want_mix, want_w = _share_by_hand(logps, mask, 0.0, prior)
  assert mix.dtype == np.float32 and mix.shape == (4, 9) and weights.shape == (4, 9, 3)
  np.testing.assert_allclose(mix, want_mix, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-7)
  assert (mix[mask == 0] == 0).all()
  np.testing.assert_array_equal(weights[2, 3], weights[2, 4])  # the hole left the weights alone
  np.testing.assert_allclose(
    weights[:, 0], np.broadcast_to(np.array(prior, np.float32), (4, 3)), rtol=1e-6
  )
  # Strict causality: changing targets t.. changes nothing before t, nor the weights at t.
  changed = [l.copy() for l in logps]
  for l in changed:
    l[:, 5:] = np.log(0.5)
  mix2, weights2 = bl.posterior_mixture(changed, mask, prior)
  np.testing.assert_array_equal(mix2[:, :5], mix[:, :5])
  np.testing.assert_array_equal(weights2[:, :6], weights[:, :6])
  # Uniform prior by default; NaN log-probs at padding do not leak into real positions.
  nan_pad = [np.where(mask > 0, l, np.nan) for l in logps]
  np.testing.assert_array_equal(
    bl.posterior_mixture(nan_pad, mask)[0], bl.posterior_mixture(logps, mask, (1, 1, 1))[0]
  )


def test_fixed_share_matches_its_definition_and_rate_zero_is_the_posterior():
  logps, mask, prior = _random_logps(seed=1), _mask(), (0.2, 0.2, 0.6)
  for rate in (0.05, 0.5):
    mix, weights = bl.fixed_share(logps, mask, rate, prior)
    want_mix, want_w = _share_by_hand(logps, mask, rate, prior)
    np.testing.assert_allclose(mix, want_mix, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-7)
  for got, want in zip(
    bl.fixed_share(logps, mask, 0.0, prior), bl.posterior_mixture(logps, mask, prior)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # rate 1 forgets everything: after the first real target the weights are uniform.
  mix, weights = bl.fixed_share(logps, mask, 1.0, prior)
  np.testing.assert_allclose(weights[:, 1:], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(
    mix[0, 1:], bl.mixture_logprobs([l[0, 1:] for l in logps], [1 / 3] * 3), rtol=1e-6
  )
  with pytest.raises(ValueError, match="rate"):
    bl.fixed_share(logps, mask, 1.5)


def test_fixed_share_follows_a_domain_switch_and_best_rate_finds_it():
  # Expert 0 predicts the first half well, expert 1 the second: a switch half-way.
  good, bad = np.log(0.8), np.log(0.05)
  t = 64
  e0 = np.where(np.arange(t) < 32, good, bad) * np.ones((5, 1))
  e1 = np.where(np.arange(t) < 32, bad, good) * np.ones((5, 1))
  mask = np.ones((5, t))
  post, _ = bl.posterior_mixture([e0, e1], mask)
  share, w = bl.fixed_share([e0, e1], mask, 0.01)
  assert (
    share[:, 32:].sum() > post[:, 32:].sum() + 5 * 20
  )  # the posterior needs ~32 tokens to switch
  assert w[0, 40, 1] > 0.9 and w[0, 31, 0] > 0.9
  val_switch = {"switch": ([e0, e1], mask)}
  rate, value = bl.best_rate(val_switch)
  assert rate > bl.FIXED_SHARE_RATES[0]
  assert value == pytest.approx(bl.nll(bl.fixed_share([e0, e1], mask, rate)[0], mask))
  assert value == min(
    bl.nll(bl.fixed_share([e0, e1], mask, r)[0], mask) for r in bl.FIXED_SHARE_RATES
  )
  # Without a switch, sharing only costs: the smallest rate wins.
  stay = {"a": ([np.full((5, t), good), np.full((5, t), bad)], mask)}
  assert bl.best_rate(stay)[0] == bl.FIXED_SHARE_RATES[0]


def test_causal_route_never_scores_what_the_router_read():
  n, t_len = 3, 8
  logps = [np.full((n, t_len), -float(k), np.float32) for k in range(3)]
  choice = np.array([2, 1, 0])
  rows = np.arange(t_len + 1)  # tokens x_0..x_T: target t is x_{t+1}
  for prefix in range(t_len + 1):
    got = bl.causal_route(logps, choice, prefix, default=1)
    assert got.shape == (n, t_len) and got.dtype == np.float32
    read = set(rows[:-1][:prefix].tolist())  # the inputs the router has seen
    unseen = np.array([rows[t + 1] not in read for t in range(t_len)])
    for i, c in enumerate(choice):
      want = np.where(unseen, -float(c), -1.0)  # the chosen expert exactly on unseen targets
      np.testing.assert_array_equal(got[i], want, err_msg=f"prefix {prefix}, row {i}")
  np.testing.assert_array_equal(bl.causal_route(logps, choice, 1, 1), bl.route(logps, choice))
  with pytest.raises(ValueError, match="prefix"):
    bl.causal_route(logps, choice, t_len + 1, 0)
  with pytest.raises(ValueError, match="choice"):
    bl.causal_route(logps, np.array([0, 3, 1]), 2, 0)


def test_gap_closed_on_mean_nll():
  assert bl.gap_closed(2.0, 2.0, 1.0) == 0.0
  assert bl.gap_closed(1.0, 2.0, 1.0) == 1.0
  assert bl.gap_closed(1.75, 2.0, 1.0) == pytest.approx(0.25)
  assert bl.gap_closed(2.5, 2.0, 1.0) == pytest.approx(-0.5)  # worse than the interpolation
  assert np.isnan(bl.gap_closed(1.5, 2.0, 2.0))
