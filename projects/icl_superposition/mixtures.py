"""Per-prompt measures of task superposition, the trivial predictors scored by the same code, and
intervals.

A mixed prompt holds K tasks with in-context shares s (s_i = the fraction of its lines from task i;
``shares`` below are the realised fractions, ``nominal`` the ones the prompt was drawn with). A
predictor gives P_i = P(answer of task i | prompt), unnormalised (1 − Σ P_i is the mass elsewhere).
Per prompt:

* ``kl``    KL(s ‖ P) = Σ_i s_i log(s_i / P_i) (the paper's per-prompt calibration, spec §1.3; ∞
            where a task in the prompt gets P_i = 0, as for a predictor that commits to one answer);
* ``tv``    total variation between s and P with the mass elsewhere as its own outcome,
            ½ (Σ_i |P_i − s_i| + P_elsewhere): 0 for a predictor that reproduces the shares in every
            prompt, 1 − Σ s_i² in expectation for one that commits to one task drawn with the
            shares, bounded by 1;
* ``r``     task answers among the K most likely complete outputs (spec §1.3; of K);
* ``other`` P(elsewhere).

Reference predictors on the same prompts (``references``): ``diagonal`` P = nominal shares (what a
perfectly calibrated model gives on average), ``soft oracle`` P = realised shares (per-prompt
calibration, KL 0, TV 0), ``one-hot oracle`` P = e_j with j drawn with the realised shares (one task
per prompt, calibrated only over prompts), ``uniform guess`` P = 1/V on each of the family's V
outputs (the chance floor of r: K²/V). A method's mean over prompts can match the diagonal while its
per-prompt numbers are the one-hot oracle's: the per-prompt columns tell them apart.

Intervals (``bootstrap_ci``): percentiles over resamples of training seeds (with replacement, when
there are several) and of prompts within each seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from projects.icl_superposition import scoring

REFERENCES = ("diagonal", "soft oracle", "one-hot oracle")
GUESS = "uniform guess"
OUTPUTS = {
  "mod_add": 10,
  "retrieval": 8,
}  # a family's plausible outputs: 10 digits; the query's 8 letters
METRICS = ("kl", "tv", "r", "other")


@dataclasses.dataclass
class Predictions:
  p: np.ndarray  # (N, K) P(answer of task i)
  r: np.ndarray  # (N,) task answers among the top-K outputs

  @property
  def other(self) -> np.ndarray:
    return np.clip(1.0 - self.p.sum(-1), 0.0, 1.0)


def from_scores(scores) -> Predictions:
  """A model's predictions from ``scoring.score`` (P from its log-probabilities: no underflow to
  0)."""
  return Predictions(p=np.exp(np.asarray(scores.answer_logp, np.float64)), r=np.asarray(scores.r))


def shares_of(prompts, k: int) -> np.ndarray:
  """(N, K) realised in-context share of each task from the prompts' example labels."""
  out = np.zeros((len(prompts), k))
  for i, p in enumerate(prompts):
    lab = np.asarray(p.labels, int)
    if len(lab):
      out[i] = np.bincount(lab, minlength=k)[:k] / len(lab)
  return out


def _r_of(p: np.ndarray) -> np.ndarray:
  """r of a predictor whose only outputs are the task answers: answers with P > 0 among its K
  largest."""
  kth = np.sort(p, axis=1)[:, 0]  # K candidates: the K-th largest is the smallest
  return ((p >= kth[:, None]) & (p > 0)).sum(1)


def references(
  nominal: np.ndarray, shares: np.ndarray, rng: np.random.Generator, n_outputs: int | None = None
) -> dict[str, Predictions]:
  """The reference predictors (module docstring); with ``n_outputs`` V also the ``uniform guess``: P
  = 1/V on each of the family's V plausible outputs, its top K a random K of them (r hypergeometric,
  mean K²/V) — the chance floor of r, which grows with K."""
  nominal, shares = np.asarray(nominal, np.float64), np.asarray(shares, np.float64)
  n, k = shares.shape
  cum = np.cumsum(shares, 1)
  j = np.minimum((rng.random(n)[:, None] > cum).sum(1), k - 1)
  one_hot = np.eye(k)[j]
  out = {
    name: Predictions(p=p, r=_r_of(p))
    for name, p in (("diagonal", nominal), ("soft oracle", shares), ("one-hot oracle", one_hot))
  }
  if n_outputs:
    if n_outputs < k:
      raise ValueError(f"{k} tasks but only {n_outputs} outputs")
    out[GUESS] = Predictions(
      p=np.full((n, k), 1.0 / n_outputs), r=rng.hypergeometric(k, n_outputs - k, k, size=n)
    )
  return out


def per_prompt(pred: Predictions, shares: np.ndarray) -> dict[str, np.ndarray]:
  s = np.asarray(shares, np.float64)
  p = np.asarray(pred.p, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = scoring.kl_target_model(s, np.log(p))
  tv = 0.5 * (np.abs(p - s).sum(1) + pred.other)
  return {"kl": kl, "tv": tv, "r": np.asarray(pred.r, np.float64), "other": pred.other}


def bootstrap_ci(groups, stat=np.mean, draws: int = 2000, seed: int = 0) -> list[float]:
  """95 % percentile interval of ``stat`` over resamples of the groups (training seeds; with
  replacement when there are several) and of the values within each group (prompts). ∞ values make a
  mean ∞."""
  groups = [np.asarray(g, np.float64) for g in groups]
  if any(np.isinf(g).any() for g in groups) and stat is np.mean:
    return [float("inf"), float("inf")]
  rng = np.random.default_rng(seed)
  out = np.empty(draws)
  for b in range(draws):
    chosen = rng.integers(0, len(groups), len(groups)) if len(groups) > 1 else (0,)
    out[b] = stat(
      np.concatenate([groups[g][rng.integers(0, len(groups[g]), len(groups[g]))] for g in chosen])
    )
  lo, hi = np.percentile(out, [2.5, 97.5], method="nearest")  # no interpolation between ∞ draws
  return [float(lo), float(hi)]


def summarize(per_seed: list[dict[str, np.ndarray]], draws: int = 2000, seed: int = 0) -> dict:
  """Mean [95 %] of every per-prompt metric pooled over seeds; KL also its median [95 %]; per-seed
  means."""
  out = {}
  for key in per_seed[0]:
    groups = [m[key] for m in per_seed]
    pooled = np.concatenate(groups)
    out[key] = {
      "mean": float(np.mean(pooled)),
      "ci95": bootstrap_ci(groups, draws=draws, seed=seed),
      "per_seed": [float(np.mean(g)) for g in groups],
    }
    if key == "kl":
      out[key]["median"] = float(np.median(pooled))
      out[key]["median_ci95"] = bootstrap_ci(groups, np.median, draws=draws, seed=seed)
  return out


def fmt(x: float, digits: int = 3) -> str:
  return "∞" if np.isinf(x) else f"{x:.{digits}f}"


def fmt_ci(entry: dict, key: str = "mean", digits: int = 3) -> str:
  lo, hi = entry["ci95" if key == "mean" else f"{key}_ci95"]
  return f"{fmt(entry[key], digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
