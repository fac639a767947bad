"""Per-sequence NLL and a paired, hierarchical bootstrap: how sure are the table's numbers?

Two sources of noise sit under every number in the results table: which seeds were trained (every
learned method is retrained per seed; pipeline.py shares the experts between seeds, so their own
training noise is not in the intervals) and which held-out sequences were drawn. A
replicate of the bootstrap resamples both, independently: the seeds with replacement, and each
group's sequence indices with replacement. Every method is scored on the same sequences, so one
replicate uses the same resampled indices for every method (a *paired* bootstrap): the noise the
methods share (an easy or hard sequence) cancels in their differences and in the gap, which is what
the comparison needs.

The input is ``scores[method][seed][group] = (sums [N_group], counts [N_group])`` from
:func:`sequence_nll`: per sequence, the summed NLL of its real targets and their number. A group is
a domain name (or a half of the switch set); its N_group sequences are the same, in the same order,
for every method and seed, which is checked through the counts. A group's NLL is token-weighted
within a seed (Σ sums / Σ counts), then averaged over seeds; ``mean_nll`` is the plain mean over
groups, as in the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

Scores = Mapping[str, Mapping[Hashable, Mapping[str, tuple[np.ndarray, np.ndarray]]]]
CHUNK = (
  500  # bootstrap replicates drawn and reduced at a time: bounds memory to CHUNK × N_group counts
)


def sequence_nll(logp: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(Σ −logp over each row's real targets, float64 [N]; the number of real targets, int64 [N]).

  ``mask`` is 1 for a real target and 0 for padding; whatever sits at padding (even NaN) is
  ignored."""
  logp, mask = np.asarray(logp, np.float64), np.asarray(mask)
  if logp.shape != mask.shape or logp.ndim != 2:
    raise ValueError(f"logp {logp.shape} and mask {mask.shape} must both be [N, T]")
  if not np.isin(mask, (0, 1)).all():
    raise ValueError(
      "the mask must be 0 (padding) or 1 (real target): a per-sequence sum has no other weights"
    )
  real = mask == 1
  return -np.where(real, logp, 0.0).sum(1), real.sum(1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _Table:
  methods: list[str]
  seeds: list
  groups: list[str]
  sums: dict[str, np.ndarray]  # group → float64 [M, S, N_group]
  counts: dict[str, np.ndarray]  # group → float64 [N_group]


def _ordered_union(keys) -> list:
  out = []
  for ks in keys:
    out += [k for k in ks if k not in out]
  return out


def _table(scores: Scores, methods: Sequence[str] | None = None) -> _Table:
  """The scores as arrays, after checking that every method has every seed and group and was scored
  on the same target tokens (equal counts) as every other."""
  methods = list(scores) if methods is None else list(methods)
  missing = [m for m in methods if m not in scores]
  if missing:
    raise KeyError(f"no scores for method(s) {missing}; have {list(scores)}")
  if not methods:
    raise ValueError("no methods to summarise")
  seeds = _ordered_union(scores[m] for m in methods)
  groups = _ordered_union(scores[m][s] for m in methods for s in scores[m])
  for m in methods:
    lacking = [s for s in seeds if s not in scores[m]]
    if lacking:
      raise ValueError(
        f"method {m!r} has no scores for seed(s) {lacking} (seeds of the others: {seeds}): "
        "every method needs every seed, or the seed average compares different things"
      )
    for s in seeds:
      absent = [g for g in groups if g not in scores[m][s]]
      if absent:
        raise ValueError(f"method {m!r}, seed {s!r} has no scores for group(s) {absent}")
  sums, counts = {}, {}
  first = (methods[0], seeds[0])
  for g in groups:
    c0 = np.asarray(scores[first[0]][first[1]][g][1])
    if c0.ndim != 1 or len(c0) == 0 or c0.sum() <= 0:
      raise ValueError(
        f"group {g!r}: counts {c0.shape} must be [N > 0] with at least one real target"
      )
    block = np.empty((len(methods), len(seeds), len(c0)))
    for i, m in enumerate(methods):
      for j, s in enumerate(seeds):
        total, count = (np.asarray(x) for x in scores[m][s][g])
        if total.shape != c0.shape or not np.array_equal(count, c0):
          raise ValueError(
            f"group {g!r}: method {m!r}, seed {s!r} was scored on other targets than "
            f"{first[0]!r}, seed {first[1]!r} (sums {total.shape}, counts differ): every method "
            "and seed needs the same sequences in the same order"
          )
        block[i, j] = total
    sums[g], counts[g] = block, c0.astype(np.float64)
  return _Table(methods, seeds, groups, sums, counts)


def _point(t: _Table) -> tuple[np.ndarray, np.ndarray]:
  """(seed-averaged NLL [M, G], per-seed NLL [M, S, G]) of the data as observed."""
  per_seed = np.stack([t.sums[g].sum(-1) / t.counts[g].sum() for g in t.groups], -1)
  return per_seed.mean(1), per_seed


def _replicates(t: _Table, n_boot: int, rng_seed: int) -> np.ndarray:
  """Seed-averaged NLL [n_boot, M, G] of each bootstrap replicate.

  The draws depend only on (rng_seed, number of seeds, group sizes), never on the methods, so two
  calls on different subsets of the same scores resample identically."""
  if n_boot < 1:
    raise ValueError(f"n_boot {n_boot} must be positive")
  rng = np.random.default_rng(rng_seed)
  n_seeds = len(t.seeds)
  seed_draws = rng.integers(0, n_seeds, (n_boot, n_seeds))
  seed_w = _counts(seed_draws, n_seeds) / n_seeds  # [B, S]
  out = np.empty((n_boot, len(t.methods), len(t.groups)))
  for gi, g in enumerate(t.groups):
    n = len(t.counts[g])
    # Identical (method, seed) rows — the oracle is an expert on its own group, a method compared
    # with itself — are computed once, so they stay bit-identical in every replicate (a matrix
    # product may round two equal columns differently) and their difference is exactly 0.
    unique, inverse = np.unique(
      t.sums[g].reshape(-1, n), axis=0, return_inverse=True
    )  # [U, N], [M·S]
    inverse = inverse.reshape(-1)
    for lo in range(0, n_boot, CHUNK):
      hi = min(lo + CHUNK, n_boot)
      c = _counts(rng.integers(0, n, (hi - lo, n)), n)  # [b, N] times each sequence is drawn
      totals = (c @ unique.T)[:, inverse]  # [b, M·S]
      with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = totals / (c @ t.counts[g])[:, None]
      per_seed = per_seed.reshape(hi - lo, len(t.methods), n_seeds)
      out[lo:hi, :, gi] = (per_seed * seed_w[lo:hi, None, :]).sum(-1)
  return out


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
  """How often each of 0..n−1 occurs in each row of ``draws`` [B, k], as float64 [B, n]."""
  b = len(draws)
  offsets = (draws + n * np.arange(b)[:, None]).ravel()
  return np.bincount(offsets, minlength=b * n).reshape(b, n).astype(np.float64)


def _interval(value: float, reps: np.ndarray, level: float) -> dict[str, float]:
  """The point estimate and the percentile interval of the replicates (NaN replicates, e.g. a gap
  whose denominator vanished, are left out)."""
  reps = np.asarray(reps, np.float64)
  finite = reps[np.isfinite(reps)]
  if len(finite) == 0:
    return {"value": float(value), "low": float("nan"), "high": float("nan")}
  low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
  return {"value": float(value), "low": float(low), "high": float(high)}


def _gap(ref: np.ndarray, method: np.ndarray, oracle: np.ndarray) -> np.ndarray:
  """(ref − method) / (ref − oracle), NaN where ref == oracle (as baselines.gap_closed)."""
  den = ref - oracle
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den == 0, np.nan, (ref - method) / np.where(den == 0, 1.0, den))


def _mean_over(t: _Table, mean_over: Sequence[str] | None) -> list[int]:
  names = t.groups if mean_over is None else list(mean_over)
  unknown = [g for g in names if g not in t.groups]
  if unknown or not names:
    raise ValueError(f"mean_over {mean_over!r}: groups must be among {t.groups}")
  return [t.groups.index(g) for g in names]


def summarise(
  scores: Scores,
  *,
  reference: str,
  oracle: str,
  experts: Mapping[str, str] | None = None,
  mean_over: Sequence[str] | None = None,
  n_boot: int = 2000,
  level: float = 0.95,
  rng_seed: int = 0,
) -> dict[str, Any]:
  """Every method's NLL per group, mean NLL, gap closed and forgetting, each with a bootstrap
  interval.

  * ``nll[group]``: token-weighted mean NLL, averaged over seeds.
  * ``mean_nll``: its mean over the groups in ``mean_over`` (default: all groups).
  * ``gap``: (N_ref − N_m) / (N_ref − N_oracle) on the seed-averaged mean NLLs, with ``reference``
    the best interpolation (chosen on validation by the caller) and ``oracle`` oracle routing: 0 and
    1 by construction for those two, NaN where they agree.
  * ``forgetting[group]`` when ``experts`` maps a group to the method name of its own expert:
    N_m(group) − N_expert(group) (positive = worse than the specialist on its own domain).
  * ``per_seed[seed][group]``: the NLL of each seed alone (no interval).

  Each statistic is ``{"value", "low", "high"}``: the estimate on the observed data and the
  percentile interval at ``level`` over ``n_boot`` paired replicates (module docstring)."""
  t = _table(scores)
  for name, what in (
    (reference, "reference"),
    (oracle, "oracle"),
    *((m, "expert") for m in (experts or {}).values()),
  ):
    if name not in t.methods:
      raise KeyError(f"{what} method {name!r} has no scores; have {t.methods}")
  if any(g not in t.groups for g in (experts or {})):
    raise ValueError(f"experts {dict(experts)} names groups outside {t.groups}")
  cols = _mean_over(t, mean_over)
  point, per_seed = _point(t)  # [M, G], [M, S, G]
  reps = _replicates(t, n_boot, rng_seed)  # [B, M, G]
  mean_point, mean_reps = point[:, cols].mean(-1), reps[:, :, cols].mean(-1)
  r, o = t.methods.index(reference), t.methods.index(oracle)
  gap_point = _gap(mean_point[r], mean_point, mean_point[o])
  gap_reps = _gap(mean_reps[:, r : r + 1], mean_reps, mean_reps[:, o : o + 1])
  table = {}
  for i, m in enumerate(t.methods):
    entry = {
      "nll": {g: _interval(point[i, j], reps[:, i, j], level) for j, g in enumerate(t.groups)},
      "mean_nll": _interval(mean_point[i], mean_reps[:, i], level),
      "gap": _interval(gap_point[i], gap_reps[:, i], level),
    }
    if experts:
      entry["forgetting"] = {}
      for g, expert in experts.items():
        j, e = t.groups.index(g), t.methods.index(expert)
        entry["forgetting"][g] = _interval(
          point[i, j] - point[e, j], reps[:, i, j] - reps[:, e, j], level
        )
    entry["per_seed"] = {
      s: {g: float(per_seed[i, k, j]) for j, g in enumerate(t.groups)}
      for k, s in enumerate(t.seeds)
    }
    table[m] = entry
  return {
    "methods": table,
    "groups": list(t.groups),
    "mean_over": [t.groups[j] for j in cols],
    "seeds": list(t.seeds),
    "reference": reference,
    "oracle": oracle,
    "sequences": {g: int(len(t.counts[g])) for g in t.groups},
    "tokens": {g: int(t.counts[g].sum()) for g in t.groups},
    "n_boot": int(n_boot),
    "level": float(level),
    "rng_seed": int(rng_seed),
    "interval": "percentile bootstrap; each replicate resamples seeds and, independently, each "
    "group's "
    "sequences, both with replacement, the same draws for every method (paired)",
  }


def paired_difference(
  scores: Scores,
  a: str,
  b: str,
  *,
  mean_over: Sequence[str] | None = None,
  n_boot: int = 2000,
  level: float = 0.95,
  rng_seed: int = 0,
) -> dict[str, Any]:
  """NLL of method ``a`` minus method ``b`` (negative = ``a`` is better): ``{"mean_nll": interval,
  "nll": {group: interval}}``, each ``{"value", "low", "high"}``. Both methods are evaluated on the
  same replicates (the same draws as :func:`summarise` with the same ``rng_seed``), so the interval
  is that of the difference itself, not two overlapping intervals."""
  t = _table(scores, [a, b])
  cols = _mean_over(t, mean_over)
  point, _ = _point(t)
  reps = _replicates(t, n_boot, rng_seed)
  diff_point, diff_reps = point[0] - point[1], reps[:, 0] - reps[:, 1]  # [G], [B, G]
  return {
    "mean_nll": _interval(diff_point[cols].mean(), diff_reps[:, cols].mean(-1), level),
    "nll": {g: _interval(diff_point[j], diff_reps[:, j], level) for j, g in enumerate(t.groups)},
    "a": a,
    "b": b,
    "n_boot": int(n_boot),
    "level": float(level),
  }
