"""Per-prompt superposition measures, the reference predictors, the intervals and the K-task /
control prompts."""

import numpy as np
import pytest

from projects.icl_superposition import calibrate, capacity, mixtures, tasks


def _shares(n, rng, k=2):
  return rng.dirichlet(np.ones(k), size=n)


def test_reference_predictors_per_prompt():
  rng = np.random.default_rng(0)
  shares = _shares(4000, rng)
  nominal = np.tile([0.3, 0.7], (4000, 1))
  refs = mixtures.references(nominal, shares, rng)
  soft = mixtures.per_prompt(refs["soft oracle"], shares)
  assert np.allclose(soft["kl"], 0) and np.allclose(soft["tv"], 0) and np.allclose(soft["other"], 0)
  assert np.all(soft["r"] == 2)
  hot = mixtures.per_prompt(refs["one-hot oracle"], shares)
  assert np.isinf(hot["kl"]).all() and np.all(hot["r"] == 1)
  # one task per prompt, drawn with the shares: E[TV] = 1 − Σ s², and the mean P matches the mean
  # share
  assert hot["tv"].mean() == pytest.approx(np.mean(1 - (shares**2).sum(1)), abs=0.01)
  assert refs["one-hot oracle"].p.mean(0) == pytest.approx(shares.mean(0), abs=0.02)
  diag = mixtures.per_prompt(refs["diagonal"], shares)
  assert diag["tv"] == pytest.approx(0.5 * np.abs(nominal - shares).sum(1))
  # a predictor leaking mass elsewhere: TV counts it once, KL grows
  leak = mixtures.Predictions(p=0.5 * shares, r=np.full(4000, 2))
  m = mixtures.per_prompt(leak, shares)
  assert m["other"] == pytest.approx(np.full(4000, 0.5)) and m["tv"] == pytest.approx(
    np.full(4000, 0.5)
  )
  assert m["kl"] == pytest.approx(np.full(4000, np.log(2)))


def test_uniform_guess_is_the_chance_floor_of_r():
  rng = np.random.default_rng(5)
  for k in (2, 5):
    shares = np.full((20000, k), 1.0 / k)
    guess = mixtures.references(shares, shares, rng, n_outputs=10)[mixtures.GUESS]
    assert guess.r.mean() == pytest.approx(
      k * k / 10, rel=0.03
    )  # hypergeometric: K of 10 outputs drawn K
    m = mixtures.per_prompt(guess, shares)
    assert m["other"] == pytest.approx(np.full(20000, 1 - k / 10)) and m["kl"] == pytest.approx(
      np.full(20000, np.log(10 / k))
    )
  with pytest.raises(ValueError):
    mixtures.references(np.ones((1, 3)) / 3, np.ones((1, 3)) / 3, rng, n_outputs=2)


def test_r_of_reference_predictors_counts_nonzero_answers():
  p = np.array([[0.3, 0.7], [1.0, 0.0], [0.2, 0.2]])
  assert list(mixtures.references(p, p, np.random.default_rng(0))["diagonal"].r) == [2, 1, 2]


def test_bootstrap_over_seeds_widens_the_interval():
  rng = np.random.default_rng(1)
  a, b = rng.normal(0, 1, 500), rng.normal(1, 1, 500)
  one = mixtures.bootstrap_ci([np.concatenate([a, b])], draws=1000)
  two = mixtures.bootstrap_ci([a, b], draws=1000)
  assert two[1] - two[0] > 3 * (one[1] - one[0])
  assert mixtures.bootstrap_ci([np.array([1.0, np.inf])]) == [np.inf, np.inf]
  s = mixtures.summarize([{"kl": a**2, "tv": np.abs(a)}, {"kl": b**2, "tv": np.abs(b)}], draws=200)
  assert s["kl"]["per_seed"] == pytest.approx([np.mean(a**2), np.mean(b**2)])
  assert s["kl"]["median_ci95"][0] <= s["kl"]["median"] <= s["kl"]["median_ci95"][1]


def test_shares_of_prompts():
  ps = [
    tasks.multi_task_prompt(
      ["plus1", "plus2", "plus3"], [0.5, 0.3, 0.2], 10, np.random.default_rng(i)
    )
    for i in range(3)
  ]
  assert mixtures.shares_of(ps, 3) == pytest.approx(np.tile([0.5, 0.3, 0.2], (3, 1)))


def test_query_absent_control():
  rng = np.random.default_rng(2)
  for p in calibrate.mixed_prompts(
    "random", "random", 100, 0.4, 30, rng, family="mod_add", query_absent=True
  ):
    assert all(x != p.query for x, _ in p.examples) and len(p.examples) == 100
    k = [int(t.removeprefix("plus")) for t in p.tasks]
    assert p.answers == tuple(str((int(p.query) + j) % 10) for j in k)
    for (x, y), lab in zip(p.examples, p.labels):
      assert int(y) == (int(x) + k[lab]) % 10
  ordinary = calibrate.mixed_prompts("random", "random", 100, 0.4, 30, rng, family="mod_add")
  assert np.mean([any(x == p.query for x, _ in p.examples) for p in ordinary]) > 0.9
  config = {"icl": {"n_examples": 12, "family": "retrieval"}}
  assert calibrate.condition_setup(config, "inside") == (11, False)
  assert calibrate.condition_setup(config, "standard") == (12, False)
  with pytest.raises(ValueError, match="mod_add"):
    calibrate.condition_setup(config, "absent")
  with pytest.raises(ValueError, match="unknown"):
    calibrate.condition_setup(config, "sideways")


@pytest.mark.parametrize("law", ["uniform", "dirichlet"])
def test_k_task_prompts(law):
  rng = np.random.default_rng(3)
  ps, nominal = capacity.k_prompts("mod_add", 4, law, 100, 40, rng)
  assert nominal.shape == (40, 4) and np.allclose(nominal.sum(1), 1)
  shares = mixtures.shares_of(ps, 4)
  for p, w, s in zip(ps, nominal, shares):
    assert len(set(p.tasks)) == 4 and len(set(p.answers)) == 4 and len(p.examples) == 100
    if law == "uniform":
      assert s == pytest.approx([0.25] * 4)
  if law == "dirichlet":
    assert np.abs(shares - nominal).mean() < 0.05 and shares.std() > 0.1
  with pytest.raises(ValueError):
    capacity.k_prompts("mod_add", 11, law, 100, 1, rng)
  assert capacity.conditions([1, 2], ["uniform", "dirichlet"]) == [
    (1, "uniform"),
    (2, "uniform"),
    (2, "dirichlet"),
  ]


def test_run_groups():
  assert calibrate.run_groups(["a/x_s0,a/x_s1", "b/y", "big=c/z_s0,c/z_s1"]) == [
    ("x", ["a/x_s0", "a/x_s1"]),
    ("y", ["b/y"]),
    ("big", ["c/z_s0", "c/z_s1"]),
  ]


def test_analyse_two_seeds_and_markdown():
  """Two seeds of synthetic curves: the model's rows pool them, the references are scored on the
  same prompts, the table names every predictor and the per-seed values."""

  def fake_curve(rng, leak):
    rows = []
    for d in calibrate.MIXING:
      k0 = rng.binomial(20, d, size=50)
      shares = np.stack([k0 / 20, 1 - k0 / 20], 1)
      p = (1 - leak) * shares
      rows.append(
        {
          "d": d,
          "p": p,
          "r": np.full(50, 2),
          "shares": shares,
          "nominal": np.tile([d, 1 - d], (50, 1)),
        }
      )
    return rows

  rng = np.random.default_rng(4)
  curves = [fake_curve(rng, 0.0), fake_curve(rng, 0.2)]
  ref = {d: (d, 1 - d, 0.0) for d in calibrate.MIXING}
  res = calibrate.analyse(curves, ref, draws=200, n_outputs=10)
  assert set(res) == {"model", *mixtures.REFERENCES, mixtures.GUESS}
  model = res["model"]
  assert model["per_prompt"]["other"]["per_seed"] == pytest.approx([0.0, 0.2])
  assert np.allclose(model["single_task_per_seed"], [[1.0, 1.0], [0.8, 0.8]])
  assert model["rows"][5]["p_task0"]["mean"] == pytest.approx(
    np.mean(np.concatenate([curves[0][5]["shares"][:, 0], 0.8 * curves[1][5]["shares"][:, 0]]))
  )
  assert res["soft oracle"]["compare"]["rms_gap"] < 0.02 < model["compare"]["rms_gap"]
  md = calibrate.markdown(
    {
      "toy": {
        "workdirs": ["a", "b"],
        "prompts": 50,
        "mixing": "bernoulli",
        "lines": {"standard": 20},
        "reference": "ref",
        "reference_curve": {},
        "conditions": {"standard": res},
      }
    }
  )
  assert "one-hot oracle" in md and "per seed: single-task 1.000 / 1.000 · 0.800 / 0.800" in md
