"""The per-layer superposition step in plain JAX (p1 §3.3): what the Pallas kernels must equal.

    h_BTD = (1 − α)·h_base_BTD + α·h_expert_BTD     (f32 math, cast to h_base's dtype)
    z_BTZ = GELU_exact(h_BTD · enc_DZ + enc_bias_Z) (f32 accumulation and GELU, cast to the dtype)
    y_BTD = decoder(z_BTZ) + dec_bias_D             (f32 accumulation, cast to the dtype)

The decoder is linear (dec (Z, D)) or a causal conv along T (dec (W, Z, D), zero padding W − 1 on
the left: y_t = Σ_j z_{t−(W−1)+j} · dec[j]), exactly the math of ``superpose.blend.Autoencoder``
with ``causal=True`` (the non-causal conv is not supported here). α is a scalar, per feature (D,) or
per position (B, T).

``check_shapes`` and ``cast_params`` are the contract the fused kernel shares (the shapes it
accepts, the dtypes it computes in); ``reference_math`` is also the fused kernel's
``backward='recompute'`` (its VJP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from superpose.kernels._math import blend


def check_shapes(
  h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias
) -> tuple[int, int, int, int, int]:
  """Validates the shapes; returns (B, T, D, Z, W) with W = 1 for the linear decoder."""
  if h_base.ndim != 3 or h_base.shape != h_expert.shape:
    raise ValueError(
      f"superpose_step: h_base and h_expert must be (B, T, D) of one shape, got "
      f"{h_base.shape} and {h_expert.shape}"
    )
  B, T, D = h_base.shape
  if enc.ndim != 2 or enc.shape[0] != D:
    raise ValueError(f"superpose_step: enc must be (D={D}, Z), got {enc.shape}")
  Z = enc.shape[1]
  if enc_bias.shape != (Z,):
    raise ValueError(f"superpose_step: enc_bias must be (Z={Z},), got {enc_bias.shape}")
  if dec.ndim == 2 and dec.shape == (Z, D):
    W = 1
  elif dec.ndim == 3 and dec.shape[1:] == (Z, D) and dec.shape[0] >= 1:
    W = dec.shape[0]
  else:
    raise ValueError(
      f"superpose_step: dec must be (Z={Z}, D={D}) (linear) or (W, {Z}, {D}) (causal conv), "
      f"got {dec.shape}"
    )
  if dec_bias.shape != (D,):
    raise ValueError(f"superpose_step: dec_bias must be (D={D},), got {dec_bias.shape}")
  if jnp.shape(alpha) not in ((), (D,), (B, T)):
    raise ValueError(
      f"superpose_step: alpha must be a scalar, per feature (D={D},) or per position "
      f"(B={B}, T={T}), got shape {jnp.shape(alpha)}"
    )
  return B, T, D, Z, W


def cast_params(dtype, enc, enc_bias, dec, dec_bias):
  """Matrices to the compute dtype, biases to f32 (Autoencoder's casts); dec as (W, Z, D)."""
  dec_WZD = dec[None] if dec.ndim == 2 else dec
  return (
    enc.astype(dtype),
    enc_bias.astype(jnp.float32),
    dec_WZD.astype(dtype),
    dec_bias.astype(jnp.float32),
  )


def _alpha_BTD(alpha, B: int, T: int) -> jax.Array:
  """α as an f32 array broadcastable against (B, T, D)."""
  a = jnp.asarray(alpha, jnp.float32)
  return a[:, :, None] if a.shape == (B, T) else a


def reference_math(h_base_BTD, h_expert_BTD, alpha_BTD, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D):
  """Returns (y_BTD, h_BTD). Parameters already in the compute dtype (matrices) and f32 (biases)."""
  dtype = h_base_BTD.dtype
  h_BTD = blend(h_base_BTD, h_expert_BTD, alpha_BTD, dtype)
  z_BTZ = jnp.einsum("btd,dk->btk", h_BTD, enc_DZ, preferred_element_type=jnp.float32)
  z_BTZ = jax.nn.gelu(z_BTZ + enc_bias_Z, approximate=False).astype(dtype)
  W = dec_WZD.shape[0]
  if W == 1:
    y_BTD = jnp.einsum("btk,kd->btd", z_BTZ, dec_WZD[0], preferred_element_type=jnp.float32)
  else:  # torch Conv1d cross-correlation with causal padding (W − 1, 0), as in Autoencoder
    y_BTD = jax.lax.conv_general_dilated(
      z_BTZ,
      dec_WZD,
      window_strides=(1,),
      padding=[(W - 1, 0)],
      dimension_numbers=("NWC", "WIO", "NWC"),
      preferred_element_type=jnp.float32,
    )
  return (y_BTD + dec_bias_D).astype(dtype), h_BTD


@functools.partial(jax.jit, static_argnames=("return_h",))
def reference(
  h_base_BTD, h_expert_BTD, alpha, enc_DZ, enc_bias_Z, dec, dec_bias_D, *, return_h: bool = False
):
  """Plain-JAX superposition step: y_BTD (and h_BTD when ``return_h``), in h_base's dtype.

  alpha: scalar, (D,) or (B, T). dec: (Z, D) linear or (W, Z, D) causal conv.
  """
  B, T, _, _, _ = check_shapes(h_base_BTD, h_expert_BTD, alpha, enc_DZ, enc_bias_Z, dec, dec_bias_D)
  params = cast_params(h_base_BTD.dtype, enc_DZ, enc_bias_Z, dec, dec_bias_D)
  y_BTD, h_BTD = reference_math(h_base_BTD, h_expert_BTD, _alpha_BTD(alpha, B, T), *params)
  return (y_BTD, h_BTD) if return_h else y_BTD
