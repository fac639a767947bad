"""Small building blocks: mixed-precision einsum, norms, sinusoidal and rotary positions."""

from __future__ import annotations

import functools
import math
import string

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn import deltas, sharding
from superpose.nn.config import TransformerConfig


def einsum(equation: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
  """``einsum`` with both operands in the compute dtype and an f32 accumulator.

  Asking for an f32 result is also what makes bf16 matmuls fast on CPU (bf16-out is slower than
  f32). Differentiated by ``projection`` (each gradient written as its own einsum).
  """
  return projection(equation, x.astype(dtype), w.astype(dtype)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def projection(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """``jnp.einsum(equation, x, w)`` with an f32 result, whose gradients are the einsums
  ``out,w->x`` and ``x,out->w`` of the same letters (math unchanged).

  JAX's own transpose of a contraction computes the weight gradient as ``out,x->w'`` followed by a
  transpose, which XLA:CPU folds into a matmul with both operands transposed and runs outside its
  fast (YNNPACK) path at about half the matmul peak; written as ``x,out->w`` it is an ordinary
  matmul (issue 24: ≈ 20 % more tokens/s at L6 d512; benchmarks/lm_step.py). ``equation``: two
  operands, no ellipsis, no letter twice in one operand, every letter of each operand in the other
  operand or the output.
  """
  _letters(equation)
  return _matmul_einsum(equation, x, w)


def _matmul_einsum(equation: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """``jnp.einsum(equation, a, b)`` with an f32 result, the leading letters that ``a`` shares with
  ``b`` (summed over) or with the output (kept) merged into one dimension first (a reshape, no
  copy): ``btd,btf->df`` runs as ``(bt)d,(bt)f->df`` and ``btd,df->btf`` as ``(bt)d,df->(bt)f``.

  Same sums; but XLA:CPU lays out a contraction over two dimensions by writing an operand
  transposed, fused into the element-wise work that produces it (a slow loop there), and over one
  it does not (issue 24: train step 1.09× at L4 d256, 1.06× at L6 d512; benchmarks/lm_step.py).
  """
  ins, out = equation.replace(" ", "").split("->")
  a_letters, b_letters = ins.split(",")

  def shared_prefix(u: str, v: str, absent: str) -> int:
    n = 0
    while n < min(len(u), len(v)) and u[n] == v[n] and u[n] not in absent:
      n += 1
    return n

  f32 = jnp.float32
  m = next(c for c in string.ascii_letters if c not in a_letters + b_letters + out)
  merge = lambda arr, n: arr.reshape((math.prod(arr.shape[:n]),) + arr.shape[n:])
  n = shared_prefix(a_letters, b_letters, out)
  if n > 1:
    eq = f"{m}{a_letters[n:]},{m}{b_letters[n:]}->{out}"
    return jnp.einsum(eq, merge(a, n), merge(b, n), preferred_element_type=f32)
  n = shared_prefix(a_letters, out, b_letters)
  if n > 1:
    eq = f"{m}{a_letters[n:]},{b_letters}->{m}{out[n:]}"
    y = jnp.einsum(eq, merge(a, n), b, preferred_element_type=f32)
    return y.reshape(a.shape[:n] + y.shape[1:])
  return jnp.einsum(equation, a, b, preferred_element_type=f32)


def _letters(equation: str) -> tuple[str, str, str]:
  """(x, w, output) letters of a ``projection`` equation; ValueError for one it cannot take."""
  ins, _, out = equation.replace(" ", "").partition("->")
  operands = ins.split(",")
  if len(operands) != 2 or not out:
    raise ValueError(f"projection: {equation!r} is not 'x,w->out'")
  xs, ws = operands
  for name, letters, others in (("x", xs, ws + out), ("w", ws, xs + out)):
    if (
      not letters.isalpha() or len(set(letters)) != len(letters) or not set(letters) <= set(others)
    ):
      raise ValueError(f"projection: {equation!r} has no einsum gradient for operand {name}")
  return xs, ws, out


def _projection_fwd(equation, x, w):
  # x and w are CustomVJPPrimal (symbolic_zeros): keep only what the needed gradients read, so that
  # a frozen operand's gradient (e.g. stop_gradient-ed expert weights) is not even traced.
  out = projection(equation, x.value, w.value)
  dtypes = (jnp.zeros((0,), x.value.dtype), jnp.zeros((0,), w.value.dtype))
  return out, (x.value if w.perturbed else None, w.value if x.perturbed else None, dtypes)


def _projection_bwd(equation, res, g):
  x, w, (x_dtype, w_dtype) = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  xs, ws, out = _letters(equation)
  dx = None if w is None else _matmul_einsum(f"{out},{ws}->{xs}", g, w)
  dw = None if x is None else _matmul_einsum(f"{xs},{out}->{ws}", x, g)
  return (
    None if dx is None else dx.astype(x_dtype.dtype),
    None if dw is None else dw.astype(w_dtype.dtype),
  )


projection.defvjp(_projection_fwd, _projection_bwd, symbolic_zeros=True)


class Norm(nnx.Module):
  """LayerNorm, RMSNorm or l2 (x/‖x‖, no centering, no affine); statistics in f32."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.kind = cfg.norm
    self.eps = cfg.norm_eps
    if self.kind in ("layernorm", "rmsnorm"):
      self.scale = sharding.param(
        rngs, nnx.initializers.ones, (cfg.d_model,), ("norm",), cfg.params_dtype
      )
    if self.kind == "layernorm" and cfg.use_bias:
      self.bias = sharding.param(
        rngs, nnx.initializers.zeros, (cfg.d_model,), ("norm",), cfg.params_dtype
      )
    else:
      self.bias = None

  def __call__(self, x: jax.Array, delta: deltas.Delta | None = None) -> jax.Array:
    """``delta``: per-token deltas of ``scale`` / ``bias`` (y = n(x)·(scale + Σ g Δscale) + (bias +
    Σ g Δbias))."""
    y = x.astype(jnp.float32)
    if self.kind == "layernorm":
      mean = y.mean(-1, keepdims=True)
      var = jnp.square(y - mean).mean(-1, keepdims=True)
      y = (y - mean) * jax.lax.rsqrt(var + self.eps)
    elif self.kind == "rmsnorm":
      y = y * jax.lax.rsqrt(jnp.square(y).mean(-1, keepdims=True) + self.eps)
    elif self.kind == "l2":
      # max(‖x‖, eps) rather than sqrt(‖x‖² + eps): exact for any non-tiny vector, which hand-set
      # constructions rely on (they compare thoughts to ideal unit vectors to 1e-6).
      norm = jnp.sqrt(jnp.square(y).sum(-1, keepdims=True))
      y = y / jnp.maximum(norm, self.eps)
    else:
      raise ValueError(f"Norm: unknown kind {self.kind!r}")
    if self.kind in ("layernorm", "rmsnorm"):
      y = y * deltas.add_vector(self.scale[...].astype(jnp.float32), delta, "scale")
    if self.bias is not None:
      y = deltas.add_vector(y + self.bias[...].astype(jnp.float32), delta, "bias")
    return y.astype(x.dtype)


def sinusoidal(positions_BT: jax.Array, dim: int, base: float = 10_000.0) -> jax.Array:
  """Vaswani et al. table, interleaved: [sin(p·ω_0), cos(p·ω_0), sin(p·ω_1), ...], ω_i =
  base^(-2i/dim)."""
  freqs = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  angles = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
  table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return table.reshape(*positions_BT.shape, dim)


def rope(x_BTHA: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, rotate-half layout (Llama / HF): pair i is (x[i], x[i + D/2]), angle
  p·θ^(-2i/D)."""
  dim = x_BTHA.shape[-1]
  freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
  cos, sin = jnp.cos(angles_BTF)[:, :, None, :], jnp.sin(angles_BTF)[:, :, None, :]
  x = x_BTHA.astype(jnp.float32)
  first, second = x[..., : dim // 2], x[..., dim // 2 :]
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x_BTHA.dtype)
