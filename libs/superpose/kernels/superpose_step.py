"""The per-layer superposition step, fused: blend two residual states, then the autoencoder (p1 §3.3).

    h_BTD = (1 − α)·h_base_BTD + α·h_expert_BTD          (f32 math, cast to h_base's dtype)
    z_BTK = GELU_exact(h_BTD · enc_DK + enc_bias_K)      (f32 accumulation and GELU, cast to the dtype)
    y_BTD = decoder(z_BTK) + dec_bias_D                  (f32 accumulation, cast to the dtype)

The decoder is linear (dec (K, D)) or a causal conv along T (dec (W, K, D), zero padding W − 1 on the
left: y_t = Σ_j z_{t−(W−1)+j} · dec[j]), exactly the math of ``superpose.blend.Autoencoder`` with
``causal=True`` (the non-causal conv is not supported here). α is a scalar, per feature (D,) or per
position (B, T).

Two implementations with one signature:
  * ``reference``: plain JAX under one ``jax.jit``;
  * ``fused``: one Pallas kernel for the forward (blend + encoder + GELU + decoder per row block, the
    blended state and z never leave the kernel), wrapped in a ``jax.custom_vjp`` whose backward is a
    plain-JAX recompute (``jax.vjp`` of the reference math on the saved inputs; no Pallas backward).
``superpose_step(..., impl='reference' | 'pallas')`` dispatches by a config string.

Kernel layout. Grid (B, cdiv(T, block_t)), both axes independent ('parallel'). A step reads rows
[i·block_t, (i+1)·block_t) of one batch row of h_base, h_expert and the per-position α, with every
parameter (enc, dec, biases, per-feature α) as a whole-array block: D and K are not tiled. The causal
conv needs z of the W − 1 rows before the block: the kernel re-reads a small halo block of the inputs
just before its own (a multiple of the sublane tile ≥ W − 1 rows dividing block_t, else a whole block)
and recomputes their z (a halo recompute, so the grid steps stay independent and need no carried
state); in the first block of a row the halo is the zero padding. The linear decoder is
the W = 1 case on the rows flattened to (1, B·T, D). A T (or B·T) that is not a multiple of block_t
gives a partial last block: its rows past the end are computed on padding and never written, and the
causal conv never lets them reach a valid row (row t reads only rows ≤ t).

Targets: TPU (Mosaic; the compiler params are TPU's) and interpret mode on any backend. Inside the
kernel GELU is ½x(1 + erf(x/√2)): ``jax.nn.gelu``'s erfc has no Mosaic lowering in this jax.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

IMPLS = ("reference", "pallas")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static settings of the fused kernel (hashable: a ``jax.jit`` static argument).

  block_rows: rows (positions along T; along B·T for the linear decoder) per grid step, a positive
    multiple of 8 (the TPU sublane tile; use multiples of 16 for bf16). Clamped to the (8-rounded) row
    count of the input. D and K are not tiled: enc and dec are whole blocks in every step.
  interpret: run ``pallas_call`` in interpret mode (a jitted scan over the grid, no Mosaic/Triton);
    None = automatically, when the default backend is the CPU.
  """
  block_rows: int = 128
  interpret: bool | None = None

  def __post_init__(self):
    if not isinstance(self.block_rows, int) or self.block_rows <= 0 or self.block_rows % 8:
      raise ValueError(f"KernelConfig: block_rows must be a positive multiple of 8, got {self.block_rows!r}")
    if self.interpret not in (None, True, False):
      raise ValueError(f"KernelConfig: interpret must be None, True or False, got {self.interpret!r}")

  def use_interpret(self) -> bool:
    return jax.default_backend() == "cpu" if self.interpret is None else self.interpret


# Shapes and α -------------------------------------------------------------------------------------


def _check(h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias) -> tuple[int, int, int, int, int]:
  """Validates the shapes; returns (B, T, D, K, W) with W = 1 for the linear decoder."""
  if h_base.ndim != 3 or h_base.shape != h_expert.shape:
    raise ValueError(f"superpose_step: h_base and h_expert must be (B, T, D) of one shape, got "
                     f"{h_base.shape} and {h_expert.shape}")
  B, T, D = h_base.shape
  if enc.ndim != 2 or enc.shape[0] != D:
    raise ValueError(f"superpose_step: enc must be (D={D}, K), got {enc.shape}")
  K = enc.shape[1]
  if enc_bias.shape != (K,):
    raise ValueError(f"superpose_step: enc_bias must be (K={K},), got {enc_bias.shape}")
  if dec.ndim == 2 and dec.shape == (K, D):
    W = 1
  elif dec.ndim == 3 and dec.shape[1:] == (K, D) and dec.shape[0] >= 1:
    W = dec.shape[0]
  else:
    raise ValueError(f"superpose_step: dec must be (K={K}, D={D}) (linear) or (W, {K}, {D}) (causal conv), "
                     f"got {dec.shape}")
  if dec_bias.shape != (D,):
    raise ValueError(f"superpose_step: dec_bias must be (D={D},), got {dec_bias.shape}")
  if jnp.shape(alpha) not in ((), (D,), (B, T)):
    raise ValueError(f"superpose_step: alpha must be a scalar, per feature (D={D},) or per position "
                     f"(B={B}, T={T}), got shape {jnp.shape(alpha)}")
  return B, T, D, K, W


def _alpha_factors(alpha, B: int, T: int, D: int) -> tuple[jax.Array, jax.Array]:
  """α as a_row_BT1 · a_feat_1D (f32), one factor all ones, so the product is α exactly."""
  a = jnp.asarray(alpha, jnp.float32)
  if a.shape == (B, T):
    return a[:, :, None], jnp.ones((1, D), jnp.float32)
  return jnp.ones((B, T, 1), jnp.float32), jnp.broadcast_to(a, (D,))[None, :]


def _alpha_BTD(alpha, B: int, T: int) -> jax.Array:
  """α as an f32 array broadcastable against (B, T, D)."""
  a = jnp.asarray(alpha, jnp.float32)
  return a[:, :, None] if a.shape == (B, T) else a


# Reference ----------------------------------------------------------------------------------------


def _math(h_base_BTD, h_expert_BTD, alpha_BTD, enc_DK, enc_bias_K, dec_WKD, dec_bias_D):
  """Returns (y_BTD, h_BTD). Parameters already in the compute dtype (matrices) and f32 (biases)."""
  dtype = h_base_BTD.dtype
  h_BTD = ((1.0 - alpha_BTD) * h_base_BTD.astype(jnp.float32)
           + alpha_BTD * h_expert_BTD.astype(jnp.float32)).astype(dtype)
  z_BTK = jnp.einsum("btd,dk->btk", h_BTD, enc_DK, preferred_element_type=jnp.float32)
  z_BTK = jax.nn.gelu(z_BTK + enc_bias_K, approximate=False).astype(dtype)
  W = dec_WKD.shape[0]
  if W == 1:
    y_BTD = jnp.einsum("btk,kd->btd", z_BTK, dec_WKD[0], preferred_element_type=jnp.float32)
  else:   # torch Conv1d cross-correlation with causal padding (W − 1, 0), as in Autoencoder
    y_BTD = jax.lax.conv_general_dilated(
        z_BTK, dec_WKD, window_strides=(1,), padding=[(W - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), preferred_element_type=jnp.float32)
  return (y_BTD + dec_bias_D).astype(dtype), h_BTD


def _cast_params(dtype, enc, enc_bias, dec, dec_bias):
  """Matrices to the compute dtype, biases to f32 (Autoencoder's casts); dec as (W, K, D)."""
  dec_WKD = dec[None] if dec.ndim == 2 else dec
  return enc.astype(dtype), enc_bias.astype(jnp.float32), dec_WKD.astype(dtype), dec_bias.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("return_h",))
def reference(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D, *, return_h: bool = False):
  """Plain-JAX superposition step: y_BTD (and h_BTD when ``return_h``), in h_base's dtype.

  alpha: scalar, (D,) or (B, T). dec: (K, D) linear or (W, K, D) causal conv.
  """
  B, T, _, _, _ = _check(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D)
  params = _cast_params(h_base_BTD.dtype, enc_DK, enc_bias_K, dec, dec_bias_D)
  y_BTD, h_BTD = _math(h_base_BTD, h_expert_BTD, _alpha_BTD(alpha, B, T), *params)
  return (y_BTD, h_BTD) if return_h else y_BTD


# Pallas kernel ------------------------------------------------------------------------------------


def _halo_rows(W: int, block_t: int, itemsize: int) -> int:
  """Rows of the halo block: the smallest multiple of the sublane tile (8 rows of 32 bits, 16 of bf16)
  that is ≥ W − 1 and divides block_t; else block_t."""
  tile = 8 * max(1, 4 // itemsize)
  for rows in range(tile, block_t, tile):
    if rows >= W - 1 and block_t % rows == 0:
      return rows
  return block_t


def _gelu_exact(x):
  """Exact GELU x·Φ(x) = ½x(1 + erf(x/√2)) in f32. ``jax.nn.gelu(approximate=False)`` uses erfc, which
  has no Pallas TPU lowering in this jax; the two agree to f32 rounding (erfc is only more accurate for
  the tiny values of large negative x)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))


def _kernel(*refs, W: int, halo: int, with_halo: bool, return_h: bool):
  """One (batch row, row block) step. Refs (batch dim squeezed):

  hb, he (rows, D); a_row (rows, 1); a_feat (1, D); enc (D, K); enc_bias (1, K); dec (W, K, D);
  dec_bias (1, D); [halo: hb_h, he_h (halo, D), a_row_h (halo, 1)]; outputs y (rows, D) [, h (rows, D)].
  """
  hb_ref, he_ref, ar_ref, af_ref, enc_ref, encb_ref, dec_ref, decb_ref = refs[:8]
  rest = refs[8:]
  if with_halo:
    hbh_ref, heh_ref, arh_ref = rest[:3]
    rest = rest[3:]
  y_ref = rest[0]
  dtype = y_ref.dtype
  enc = enc_ref[...]
  a_feat = af_ref[...]

  def blend_encode(hb, he, a_row):
    a = a_row * a_feat                                                   # (rows, D) f32
    h = ((1.0 - a) * hb.astype(jnp.float32) + a * he.astype(jnp.float32)).astype(dtype)
    z = jnp.dot(h, enc, preferred_element_type=jnp.float32) + encb_ref[...]
    return h, _gelu_exact(z).astype(dtype)

  h, z = blend_encode(hb_ref[...], he_ref[...], ar_ref[...])
  if return_h:
    rest[1][...] = h
  rows = z.shape[0]
  if W > 1:
    if with_halo:
      _, z_halo = blend_encode(hbh_ref[halo - (W - 1):, :], heh_ref[halo - (W - 1):, :],
                               arh_ref[halo - (W - 1):, :])
      z_halo = jnp.where(pl.program_id(1) > 0, z_halo, jnp.zeros_like(z_halo))   # the causal zero padding
    else:
      z_halo = jnp.zeros((W - 1, z.shape[1]), dtype)
    z = jnp.concatenate([z_halo, z], axis=0)                             # (W − 1 + rows, K)
  y = jnp.dot(z[0:rows], dec_ref[0], preferred_element_type=jnp.float32)
  for j in range(1, W):
    y = y + jnp.dot(z[j:j + rows], dec_ref[j], preferred_element_type=jnp.float32)
  y_ref[...] = (y + decb_ref[...]).astype(dtype)


def _pallas_forward(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD, dec_bias_D,
                    config: KernelConfig, return_h: bool):
  B, T, D = hb_BTD.shape
  K, W = enc_DK.shape[1], dec_WKD.shape[0]
  dtype = hb_BTD.dtype
  block_t = min(config.block_rows, 8 * math.ceil(T / 8))
  n_t = pl.cdiv(T, block_t)
  with_halo = W > 1 and n_t > 1
  if with_halo and W - 1 > block_t:
    raise ValueError(f"superpose_step: the conv needs W − 1 = {W - 1} previous rows, more than block_rows "
                     f"= {block_t}; raise KernelConfig.block_rows")
  halo = _halo_rows(W, block_t, jnp.dtype(dtype).itemsize) if with_halo else 0

  row = lambda b, i: (b, i, 0)
  whole2 = lambda b, i: (0, 0)
  in_specs = [
      pl.BlockSpec((None, block_t, D), row),             # h_base
      pl.BlockSpec((None, block_t, D), row),             # h_expert
      pl.BlockSpec((None, block_t, 1), row),             # α per position
      pl.BlockSpec((1, D), whole2),                      # α per feature
      pl.BlockSpec((D, K), whole2),                      # enc
      pl.BlockSpec((1, K), whole2),                      # enc_bias
      pl.BlockSpec((W, K, D), lambda b, i: (0, 0, 0)),   # dec
      pl.BlockSpec((1, D), whole2),                      # dec_bias
  ]
  args = [hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K[None, :], dec_WKD, dec_bias_D[None, :]]
  if with_halo:
    per_block = block_t // halo
    halo_row = lambda b, i: (b, jnp.maximum(i * per_block - 1, 0), 0)   # the halo block just before block i
    in_specs += [pl.BlockSpec((None, halo, D), halo_row), pl.BlockSpec((None, halo, D), halo_row),
                 pl.BlockSpec((None, halo, 1), halo_row)]
    args += [hb_BTD, he_BTD, a_row_BT1]
  out_spec = pl.BlockSpec((None, block_t, D), row)
  out_shape = jax.ShapeDtypeStruct((B, T, D), dtype)
  kernel = functools.partial(_kernel, W=W, halo=halo, with_halo=with_halo, return_h=return_h)
  itemsize = jnp.dtype(dtype).itemsize
  cost = pl.CostEstimate(
      flops=int(2 * B * T * K * D * (1 + W) + 6 * B * T * D),
      transcendentals=int(B * T * K),
      bytes_accessed=int(itemsize * B * T * D * (3 + return_h) + itemsize * K * D * (1 + W)))
  outs = pl.pallas_call(
      kernel,
      out_shape=(out_shape, out_shape) if return_h else out_shape,
      grid=(B, n_t),
      in_specs=in_specs,
      out_specs=(out_spec, out_spec) if return_h else out_spec,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
      cost_estimate=cost,
      interpret=config.use_interpret(),
      name="superpose_step",
  )(*args)
  return outs if return_h else (outs, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _fused_core(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD, dec_bias_D,
                config: KernelConfig, return_h: bool):
  y_BTD, h_BTD = _pallas_forward(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD,
                                 dec_bias_D, config, return_h)
  return (y_BTD, h_BTD) if return_h else y_BTD


def _fused_fwd(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD, dec_bias_D, config, return_h):
  out = _fused_core(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD, dec_bias_D,
                    config, return_h)
  return out, (hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DK, enc_bias_K, dec_WKD, dec_bias_D)


def _fused_bwd(config, return_h, residuals, g):
  """Plain-JAX recompute: the VJP of the reference math at the saved inputs."""
  del config

  def math_(hb, he, a_row, a_feat, enc, enc_bias, dec, dec_bias):
    y, h = _math(hb, he, a_row * a_feat, enc, enc_bias, dec, dec_bias)
    return (y, h) if return_h else y

  _, vjp = jax.vjp(math_, *residuals)
  return vjp(g)


_fused_core.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("config", "return_h"))
def fused(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D, *,
          config: KernelConfig = KernelConfig(), return_h: bool = False):
  """Pallas superposition step, same signature and result as ``reference`` (differentiable)."""
  B, T, D, _, W = _check(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D)
  enc, enc_bias, dec_WKD, dec_bias = _cast_params(h_base_BTD.dtype, enc_DK, enc_bias_K, dec, dec_bias_D)
  a_row_BT1, a_feat_1D = _alpha_factors(alpha, B, T, D)
  hb, he = h_base_BTD, h_expert_BTD
  if W == 1:   # no coupling along T: one long row of B·T positions fills the blocks best
    hb, he, a_row_BT1 = hb.reshape(1, B * T, D), he.reshape(1, B * T, D), a_row_BT1.reshape(1, B * T, 1)
  out = _fused_core(hb, he, a_row_BT1, a_feat_1D, enc, enc_bias, dec_WKD, dec_bias, config, return_h)
  if return_h:
    return out[0].reshape(B, T, D), out[1].reshape(B, T, D)
  return out.reshape(B, T, D)


def superpose_step(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D, *,
                   impl: Literal["reference", "pallas"] = "reference", config: KernelConfig | None = None,
                   return_h: bool = False):
  """y_BTD (and h_BTD with ``return_h``) of one superposition step; ``impl`` picks the implementation."""
  if impl == "reference":
    return reference(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D, return_h=return_h)
  if impl == "pallas":
    return fused(h_base_BTD, h_expert_BTD, alpha, enc_DK, enc_bias_K, dec, dec_bias_D,
                 config=config or KernelConfig(), return_h=return_h)
  raise ValueError(f"superpose_step: impl must be one of {IMPLS}, got {impl!r}")


def autoencoder_params(ae) -> dict[str, jax.Array]:
  """enc, enc_bias, dec, dec_bias of a ``superpose.blend.Autoencoder`` (causal conv or linear)."""
  if ae.decoder == "conv" and not ae.causal and ae.kernel_size > 1:
    raise ValueError("superpose_step: only the causal conv decoder is supported (the Autoencoder has causal=False)")
  return {"enc_DK": ae.enc[...], "enc_bias_K": ae.enc_bias[...], "dec": ae.dec[...], "dec_bias_D": ae.dec_bias[...]}
