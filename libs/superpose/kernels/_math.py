"""The math of the superposition step inside the Pallas kernels, on one row block of 2-D values.

``blend`` is shared with the plain-JAX ``reference`` (the same f32 expression in both). The rest is
what the kernels compute differently from the reference, because Mosaic and Triton lower less than
XLA:
  * GELU is ½x(1 + erf(x/√2)) (``gelu_exact``, and ``gelu_exact_grad`` for the backward):
    ``jax.nn.gelu(approximate=False)``, which the reference uses, goes through erfc, which has no
    Mosaic lowering in this jax; the two agree to f32 rounding. Triton lowers no erf at all, so on
    the GPU erf is Eigen's f32 rational approximation (``erf_rational``).
  * the causal conv's row shifts (``shift_down``, ``shift_up``) are a concatenate and a static
    slice, or on the GPU (Triton lowers neither value slices nor uneven concatenates) 0/1 selection
    matmuls at HIGHEST precision, exact;
  * every matmul is a 2-D ``dot`` with f32 accumulation.
``gpu`` selects the Triton-safe variant (also run in interpret mode on the CPU by the tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def blend(h_base, h_expert, alpha, dtype) -> jax.Array:
  """h = (1 − α)·h_base + α·h_expert in f32, cast to ``dtype``; α f32, broadcastable against the
  states."""
  return ((1.0 - alpha) * h_base.astype(jnp.float32) + alpha * h_expert.astype(jnp.float32)).astype(
    dtype
  )


# Eigen's / XLA's f32 erf: x·P(x²)/Q(x²) on x clamped to [−4, 4] (|error| ≲ 1e-7 against lax.erf).
_ERF_ALPHA = (
  -2.72614225801306e-10,
  2.77068142495902e-08,
  -2.10102402082508e-06,
  -5.69250639462346e-05,
  -7.34990630326855e-04,
  -2.95459980854025e-03,
  -1.60960333262415e-02,
)
_ERF_BETA = (
  -1.45660718464996e-05,
  -2.13374055278905e-04,
  -1.68282697438203e-03,
  -7.37332916720468e-03,
  -1.42647390514189e-02,
)


def erf_rational(x):
  """erf in f32 from mul/add/div only (Pallas Triton has no erf lowering in this jax)."""
  x = jnp.clip(x, -4.0, 4.0)
  x2 = x * x
  p = jnp.full_like(x, _ERF_ALPHA[0])
  for c in _ERF_ALPHA[1:]:
    p = p * x2 + c
  q = jnp.full_like(x, _ERF_BETA[0])
  for c in _ERF_BETA[1:]:
    q = q * x2 + c
  return x * p / q


def erf(x, gpu: bool):
  return erf_rational(x) if gpu else jax.lax.erf(x)


def gelu_exact(x, gpu: bool = False):
  """Exact GELU x·Φ(x) = ½x(1 + erf(x/√2)) in f32. ``jax.nn.gelu(approximate=False)`` uses erfc,
  which has no Pallas TPU lowering in this jax; the two agree to f32 rounding (erfc is only more
  accurate for the tiny values of large negative x). On the GPU erf itself is the rational
  approximation above."""
  return 0.5 * x * (1.0 + erf(x * math.sqrt(0.5), gpu))


def gelu_exact_grad(x, gpu: bool = False):
  """d/dx x·Φ(x) = Φ(x) + x·φ(x), f32."""
  return 0.5 * (1.0 + erf(x * math.sqrt(0.5), gpu)) + x * jnp.exp(-0.5 * x * x) * (
    1.0 / math.sqrt(2 * math.pi)
  )


def dot(a, b, contract=(1, 0), precision=None):
  """2-D dot with f32 accumulation; contract = (a's dim, b's dim): (1, 0) NN, (1, 1) NT, (0, 0)
  TN."""
  return jax.lax.dot_general(
    a,
    b,
    (((contract[0],), (contract[1],)), ((), ())),
    precision=precision,
    preferred_element_type=jnp.float32,
  )


def shift_down(x, x_before, s: int, gpu: bool):
  """out[r] = x[r − s], with the rows r < s taken from the end of x_before (the halo block before
  x).

  TPU / interpret: a concatenate and a static slice. GPU (Triton lowers neither value slices nor
  uneven concatenates): two 0/1 selection matmuls at HIGHEST precision (exact: one nonzero term per
  row)."""
  if s == 0:
    return x
  R, H = x.shape[0], x_before.shape[0]
  if not gpu:
    return jnp.concatenate([x_before[H - s :], x[: R - s]], axis=0)
  r = jax.lax.broadcasted_iota(jnp.int32, (R, R), 0)
  c = jax.lax.broadcasted_iota(jnp.int32, (R, R), 1)
  rh = jax.lax.broadcasted_iota(jnp.int32, (R, H), 0)
  ch = jax.lax.broadcasted_iota(jnp.int32, (R, H), 1)
  hi = jax.lax.Precision.HIGHEST
  out = dot((c == r - s).astype(x.dtype), x, precision=hi) + dot(
    (ch == H + rh - s).astype(x.dtype), x_before, precision=hi
  )
  return out.astype(x.dtype)


def shift_up(x, x_after, s: int, gpu: bool):
  """out[r] = x[r + s], with the rows r + s ≥ R taken from the start of x_after (the halo block
  after x)."""
  if s == 0:
    return x
  R, H = x.shape[0], x_after.shape[0]
  if not gpu:
    return jnp.concatenate([x[s:], x_after[:s]], axis=0)
  r = jax.lax.broadcasted_iota(jnp.int32, (R, R), 0)
  c = jax.lax.broadcasted_iota(jnp.int32, (R, R), 1)
  rh = jax.lax.broadcasted_iota(jnp.int32, (R, H), 0)
  ch = jax.lax.broadcasted_iota(jnp.int32, (R, H), 1)
  hi = jax.lax.Precision.HIGHEST
  out = dot((c == r + s).astype(x.dtype), x, precision=hi) + dot(
    (ch == rh + s - R).astype(x.dtype), x_after, precision=hi
  )
  return out.astype(x.dtype)


def blend_encode(hb, he, a_row, a_feat, enc, enc_bias, dtype, gpu: bool):
  """(a, h, pre, z) of a row block: α (rows, D) f32, h in dtype, pre-activation f32, z = GELU(pre)
  in dtype."""
  a = a_row * a_feat
  h = blend(hb, he, a, dtype)
  pre = dot(h, enc) + enc_bias
  return a, h, pre, gelu_exact(pre, gpu).astype(dtype)
