"""A causal per-token gate over E experts from a residual state: EMA features → MLP → logits.

The gate must be causal (token t never sees t+1, or a language-model loss leaks the future) and must
be able to switch domain mid-sequence: a cumulative mean over the prefix cannot forget the first
half of a row, exponential moving averages can. Features of s_BTD: RMS-normalise each position, then
for each decay β the bias-corrected EMA over time

    m_t = Σ_{τ≤t} (1 − β) β^{t−τ} s_τ / (1 − β^{t+1})        (β = 0: the token itself)

computed with ``jax.lax.associative_scan`` (O(T log T) work, log T depth, causal by construction)
and restarted at packed-document boundaries when ``segment_ids_BT`` is given (t then counts from the
document's first token). The bias correction is the same scan run on ones: the EMA of a constant is
that constant from the first token on. Concatenated over decays → dense(hidden) → exact GELU →
dense(E) = logits. The EMA is linear, so EMA(s)·W = EMA(s·W): the forward projects each position to
the hidden width first and averages there (hidden ≪ d_model: a few times less scan work, the same
logits). The output layer starts at zero, so the gate starts uniform after a softmax; its first step
moves the output layer only (the hidden layer's gradient goes through it).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.nn import sharding


def causal_ema(
  x_BTD: jax.Array, decays: Sequence[float], segment_ids_BT: jax.Array | None = None
) -> jax.Array:
  """Bias-corrected EMAs of x over time, one per decay, restarted where the segment id changes: (B,
  T, N, D) f32.

  ``x`` may also be (B, T, N, D) with N = len(decays): decay n then averages x[:, :, n] only."""
  x = x_BTD.astype(jnp.float32)
  if x.ndim == 3:
    x = jnp.broadcast_to(x[:, :, None, :], x.shape[:2] + (len(decays),) + x.shape[2:])
  batch, length, _, dim = x.shape
  beta_Y = jnp.asarray(decays, jnp.float32)
  start_BT = jnp.zeros((batch, length), bool).at[:, 0].set(True)
  if segment_ids_BT is not None:
    start_BT = start_BT.at[:, 1:].set(segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1])
  # h_t = A_t · h_{t−1} + u_t with A_t = β (0 at a document start) and u_t = (1 − β)·[x_t, 1].
  decay_BTY = jnp.where(start_BT[..., None], 0.0, beta_Y)
  ones = jnp.ones((batch, length, len(decays), 1), jnp.float32)
  u_BTYX = (1.0 - beta_Y)[:, None] * jnp.concatenate([x, ones], axis=-1)

  def combine(earlier, later):
    a1, u1 = earlier
    a2, u2 = later
    return a1 * a2, a2[..., None] * u1 + u2

  _, h_BTYX = jax.lax.associative_scan(combine, (decay_BTY, u_BTYX), axis=1)
  return h_BTYX[..., :dim] / h_BTYX[..., dim:]  # the ones-channel holds 1 − β^(t − start + 1)


class CausalGate(nnx.Module):
  """``__call__(s_BTD, segment_ids_BT=None) -> logits_BTE`` (f32); softmax, top-1 … are the
  caller's."""

  def __init__(
    self,
    d_model: int,
    num_experts: int,
    *,
    hidden: int = 64,
    decays: Sequence[float] = (0.0, 0.9, 0.98),
    eps: float = 1e-6,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
  ):
    decays = tuple(float(b) for b in decays)
    if not decays or any(not 0.0 <= b < 1.0 for b in decays):
      raise ValueError(f"CausalGate: decays={decays}: need at least one, each in [0, 1)")
    self.decays, self.eps = decays, float(eps)
    self.d_model, self.num_experts, self.hidden = int(d_model), int(num_experts), int(hidden)
    n, pdt = len(decays), param_dtype
    self.w_in = sharding.param(
      rngs,
      nnx.initializers.normal(1.0 / math.sqrt(n * d_model)),
      (n, d_model, hidden),
      (None, "embed", None),
      pdt,
    )
    self.b_in = sharding.param(rngs, nnx.initializers.zeros, (hidden,), (None,), pdt)
    self.w_out = sharding.param(
      rngs, nnx.initializers.zeros, (hidden, num_experts), (None, "experts"), pdt
    )
    self.b_out = sharding.param(rngs, nnx.initializers.zeros, (num_experts,), ("experts",), pdt)

  def features(self, s_BTD: jax.Array, segment_ids_BT: jax.Array | None = None) -> jax.Array:
    """(B, T, N, D): the EMAs of the RMS-normalised states, one per decay."""
    s = s_BTD.astype(jnp.float32)
    s = s * jax.lax.rsqrt(jnp.mean(jnp.square(s), axis=-1, keepdims=True) + self.eps)
    return causal_ema(s, self.decays, segment_ids_BT)

  def __call__(self, s_BTD: jax.Array, segment_ids_BT: jax.Array | None = None) -> jax.Array:
    s = s_BTD.astype(jnp.float32)
    s = s * jax.lax.rsqrt(jnp.mean(jnp.square(s), axis=-1, keepdims=True) + self.eps)
    p_BTYF = jnp.einsum(
      "btd,ndh->btnh", s, self.w_in[...].astype(jnp.float32)
    )  # project, then average
    h_BTF = causal_ema(p_BTYF, self.decays, segment_ids_BT).sum(2)
    h_BTF = jax.nn.gelu(h_BTF + self.b_in[...].astype(jnp.float32), approximate=False)
    return jnp.einsum("bth,hk->btk", h_BTF, self.w_out[...].astype(jnp.float32)) + self.b_out[
      ...
    ].astype(jnp.float32)

  def flops_per_token(self) -> int:
    """2 per multiply-add of the two dense layers, plus 3·hidden per non-zero decay (EMA
    multiply-add, divide).

    The RMS norm, the GELU and the associative scan's extra log T combine steps are not counted.
    """
    n = len(self.decays)
    ema = 3 * self.hidden * sum(1 for b in self.decays if b > 0)
    return 2 * (n * self.d_model * self.hidden + self.hidden * self.num_experts) + ema
