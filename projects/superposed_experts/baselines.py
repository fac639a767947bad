"""The methods the superposition is measured against, on parameter trees and per-token log-probs.

Weight merges (one model, no extra inference cost): linear interpolation on the simplex, task
arithmetic and TIES. Output-space methods (need every expert at inference): a fixed mixture of the
experts' next-token distributions, the causal Bayesian (posterior) mixture and its fixed-share
variant that can switch experts mid-sequence, a sequence-level router (logistic regression on the
base model's mean-pooled prefix states) that only scores what it has not read, and oracle routing.
And the headline arithmetic, the fraction of the gap between the best interpolation and oracle
routing that a method closes (``gap_closed`` on mean NLL; ``gap_fraction``, the old per-domain
perplexity ratios).

Conventions for per-token log-probs: a row of tokens x_0..x_L gives inputs x_0..x_{L-1} and targets
x_1..x_L, so *target t* is log p(x_{t+1} | x_0..x_t); arrays are [N, T] with a mask [N, T] (1 = real
target, 0 = padding).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


# --- weight merges --------------------------------------------------------------------------------


def simplex_grid(k: int, steps: int) -> list[tuple[float, ...]]:
  """All weight vectors with ``k`` entries in multiples of 1/steps summing to 1 (k = 2, steps = 10:
  λ = 0, 0.1, …, 1 as (1 − λ, λ)), ordered by the later experts' weights."""
  out = [
    tuple(c / steps for c in (steps - sum(rest),) + rest)
    for rest in itertools.product(range(steps + 1), repeat=k - 1)
    if sum(rest) <= steps
  ]
  return sorted(out, key=lambda w: w[::-1])


def interpolate(params: Sequence, weights: Sequence[float]):
  """Σ_k w_k θ_k (every leaf; the trees must have one structure)."""
  if len(params) != len(weights):
    raise ValueError(f"{len(params)} parameter trees but {len(weights)} weights")
  return jax.tree.map(lambda *xs: sum(float(w) * x for w, x in zip(weights, xs)), *params)


def task_arithmetic(base, experts: Sequence, lam: float):
  """θ_base + λ·Σ_k (θ_k − θ_base) (Ilharco et al. 2023)."""
  return jax.tree.map(lambda b, *xs: b + lam * sum(x - b for x in xs), base, *experts)


def ties_delta(deltas: Sequence[jax.Array], density: float = 0.2) -> jax.Array:
  """TIES-merging of one tensor's task vectors (Yadav et al. 2023): keep each vector's top
  ``density`` fraction by magnitude (per tensor, as mergekit does), elect each entry's sign as the
  sign of the trimmed vectors' sum, and average the trimmed entries that agree with it."""
  trimmed = []
  for d in deltas:
    keep = max(1, int(round(density * d.size)))
    threshold = jnp.sort(jnp.abs(d).ravel())[-keep]
    trimmed.append(jnp.where(jnp.abs(d) >= threshold, d, 0.0))
  t = jnp.stack(trimmed)
  sign = jnp.sign(t.sum(0))
  agree = (jnp.sign(t) == sign) & (t != 0)
  return jnp.where(agree, t, 0.0).sum(0) / jnp.maximum(agree.sum(0), 1)


def ties_merged_delta(base, experts: Sequence, density: float = 0.2):
  """The TIES task vector of every parameter (independent of λ, so computed once per sweep)."""
  return jax.tree.map(
    lambda b, *xs: ties_delta([x - b for x in xs], density).astype(b.dtype), base, *experts
  )


def ties(base, experts: Sequence, lam: float, density: float = 0.2):
  """θ_base + λ·TIES(θ_k − θ_base)."""
  return add_scaled(base, ties_merged_delta(base, experts, density), lam)


def add_scaled(base, delta, lam: float):
  return jax.tree.map(lambda b, d: b + lam * d, base, delta)


# --- output-space methods -------------------------------------------------------------------------


def mixture_logprobs(logps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """log Σ_k w_k p_k(target) from each expert's target log-probs (the mixture's probability of the
  target needs only each model's probability of the target)."""
  w = np.asarray(weights, np.float64)
  with np.errstate(divide="ignore"):
    logw = np.log(w)
  stacked = np.stack([np.asarray(l, np.float64) for l in logps]) + logw.reshape(
    (-1,) + (1,) * np.ndim(logps[0])
  )
  return np.logaddexp.reduce(stacked, axis=0).astype(np.float32)


def nll(logp: np.ndarray, weights: np.ndarray) -> float:
  """Token-weighted mean negative log-likelihood (padding has weight 0)."""
  return float(-(np.asarray(logp, np.float64) * weights).sum() / max(weights.sum(), 1.0))


def perplexity(logp: np.ndarray, weights: np.ndarray) -> float:
  return float(np.exp(nll(logp, weights)))


def best_mixture(val: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray]], steps: int = 10):
  """The fixed mixture weights (simplex grid) with the lowest mean validation perplexity over
  domains.

  ``val[domain] = ([logp of expert k], weights)``. Returns (weights, mean perplexity)."""
  k = len(next(iter(val.values()))[0])
  scored = [
    (np.mean([perplexity(mixture_logprobs(lp, w), m) for lp, m in val.values()]), w)
    for w in simplex_grid(k, steps)
  ]
  ppl, w = min(scored)
  return w, ppl


def _stacked(logps: Sequence[np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(log-probs float64 [N, T, K], real-target booleans [N, T]), with the shapes checked."""
  if not len(logps):
    raise ValueError("no experts' log-probs")
  lp = np.stack([np.asarray(l, np.float64) for l in logps], -1)
  real = np.asarray(mask) > 0
  if lp.ndim != 3 or real.shape != lp.shape[:2]:
    raise ValueError(
      f"log-probs {[np.shape(l) for l in logps]} and mask {real.shape} must all be [N, T]"
    )
  return lp, real


def _log_prior(prior: Sequence[float] | None, k: int) -> np.ndarray:
  """log of the normalised prior over the ``k`` experts (uniform when None); a zero weight is
  −inf."""
  if prior is None:
    return np.full(k, -np.log(k))
  p = np.asarray(prior, np.float64)
  if p.shape != (k,) or (p < 0).any() or not p.sum() > 0:
    raise ValueError(f"prior {prior!r}: need {k} non-negative weights with a positive sum")
  with np.errstate(divide="ignore"):
    return np.log(p / p.sum())


def posterior_mixture(
  logps: Sequence[np.ndarray], mask: np.ndarray, prior: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The Bayesian mixture of the experts: (mixture target log-probs float32 [N, T], weights float32
  [N, T, K]).

  Expert k's weight at target t is its posterior given the real targets before t,
  π_k(t) ∝ prior_k · Π_{τ<t, mask_τ} p_k(x_{τ+1} | x_0..x_τ), and the mixture scores target t with
  log Σ_k π_k(t) p_k(target t). It is strictly causal (target t never informs its own weight), so it
  is a legitimate language model that needs no domain label: it learns the domain from the sequence
  itself. Padding does not update the posterior; the mixture's log-prob at padding is 0 (so a
  product with the mask is never NaN). Closed form in log space (cumulative sums, float64)."""
  lp, real = _stacked(logps, mask)
  seen = np.where(real[..., None], lp, 0.0)
  before = np.concatenate(
    [np.zeros_like(seen[:, :1]), np.cumsum(seen, 1)[:, :-1]], 1
  )  # Σ over τ < t
  log_w = _log_prior(prior, lp.shape[-1]) + before
  log_w -= np.logaddexp.reduce(log_w, -1, keepdims=True)
  with np.errstate(invalid="ignore"):
    mix = np.logaddexp.reduce(log_w + lp, -1)
  return np.where(real, mix, 0.0).astype(np.float32), np.exp(log_w).astype(np.float32)


def fixed_share(
  logps: Sequence[np.ndarray], mask: np.ndarray, rate: float, prior: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Herbster & Warmuth's fixed-share mixture: (target log-probs float32 [N, T], weights float32 [N,
  T, K]).

  Like :func:`posterior_mixture`, but after each real target's Bayes update the weights are mixed
  with the uniform distribution, π ← (1 − rate)·π + rate/K. A pure posterior concentrates on one
  expert exponentially fast and then needs as many tokens to leave it; the shared mass keeps every
  expert reachable, so the mixture can follow a sequence whose domain changes half-way (the switch
  set). ``rate`` = 0 is the posterior mixture (the share step is skipped, not multiplied by zero).
  Causal; padding leaves the weights unchanged and scores 0. A loop over positions, vectorised over
  rows."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"fixed-share rate {rate} is not in [0, 1]")
  lp, real = _stacked(logps, mask)
  n, t_len, k = lp.shape
  log_w = np.broadcast_to(_log_prior(prior, k), (n, k)).copy()
  with np.errstate(divide="ignore"):
    log_keep, log_share = np.log1p(-rate), np.log(rate / k)
  weights, mix = np.empty_like(lp), np.zeros((n, t_len))
  for t in range(t_len):
    weights[:, t] = log_w
    joint = log_w + lp[:, t]
    with np.errstate(invalid="ignore"):
      mix[:, t] = np.logaddexp.reduce(joint, -1)
      post = joint - mix[:, t, None]
    if rate > 0:
      post = np.logaddexp(log_keep + post, log_share)
    log_w = np.where(real[:, t, None], post, log_w)
  return np.where(real, mix, 0.0).astype(np.float32), np.exp(weights).astype(np.float32)


FIXED_SHARE_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def best_rate(
  val: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray]],
  rates: Sequence[float] = FIXED_SHARE_RATES,
) -> tuple[float, float]:
  """The fixed-share rate with the lowest mean over domains of the token-weighted mean validation
  NLL.

  ``val[domain] = ([logp of expert k], mask)``. Returns (rate, mean NLL); a tie goes to the smaller
  rate."""
  scored = [
    (
      float(
        np.mean(
          [nll(fixed_share(lp, m, r)[0], np.asarray(m, np.float64)) for lp, m in val.values()]
        )
      ),
      float(r),
    )
    for r in rates
  ]
  mean_nll, rate = min(scored, key=lambda x: (x[0], x[1]))
  return rate, mean_nll


def route(logps: Sequence[np.ndarray], choice: np.ndarray) -> np.ndarray:
  """Per sequence, the target log-probs of the chosen expert (``choice`` int [N]) at every position.

  Not causal when ``choice`` came from reading the sequence itself: the router has then seen the
  targets it hands to its expert. :func:`causal_route` is the honest version."""
  return np.stack(logps)[np.asarray(choice), np.arange(len(choice))]


def causal_route(
  logps: Sequence[np.ndarray], choice: np.ndarray, prefix: int, default: int
) -> np.ndarray:
  """A sequence router that decides after reading the first ``prefix`` inputs, scored without
  leakage.

  The router reads inputs x_0..x_{prefix−1}; those contain targets 0..prefix−2 (target t is
  x_{t+1}). So targets t < prefix − 1 are scored by expert ``default`` (the router's decision is not
  available before it has read them, and it must not score a token it has read), and targets t ≥
  prefix − 1 by the chosen expert: target prefix − 1 is x_{prefix}, the first token the router has
  not seen. prefix 0 or 1 (nothing or only x_0 read) hands every target to the chosen expert.
  Returns [N, T] in the input dtype."""
  lp = np.stack(logps)
  k, n, t_len = lp.shape
  choice = np.asarray(choice)
  if choice.shape != (n,) or (choice < 0).any() or (choice >= k).any():
    raise ValueError(f"choice {choice.shape} must be [{n}] expert indices in [0, {k})")
  if not 0 <= default < k:
    raise ValueError(f"default expert {default} is not in [0, {k})")
  if not 0 <= prefix <= t_len:
    raise ValueError(f"prefix {prefix}: the router can read 0..{t_len} inputs")
  boundary = max(prefix - 1, 0)
  out = lp[choice, np.arange(n)]
  out[:, :boundary] = lp[default, :, :boundary]
  return out


@dataclasses.dataclass
class Router:
  """Multinomial logistic regression on standardised features."""

  mean: np.ndarray
  std: np.ndarray
  w: np.ndarray  # (D, K)
  b: np.ndarray  # (K,)

  def logits(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.w + self.b

  def predict(self, x: np.ndarray) -> np.ndarray:
    return self.logits(x).argmax(-1)


def fit_router(
  x: np.ndarray, y: np.ndarray, k: int, l2: float = 1e-3, steps: int = 500, lr: float = 0.5
) -> Router:
  """Full-batch gradient descent on the mean cross-entropy + l2·|W|²/2 (convex; standardised inputs
  make one step size fit every problem of this kind)."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-6
  z = (x - mean) / std
  onehot = np.eye(k)[np.asarray(y)]
  w, b = np.zeros((x.shape[1], k)), np.zeros(k)
  for _ in range(steps):
    logits = z @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - onehot) / len(z)
    w -= lr * (z.T @ g + l2 * w)
    b -= lr * g.sum(0)
  return Router(mean, std, w, b)


# --- the headline arithmetic ----------------------------------------------------------------------


def best_interpolation(ppl: Mapping[tuple, Mapping[str, float]]) -> tuple:
  """The interpolation weights whose arithmetic mean over the domains is lowest. Given perplexities
  this is the old definition (mean perplexity); given mean NLLs it is the choice that goes with
  :func:`gap_closed`."""
  return min(ppl, key=lambda w: (float(np.mean(list(ppl[w].values()))), w))


def gap_fraction(
  method: Mapping[str, float], interp: Mapping[str, float], oracle: Mapping[str, float]
) -> float:
  """The old definition: mean of per-domain perplexity ratios (kept for the cached results that use
  it; :func:`gap_closed` is the one to report: a ratio of means has no domain with a tiny gap
  dominating).

  Mean over domains of (ppl_interp − ppl_method) / (ppl_interp − ppl_oracle): 0 = no better than
  the best single merged model, 1 = as good as routing each sequence to its own domain's expert.
  A domain without a gap (the interpolation is the oracle there) is left out; NaN if none has
  one."""
  parts = [
    (interp[d] - method[d]) / (interp[d] - oracle[d]) for d in interp if interp[d] != oracle[d]
  ]
  return float(np.mean(parts)) if parts else float("nan")


def gap_closed(method_nll: float, interp_nll: float, oracle_nll: float) -> float:
  """(interp − method) / (interp − oracle) on mean NLL (mean over domains of token-weighted NLL): 0
  = no better than the best interpolation, 1 = as good as oracle routing. One ratio of mean NLLs
  rather than a mean of per-domain ratios, so a domain where the two references nearly agree cannot
  blow it up. NaN when there is no gap (interp == oracle)."""
  den = float(interp_nll) - float(oracle_nll)
  return float("nan") if den == 0 else (float(interp_nll) - float(method_nll)) / den
