"""The methods the superposition is measured against, on parameter trees and per-token log-probs.

Weight merges (one model, no extra inference cost): linear interpolation on the simplex, task
arithmetic and TIES. Output-space methods (need every expert at inference): a fixed mixture of the
experts' next-token distributions, a sequence-level router (logistic regression on the base model's
mean-pooled prefix states) and oracle routing. And the headline arithmetic, the fraction of the gap
between the best interpolation and oracle routing that a method closes.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


# --- weight merges ---------------------------------------------------------------------------------

def simplex_grid(k: int, steps: int) -> list[tuple[float, ...]]:
  """All weight vectors with ``k`` entries in multiples of 1/steps summing to 1 (k = 2, steps = 10:
  λ = 0, 0.1, …, 1 as (1 − λ, λ)), ordered by the later experts' weights."""
  out = [tuple(c / steps for c in (steps - sum(rest),) + rest)
         for rest in itertools.product(range(steps + 1), repeat=k - 1) if sum(rest) <= steps]
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
  return jax.tree.map(lambda b, *xs: ties_delta([x - b for x in xs], density).astype(b.dtype), base, *experts)


def ties(base, experts: Sequence, lam: float, density: float = 0.2):
  """θ_base + λ·TIES(θ_k − θ_base)."""
  return add_scaled(base, ties_merged_delta(base, experts, density), lam)


def add_scaled(base, delta, lam: float):
  return jax.tree.map(lambda b, d: b + lam * d, base, delta)


# --- output-space methods --------------------------------------------------------------------------

def mixture_logprobs(logps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """log Σ_k w_k p_k(target) from each expert's target log-probs (the mixture's probability of the
  target needs only each model's probability of the target)."""
  w = np.asarray(weights, np.float64)
  with np.errstate(divide="ignore"):
    logw = np.log(w)
  stacked = np.stack([np.asarray(l, np.float64) for l in logps]) + logw.reshape((-1,) + (1,) * np.ndim(logps[0]))
  return np.logaddexp.reduce(stacked, axis=0).astype(np.float32)


def nll(logp: np.ndarray, weights: np.ndarray) -> float:
  """Token-weighted mean negative log-likelihood (padding has weight 0)."""
  return float(-(np.asarray(logp, np.float64) * weights).sum() / max(weights.sum(), 1.0))


def perplexity(logp: np.ndarray, weights: np.ndarray) -> float:
  return float(np.exp(nll(logp, weights)))


def best_mixture(val: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray]], steps: int = 10):
  """The fixed mixture weights (simplex grid) with the lowest mean validation perplexity over domains.

  ``val[domain] = ([logp of expert k], weights)``. Returns (weights, mean perplexity)."""
  k = len(next(iter(val.values()))[0])
  scored = [(np.mean([perplexity(mixture_logprobs(lp, w), m) for lp, m in val.values()]), w)
            for w in simplex_grid(k, steps)]
  ppl, w = min(scored)
  return w, ppl


def route(logps: Sequence[np.ndarray], choice: np.ndarray) -> np.ndarray:
  """Per sequence, the target log-probs of the chosen expert (``choice`` int [N])."""
  return np.stack(logps)[np.asarray(choice), np.arange(len(choice))]


@dataclasses.dataclass
class Router:
  """Multinomial logistic regression on standardised features."""
  mean: np.ndarray
  std: np.ndarray
  w: np.ndarray      # (D, K)
  b: np.ndarray      # (K,)

  def logits(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.w + self.b

  def predict(self, x: np.ndarray) -> np.ndarray:
    return self.logits(x).argmax(-1)


def fit_router(x: np.ndarray, y: np.ndarray, k: int, l2: float = 1e-3, steps: int = 500,
               lr: float = 0.5) -> Router:
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


# --- the headline arithmetic -----------------------------------------------------------------------

def best_interpolation(ppl: Mapping[tuple, Mapping[str, float]]) -> tuple:
  """The interpolation weights whose arithmetic mean perplexity over the domains is lowest."""
  return min(ppl, key=lambda w: (float(np.mean(list(ppl[w].values()))), w))


def gap_fraction(method: Mapping[str, float], interp: Mapping[str, float], oracle: Mapping[str, float]) -> float:
  """Mean over domains of (ppl_interp − ppl_method) / (ppl_interp − ppl_oracle): 0 = no better than
  the best single merged model, 1 = as good as routing each sequence to its own domain's expert.
  A domain without a gap (the interpolation is the oracle there) is left out; NaN if none has one."""
  parts = [(interp[d] - method[d]) / (interp[d] - oracle[d]) for d in interp if interp[d] != oracle[d]]
  return float(np.mean(parts)) if parts else float("nan")
