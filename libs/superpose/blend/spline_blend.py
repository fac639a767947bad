"""Blending coefficients per layer from a B-spline over the normalised layer index (p1 §3.2, §4).

Each blend holds control points and evaluates its spline at x_l = l / (L − 1) through a constant
basis matrix B (L × num_control). B is kept as a tuple of floats, a static attribute, so the
module's state holds nothing but ``nnx.Param`` (the train state carries only parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.blend import bspline
from superpose.nn import sharding

# Tiny matmuls whose values are read directly as mixing weights: keep full f32 on TPU/GPU too.
_HIGHEST = jax.lax.Precision.HIGHEST


def _static_basis(num_layers: int, num_control: int, degree: int) -> tuple[tuple[float, ...], ...]:
  return tuple(map(tuple, bspline.layer_basis(num_layers, num_control, degree).tolist()))


def _spline(basis_LC: tuple, control_CX: jax.Array) -> jax.Array:
  """B @ control: the spline's value at every layer, (L, ...) for control of shape (C, ...)."""
  return jnp.tensordot(
    jnp.asarray(basis_LC, jnp.float32), control_CX.astype(jnp.float32), axes=1, precision=_HIGHEST
  )


def _uniform(lo: float, hi: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, lo, hi)

  return init


class SplineBlend(nnx.Module):
  """α_l = clamp(Σ_i c_i B_i(x_l) + bias_scale · b_l, 0, 1): the 1-D model of p1 §3.2.

  With the paper's 16 control points and 12 layers, B has rank 12, so every α is reachable and the
  spline imposes no smoothness; B's first and last rows are e_0 and e_15, so
  α_0 = c_0 + 0.1·b_0 and α_11 = c_15 + 0.1·b_11 exactly.
  """

  def __init__(
    self,
    num_layers: int,
    *,
    num_control: int = 16,
    degree: int = 3,
    init_range: tuple[float, float] = (0.45, 0.55),
    bias_scale: float = 0.1,
    rngs: nnx.Rngs,
  ):
    self.basis_LC = _static_basis(num_layers, num_control, degree)
    self.bias_scale = float(bias_scale)
    self.control = sharding.param(rngs, _uniform(*init_range), (num_control,), ("control",))
    self.bias = sharding.param(rngs, nnx.initializers.zeros, (num_layers,), ("layers",))

  def __call__(self) -> jax.Array:
    alpha_L = _spline(self.basis_LC, self.control[...]) + self.bias_scale * self.bias[...].astype(
      jnp.float32
    )
    return jnp.clip(alpha_L, 0.0, 1.0)


class SplineBlend2D(nnx.Module):
  """α (L × D), one per layer and hidden dimension: sigmoid(B @ C + bias_scale · b) · 0.9 + 0.1 (p1
  §4).

  The affine sigmoid keeps α in [0.1, 1.0]. ``quantize`` rounds α to 0.1 steps in the forward pass
  and passes gradients straight through, as the 2-D notebook does (round half to even, like torch).
  """

  def __init__(
    self,
    num_layers: int,
    d_model: int,
    *,
    num_control: int = 16,
    degree: int = 3,
    bias_scale: float = 0.01,
    quantize: bool = False,
    rngs: nnx.Rngs,
  ):
    self.basis_LC = _static_basis(num_layers, num_control, degree)
    self.bias_scale = float(bias_scale)
    self.quantize = bool(quantize)
    # p1 §7.6: control N(0, 0.1²), bias N(0, 1) (the notebook's comment says "centred", its code
    # draws σ = 1).
    self.control = sharding.param(
      rngs, nnx.initializers.normal(0.1), (num_control, d_model), ("control", "embed")
    )
    self.bias = sharding.param(
      rngs, nnx.initializers.normal(1.0), (num_layers, d_model), ("layers", "embed")
    )

  def __call__(self) -> jax.Array:
    logits_LD = _spline(self.basis_LC, self.control[...]) + self.bias_scale * self.bias[...].astype(
      jnp.float32
    )
    alpha_LD = jax.nn.sigmoid(logits_LD) * 0.9 + 0.1
    if self.quantize:
      alpha_LD = alpha_LD + jax.lax.stop_gradient(jnp.round(alpha_LD, 1) - alpha_LD)
    return alpha_LD


class SimplexBlend(nnx.Module):
  """Weights (L × K) over K experts per layer: softmax over experts of the spline logits B @ C.

  B's rows are convex weights, so small control noise gives small logits and near-uniform weights
  at initialisation, with the noise breaking the symmetry between experts.
  """

  def __init__(
    self,
    num_layers: int,
    num_experts: int,
    *,
    num_control: int = 16,
    degree: int = 3,
    rngs: nnx.Rngs,
  ):
    self.basis_LC = _static_basis(num_layers, num_control, degree)
    self.control = sharding.param(
      rngs, nnx.initializers.normal(0.01), (num_control, num_experts), ("control", "experts")
    )

  def __call__(self) -> jax.Array:
    return jax.nn.softmax(_spline(self.basis_LC, self.control[...]), axis=-1)
