"""The feed-forward layer: wi → activation → wo, or SwiGLU (silu(x·wg) ⊙ x·wi) → wo."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn import deltas, layers, sharding
from superpose.nn.config import TransformerConfig


def activate(h: jax.Array, kind: str, step_threshold: float = 0.0) -> jax.Array:
  """Element-wise non-linearity of the non-gated MLPs (computed in f32)."""
  x = h.astype(jnp.float32)
  if kind == "gelu":
    y = jax.nn.gelu(x, approximate=False)
  elif kind == "gelu_tanh":
    y = gelu_tanh(x)
  elif kind == "relu":
    y = jax.nn.relu(x)
  elif kind == "step":  # Heaviside: hand-set threshold units; its gradient is zero everywhere
    y = (x > step_threshold).astype(jnp.float32)
  else:
    raise ValueError(f"activate: unknown activation {kind!r}")
  return y.astype(h.dtype)


class MLP(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f, pdt = cfg.d_model, cfg.d_ff, cfg.params_dtype
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(
      cfg.init_std / math.sqrt(2 * cfg.num_layers)
    )  # GPT-2 scaling
    zeros = nnx.initializers.zeros
    self.wi = sharding.param(rngs, init, (d, f), ("embed", "mlp"), pdt)
    self.wg = (
      sharding.param(rngs, init, (d, f), ("embed", "mlp"), pdt)
      if cfg.activation == "swiglu"
      else None
    )
    self.wo = sharding.param(rngs, out_init, (f, d), ("mlp", "embed"), pdt)
    if cfg.use_bias:
      self.wi_bias = sharding.param(rngs, zeros, (f,), ("mlp",), pdt)
      self.wg_bias = (
        sharding.param(rngs, zeros, (f,), ("mlp",), pdt) if self.wg is not None else None
      )
      self.wo_bias = sharding.param(rngs, zeros, (d,), ("embed",), pdt)
    else:
      self.wi_bias = self.wg_bias = self.wo_bias = None

  def _in(self, x_BTD, kernel, bias, delta, name):
    h = layers.einsum("btd,df->btf", x_BTD, kernel[...], self.cfg.compute_dtype)
    h = deltas.add_linear(h, x_BTD, delta, name, 1, self.cfg.compute_dtype)
    if bias is not None:
      h = deltas.add_vector(h + bias[...].astype(h.dtype), delta, f"{name}_bias")
    return sharding.constrain(h, ("batch", "length", "act_mlp"))

  def __call__(self, x_BTD: jax.Array, delta: deltas.Delta | None = None) -> jax.Array:
    """``delta``: per-token deltas of this MLP's parameters (see superpose.nn.deltas)."""
    cfg = self.cfg
    h_BTF = self._in(x_BTD, self.wi, self.wi_bias, delta, "wi")
    if cfg.activation == "swiglu":
      gate_BTF = self._in(x_BTD, self.wg, self.wg_bias, delta, "wg")
      h_BTF = (jax.nn.silu(gate_BTF.astype(jnp.float32)) * h_BTF.astype(jnp.float32)).astype(
        h_BTF.dtype
      )
    else:
      h_BTF = activate(h_BTF, cfg.activation, cfg.step_threshold)
    y_BTD = layers.einsum("btf,fd->btd", h_BTF, self.wo[...], cfg.compute_dtype)
    y_BTD = deltas.add_linear(y_BTD, h_BTF, delta, "wo", 1, cfg.compute_dtype)
    if self.wo_bias is not None:
      y_BTD = deltas.add_vector(y_BTD + self.wo_bias[...].astype(y_BTD.dtype), delta, "wo_bias")
    return y_BTD


@jax.custom_jvp
def gelu_tanh(x: jax.Array) -> jax.Array:
  """``jax.nn.gelu(x, approximate=True)``, differentiated through its closed-form derivative: the
  forward keeps one array (the derivative) for the backward instead of the tanh chain's
  intermediates (issue 24: ≈ 3 % of the L6 d512 train step on a CPU)."""
  return jax.nn.gelu(x, approximate=True)


@gelu_tanh.defjvp
def _gelu_tanh_jvp(primals, tangents):
  # y = x/2 · (1 + tanh u), u = c (x + a x³): y' = (1 + t)/2 + x/2 · (1 − t²) · c (1 + 3 a x²)
  # (y written as jax.nn.gelu writes it, so that the value is the same bits)
  (x,), (dx,) = primals, tangents
  c, a = np.sqrt(2 / np.pi).astype(x.dtype), 0.044715
  t = jnp.tanh(c * (x + a * (x**3)))
  cdf = 0.5 * (1.0 + t)
  dy = cdf + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x)
  return x * cdf, dy * dx
