"""Per-sequence NLL and the paired hierarchical bootstrap: exact point estimates, pairing,
coverage."""

import time

import numpy as np
import pytest

from projects.superposed_experts import stats

GROUPS = ("english", "french")


def _logps(rng, n=30, t=12):
  """Log-probs with trailing padding of random length (every row keeps at least 4 targets)."""
  logp = np.log(rng.uniform(0.05, 0.95, (n, t))).astype(np.float32)
  mask = (np.arange(t) < rng.integers(4, t + 1, n)[:, None]).astype(np.float32)
  return logp, mask


def _scores(methods=("ref", "oracle", "m", "e_en", "e_fr"), seeds=("0", "1", "2"), seed=0):
  """scores[method][seed][group] from random log-probs on one shared set of masks per group; also
  the log-probs themselves, to recompute everything directly."""
  rng = np.random.default_rng(seed)
  masks = {g: _logps(rng)[1] for g in GROUPS}
  raw, scores = {}, {}
  for m in methods:
    for s in seeds:
      for g in GROUPS:
        logp = np.log(rng.uniform(0.05, 0.95, masks[g].shape)).astype(np.float32)
        raw[m, s, g] = logp
        scores.setdefault(m, {}).setdefault(s, {})[g] = stats.sequence_nll(logp, masks[g])
  return scores, raw, masks


def _direct_nll(raw, masks, m, seeds, g):
  """Token-weighted mean NLL per seed, averaged over seeds, straight from the log-probs."""
  return np.mean(
    [-(raw[m, s, g].astype(np.float64) * masks[g]).sum() / masks[g].sum() for s in seeds]
  )


def test_sequence_nll_sums_real_targets_only():
  logp = np.array([[-1.0, -2.0, np.nan], [-0.5, -0.5, -0.5]], np.float32)
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  sums, counts = stats.sequence_nll(logp, mask)
  np.testing.assert_array_equal(sums, [3.0, 1.5])
  np.testing.assert_array_equal(counts, [2, 3])
  assert sums.dtype == np.float64 and counts.dtype == np.int64
  with pytest.raises(ValueError, match="0 .padding. or 1"):
    stats.sequence_nll(logp, mask * 0.5)


def test_point_estimates_equal_direct_computation():
  seeds = ("0", "1", "2")
  scores, raw, masks = _scores(seeds=seeds)
  out = stats.summarise(
    scores,
    reference="ref",
    oracle="oracle",
    experts={"english": "e_en", "french": "e_fr"},
    n_boot=50,
  )
  direct = {m: {g: _direct_nll(raw, masks, m, seeds, g) for g in GROUPS} for m in scores}
  mean = {m: np.mean(list(direct[m].values())) for m in scores}
  for m, entry in out["methods"].items():
    for g in GROUPS:
      assert entry["nll"][g]["value"] == pytest.approx(direct[m][g], rel=1e-12)
      assert entry["per_seed"]["1"][g] == pytest.approx(
        -(raw[m, "1", g] * masks[g]).sum() / masks[g].sum(), rel=1e-6
      )
    assert entry["mean_nll"]["value"] == pytest.approx(mean[m], rel=1e-12)
    want_gap = (mean["ref"] - mean[m]) / (mean["ref"] - mean["oracle"])
    assert entry["gap"]["value"] == pytest.approx(want_gap, rel=1e-9)
    assert entry["forgetting"]["french"]["value"] == pytest.approx(
      direct[m]["french"] - direct["e_fr"]["french"], abs=1e-12
    )
    for stat in (entry["mean_nll"], entry["nll"]["english"]):
      assert stat["low"] <= stat["value"] <= stat["high"] and stat["low"] < stat["high"]
  assert out["tokens"] == {g: int(masks[g].sum()) for g in GROUPS} and out["sequences"] == {
    g: 30 for g in GROUPS
  }
  # mean_over restricts the headline mean (e.g. to the domains, leaving the switch-set halves out).
  only = stats.summarise(scores, reference="ref", oracle="oracle", mean_over=["french"], n_boot=10)
  assert only["methods"]["m"]["mean_nll"]["value"] == pytest.approx(
    direct["m"]["french"], rel=1e-12
  )


def test_gap_is_one_for_the_oracle_and_zero_for_the_reference():
  scores, _, _ = _scores()
  out = stats.summarise(scores, reference="ref", oracle="oracle", n_boot=200)
  assert out["methods"]["oracle"]["gap"] == {"value": 1.0, "low": 1.0, "high": 1.0}
  assert out["methods"]["ref"]["gap"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_identical_methods_differ_by_exactly_zero_and_pairing_cancels_shared_noise():
  scores, _, _ = _scores(methods=("a",), seeds=("0",))
  scores["b"] = {
    s: {g: (v[0].copy(), v[1].copy()) for g, v in per.items()} for s, per in scores["a"].items()
  }
  diff = stats.paired_difference(scores, "a", "b", n_boot=300)
  assert diff["mean_nll"] == {"value": 0.0, "low": 0.0, "high": 0.0}
  assert all(d == {"value": 0.0, "low": 0.0, "high": 0.0} for d in diff["nll"].values())
  # b = a + 0.1 nats on every token: each method's own interval is wide (sequences vary), the paired
  # difference is exactly 0.1 in every replicate; an unpaired bootstrap would give a wide interval.
  scores["b"] = {
    s: {g: (v[0] + 0.1 * v[1], v[1]) for g, v in per.items()} for s, per in scores["a"].items()
  }
  diff = stats.paired_difference(scores, "b", "a", n_boot=300)
  assert diff["mean_nll"]["value"] == pytest.approx(0.1)
  assert diff["mean_nll"]["high"] - diff["mean_nll"]["low"] < 1e-9
  alone = stats.summarise(scores, reference="a", oracle="b", n_boot=300)["methods"]["a"]["mean_nll"]
  assert alone["high"] - alone["low"] > 0.05
  # paired_difference draws the same replicates as summarise (same rng_seed).
  scores["c"] = {
    s: {g: (v[0] * 1.3, v[1]) for g, v in per.items()} for s, per in scores["a"].items()
  }
  full = stats.summarise(scores, reference="a", oracle="b", experts={"english": "c"}, n_boot=300)
  np.testing.assert_allclose(
    [full["methods"]["a"]["forgetting"]["english"][k] for k in ("low", "high")],
    [
      stats.paired_difference(scores, "a", "c", n_boot=300)["nll"]["english"][k]
      for k in ("low", "high")
    ],
    rtol=1e-12,
  )


def test_seeds_are_resampled():
  # No sequence noise at all (every token costs the same): the only spread comes from the seeds.
  counts = np.full(50, 10)
  offsets = {"0": 1.0, "1": 1.5, "2": 3.0}
  scores = {
    m: {s: {"x": (o * counts.astype(float), counts)} for s, o in offsets.items()}
    for m in ("r", "o")
  }
  stat = stats.summarise(scores, reference="r", oracle="o", n_boot=500)["methods"]["r"]["mean_nll"]
  assert stat["value"] == pytest.approx(np.mean(list(offsets.values())))
  assert 1.0 <= stat["low"] < stat["value"] < stat["high"] <= 3.0


def test_coverage_of_the_mean_on_iid_sequences():
  """95 % intervals of a token-weighted mean over i.i.d. sequences cover the true mean about 95 % of
  the time."""
  rng = np.random.default_rng(0)
  true_mean, hits, datasets = 2.0, 0, 200
  for i in range(datasets):
    counts = rng.integers(5, 40, 150)
    per_token = rng.exponential(true_mean, (150, 40))
    sums = np.where(np.arange(40) < counts[:, None], per_token, 0.0).sum(1)
    scores = {m: {"0": {"x": (sums, counts)}} for m in ("r", "o")}
    stat = stats.summarise(scores, reference="r", oracle="o", n_boot=400, rng_seed=i)["methods"][
      "r"
    ]["mean_nll"]
    hits += stat["low"] <= true_mean <= stat["high"]
  assert 0.85 * datasets <= hits <= datasets, hits


def test_inconsistent_scores_are_errors():
  scores, _, _ = _scores(methods=("ref", "oracle", "m"))
  del scores["m"]["2"]
  with pytest.raises(ValueError, match=r"method 'm' has no scores for seed\(s\) \['2'\]"):
    stats.summarise(scores, reference="ref", oracle="oracle")
  scores, _, _ = _scores(methods=("ref", "oracle", "m"))
  sums, counts = scores["m"]["1"]["french"]
  scores["m"]["1"]["french"] = (sums[:-1], counts[:-1])
  with pytest.raises(ValueError, match="same sequences"):
    stats.summarise(scores, reference="ref", oracle="oracle")
  scores, _, _ = _scores(methods=("ref", "oracle", "m"))
  del scores["m"]["0"]["english"]
  with pytest.raises(ValueError, match="group"):
    stats.paired_difference(scores, "m", "ref")
  scores, _, _ = _scores(methods=("ref", "oracle", "m"))
  with pytest.raises(KeyError, match="nope"):
    stats.summarise(scores, reference="nope", oracle="oracle")


def test_full_size_bootstrap_is_fast():
  """2,000 replicates × 10 methods × 3 seeds × 3 groups × 1,000 sequences: the evaluation's size."""
  rng = np.random.default_rng(0)
  counts = {g: rng.integers(16, 129, 1000) for g in ("a", "b", "c")}
  scores = {
    f"m{i}": {
      s: {g: (rng.gamma(2.0, 1.0, 1000) * c, c) for g, c in counts.items()} for s in range(3)
    }
    for i in range(10)
  }
  start = time.perf_counter()
  out = stats.summarise(
    scores, reference="m0", oracle="m1", experts={"a": "m2", "b": "m3", "c": "m4"}
  )
  assert time.perf_counter() - start < 10.0
  assert out["n_boot"] == 2000 and out["seeds"] == [0, 1, 2]
