"""The per-layer superposition step, fused: blend two residual states, then the autoencoder (p1
§3.3).

The math (h = (1 − α)·h_base + α·h_expert, z = GELU_exact(h·enc + enc_bias), y = decoder(z) +
dec_bias, the decoder linear or a causal conv along T; α a scalar, per feature or per position) is
written out in ``superpose.kernels.reference``, whose shape checks and casts ``fused`` shares; the
kernels' row-block math (GELU by erf, the conv's row shifts, the 2-D dots) is in
``superpose.kernels._math``.

Two implementations with one signature:
  * ``reference``: plain JAX under one ``jax.jit``;
  * ``fused``: one Pallas kernel for the forward (blend + encoder + GELU + decoder per row block,
    the blended state and z never leave the kernel) and, by default
    (``KernelConfig(backward='pallas')``), one Pallas kernel for the backward, tied by a
    ``jax.custom_vjp``. ``backward='recompute'`` keeps the older plain-JAX backward (``jax.vjp`` of
    the reference math on the saved inputs) for comparison.
``superpose_step(..., impl='reference' | 'pallas')`` dispatches by a config string.

Forward kernel. Grid (B, cdiv(T, block_t)), both axes independent ('parallel'). A step reads rows
[i·block_t, (i+1)·block_t) of one batch row of h_base, h_expert and the per-position α, with every
parameter (enc, dec, biases, per-feature α) as a whole-array block: D and Z are not tiled. The
causal conv needs z of the W − 1 rows before the block: the kernel re-reads a small halo block of
the inputs just before its own (a multiple of the sublane tile ≥ W − 1 rows dividing block_t, else a
whole block) and recomputes their z (a halo recompute, so the grid steps stay independent and need
no carried state); in the first block of a row the halo is the zero padding. The linear decoder is
the W = 1 case on the rows flattened to (1, B·T, D). A T (or B·T) that is not a multiple of block_t
gives a partial last block: its rows past the end are computed on padding and never written, and the
causal conv never lets them reach a valid row (row t reads only rows ≤ t).

Backward kernel (same grid, same blocks, nothing saved but the inputs: h and z are recomputed in the
kernel). Given g_y (and g_h with ``return_h``) it computes, per block, in f32 accumulation:
  g_dec[j] = Σ_t z_{t−(W−1)+j}ᵀ g_y_t (the forward's halo before the block supplies z_{t<block}),
  g_z_t = Σ_j g_y_{t+(W−1)−j} dec[j]ᵀ (needs g_y of the W − 1 rows AFTER the block: a second halo
  block, the mirror of the forward's, its block index clamped at the end and its rows past T
  zeroed), g_pre = g_z · GELU'(pre), g_enc = hᵀ g_pre, g_h = g_pre encᵀ (+ g_h of the h output),
  g_h_base = (1 − α) g_h, g_h_expert = α g_h, g_α = g_h (h_expert − h_base) reduced to the
  per-position (rows, 1) and per-feature (1, D) factors of α.
Row-local cotangents (h_base, h_expert, per-position α) are written per block; the parameter
cotangents (enc, enc_bias, dec, dec_bias, per-feature α) are per-block partial sums, outputs of
shape (B, n_blocks, …) in f32 summed in JAX afterwards (memory B·n_blocks·(W + 1)·Z·D·4 bytes: use a
large block_rows for long T). Rows of a partial last block past T are zeroed before every reduction.

Where it runs (``KernelConfig.platform``; None = ``jax.default_backend()`` at trace time):
  * 'tpu': Mosaic, ``pltpu.CompilerParams`` (both grid axes 'parallel'). Lowering of forward and
    backward is checked on a CPU host (``lower(lowering_platforms=('tpu',))``); not run on a TPU
    here.
  * 'gpu', ``KernelConfig.gpu_backend``: 'mosaic' — Pallas Mosaic GPU (``superpose_step_mgpu``,
    its own docstring: Hopper wgmma, bf16/f16 states, D and Z multiples of 64 ≤ 256), the default
    for 16-bit states where the installed jax has that API (jax ≥ 0.12); lowering for ('cuda',)
    and its math in Pallas' GPU interpreter are checked on the CPU host. 'triton' — the default
    for f32 states and older jax: Pallas Triton,
    ``jax.experimental.pallas.triton.CompilerParams(num_warps, num_stages)`` (deprecated upstream in
    favour of Mosaic GPU; it warns when it lowers). Triton needs power-of-two block sizes and dot
    dims ≥ 16: D, Z and block_rows must be powers of two ≥ 16 (a ValueError says so otherwise; D
    and Z are not padded). Neither GPU kernel masks nor pads a partial last block, so there the
    row axis is zero-padded to whole blocks in ``fused`` (exact: see there). Triton lowers no erf
    and no value slices, so in its kernel erf is Eigen's f32 rational approximation and the conv's
    row shifts are 0/1 selection matmuls at HIGHEST precision (exact) against a ≥ 16-row halo
    block. enc and dec are whole blocks held by one program, so only modest D·Z suit this layout on
    a GPU. Lowering for ('cuda',) is checked on
    the CPU host by jax 0.10 (Triton IR only; jax 0.12 needs a GPU to lower it; ptxas/compilation
    and speed are not checked here, no GPU run).
  * 'cpu': interpret mode (a jitted scan over the grid; correctness only, not a speed measure).
``interpret=True`` runs any platform's variant in interpret mode (so the GPU variant's math is
tested on the CPU too). Inside the kernel GELU is ½x(1 + erf(x/√2)): ``jax.nn.gelu``'s erfc has no
Mosaic lowering in this jax (``superpose.kernels._math``).
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

from superpose.kernels import superpose_step_mgpu as mgpu
from superpose.kernels._math import blend_encode, dot, gelu_exact_grad, shift_down, shift_up
from superpose.kernels.reference import cast_params, check_shapes, reference, reference_math

try:  # deprecated upstream; may disappear from a later jax
  from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover
  pltriton = None

IMPLS = ("reference", "pallas")
BACKWARDS = ("pallas", "recompute")
PLATFORMS = (None, "tpu", "gpu", "cpu")
GPU_BACKENDS = (None, "mosaic", "triton")
_BACKEND_PLATFORM = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "cpu": "cpu"}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static settings of the fused kernel (hashable: a ``jax.jit`` static argument).

  block_rows: rows (positions along T; along B·T for the linear decoder) per grid step, a positive
    multiple of 8 (the TPU sublane tile; use multiples of 16 for bf16). Clamped to the (8-rounded;
    on the GPU power-of-two, ≥ 16) row count of the input. D and Z are not tiled: enc and dec are
    whole blocks in every step. On the GPU it must be a power of two ≥ 16.
  interpret: run ``pallas_call`` in interpret mode (a jitted scan over the grid, no Mosaic/Triton);
    None = automatically, when the platform is the CPU.
  backward: 'pallas' (the Pallas backward kernel) or 'recompute' (plain-JAX VJP of the reference
  math). platform: which compiled variant: 'tpu' (Mosaic), 'gpu' (Pallas Triton), 'cpu' (interpret
  only), or
    None = ``jax.default_backend()`` at trace time. Set it to lower for another platform than the
    host's.
  gpu_backend: which GPU kernel: 'mosaic' (Pallas Mosaic GPU, ``superpose_step_mgpu``: bf16/f16,
    D and Z multiples of 64 ≤ 256, block_rows a multiple of 64), 'triton' (Pallas Triton,
    deprecated upstream), or None = Mosaic GPU where this jax has it (``mgpu.available()``) and the
    states are 16-bit, else Triton (f32 states: Mosaic's wgmma would read them as tf32).
  num_warps, num_stages: Triton compiler params (platform 'gpu' only).
  vmem_limit_bytes: Mosaic's scoped VMEM limit (platform 'tpu' only; None = Mosaic's default). The
    backward keeps enc, dec and their f32 partial cotangents resident (double-buffered), about
    2·(itemsize + 4)·(W + 1)·Z·D bytes: raise it for large D·Z.
  """

  block_rows: int = 128
  interpret: bool | None = None
  backward: Literal["pallas", "recompute"] = "pallas"
  platform: Literal["tpu", "gpu", "cpu"] | None = None
  gpu_backend: Literal["mosaic", "triton"] | None = None
  num_warps: int = 4
  num_stages: int = 2
  vmem_limit_bytes: int | None = None

  def __post_init__(self):
    if not isinstance(self.block_rows, int) or self.block_rows <= 0 or self.block_rows % 8:
      raise ValueError(
        f"KernelConfig: block_rows must be a positive multiple of 8, got {self.block_rows!r}"
      )
    if self.interpret not in (None, True, False):
      raise ValueError(
        f"KernelConfig: interpret must be None, True or False, got {self.interpret!r}"
      )
    if self.backward not in BACKWARDS:
      raise ValueError(f"KernelConfig: backward must be one of {BACKWARDS}, got {self.backward!r}")
    if self.platform not in PLATFORMS:
      raise ValueError(f"KernelConfig: platform must be one of {PLATFORMS}, got {self.platform!r}")
    if self.gpu_backend not in GPU_BACKENDS:
      raise ValueError(
        f"KernelConfig: gpu_backend must be one of {GPU_BACKENDS}, got {self.gpu_backend!r}"
      )

  def resolved_platform(self) -> str:
    if self.platform is not None:
      return self.platform
    backend = jax.default_backend()
    if backend not in _BACKEND_PLATFORM:
      raise ValueError(f"KernelConfig: no kernel variant for backend {backend!r}; set platform")
    return _BACKEND_PLATFORM[backend]

  def use_interpret(self) -> bool:
    return self.resolved_platform() == "cpu" if self.interpret is None else self.interpret

  def kernel_variant(self, dtype) -> str:
    """'tpu', 'mosaic' (GPU), 'triton' (GPU) or 'cpu': the kernel that runs states of ``dtype``."""
    platform = self.resolved_platform()
    if platform != "gpu":
      return platform
    if self.gpu_backend == "mosaic" and not mgpu.available():
      raise ValueError(
        "KernelConfig: gpu_backend='mosaic' needs jax.experimental.pallas.mosaic_gpu as in "
        f"jax ≥ 0.12 (this is jax {jax.__version__}); use gpu_backend='triton'"
      )
    if self.gpu_backend is not None:
      return self.gpu_backend
    sixteen_bit = jnp.dtype(dtype).itemsize == 2
    return "mosaic" if mgpu.available() and sixteen_bit else "triton"


# α ------------------------------------------------------------------------------------------------


def _alpha_factors(alpha, B: int, T: int, D: int) -> tuple[jax.Array, jax.Array]:
  """α as a_row_BT1 · a_feat_1D (f32), one factor all ones, so the product is α exactly."""
  a = jnp.asarray(alpha, jnp.float32)
  if a.shape == (B, T):
    return a[:, :, None], jnp.ones((1, D), jnp.float32)
  return jnp.ones((B, T, 1), jnp.float32), jnp.broadcast_to(a, (D,))[None, :]


# Pallas kernels -----------------------------------------------------------------------------------


def _halo_rows(W: int, block_t: int, tile: int) -> int:
  """Rows of a halo block: the smallest multiple of ``tile`` that is ≥ W − 1 and divides block_t;
  else block_t. ``tile`` is the TPU sublane tile (8 rows of 32 bits, 16 of bf16) or 16 on the GPU
  (Triton's smallest dot operand; block_t is a power of two there, so the halo is one too)."""
  for rows in range(tile, block_t, tile):
    if rows >= W - 1 and block_t % rows == 0:
      return rows
  return block_t


def _halo_z(hbh_ref, heh_ref, arh_ref, a_feat, enc, enc_bias, dtype, W: int, halo: int, gpu: bool):
  """z of the halo block before the current one (only its last W − 1 rows off the GPU), zero in the
  first block of a row (the causal zero padding)."""
  lo = 0 if gpu else halo - (W - 1)
  _, _, _, z_halo = blend_encode(
    hbh_ref[lo:, :], heh_ref[lo:, :], arh_ref[lo:, :], a_feat, enc, enc_bias, dtype, gpu
  )
  return jnp.where(pl.program_id(1) > 0, z_halo, jnp.zeros_like(z_halo))


def _fwd_kernel(*refs, W: int, halo: int, with_halo: bool, return_h: bool, gpu: bool):
  """One (batch row, row block) step of the forward. Refs (batch dim squeezed):

  hb, he (rows, D); a_row (rows, 1); a_feat (1, D); enc (D, Z); enc_bias (1, Z); dec (W, Z, D);
  dec_bias (1, D); [halo: hb_h, he_h (halo, D), a_row_h (halo, 1)]; outputs y (rows, D) [, h (rows,
  D)].
  """
  hb_ref, he_ref, ar_ref, af_ref, enc_ref, encb_ref, dec_ref, decb_ref = refs[:8]
  rest = refs[8:]
  y_ref = rest[3] if with_halo else rest[0]
  dtype = y_ref.dtype
  enc, enc_bias, a_feat = enc_ref[...], encb_ref[...], af_ref[...]
  _, h, _, z = blend_encode(
    hb_ref[...], he_ref[...], ar_ref[...], a_feat, enc, enc_bias, dtype, gpu
  )
  if return_h:
    rest[-1][...] = h
  if W > 1:
    if with_halo:
      z_halo = _halo_z(*rest[:3], a_feat, enc, enc_bias, dtype, W, halo, gpu)
    else:
      z_halo = jnp.zeros((16 if gpu else W - 1, z.shape[1]), dtype)
  y = decb_ref[...] + dot(z, dec_ref[W - 1])
  for j in range(W - 1):  # y_t += z_{t−(W−1)+j} · dec[j]
    y = y + dot(shift_down(z, z_halo, W - 1 - j, gpu), dec_ref[j])
  y_ref[...] = y.astype(dtype)


def _bwd_kernel(
  *refs, W: int, halo: int, with_halo: bool, with_g_h: bool, n_rows: int, mask_rows: bool, gpu: bool
):
  """One (batch row, row block) step of the backward. Refs (batch dim squeezed):

  inputs hb, he (rows, D); a_row (rows, 1); a_feat (1, D); enc (D, Z); enc_bias (1, Z); dec (W, Z,
  D);
    g_y (rows, D); [g_h (rows, D)]; [halos: hb_h, he_h (halo, D), a_row_h (halo, 1) before the
    block, g_y_h (halo, D) after it];
  outputs g_hb, g_he (rows, D); g_a_row (rows, 1) f32; per-block partial sums (f32, the (batch,
  block)
    dims squeezed): g_a_feat (1, D), g_enc (D, Z), g_enc_bias (1, Z), g_dec (W, Z, D), g_dec_bias
    (1, D).

  Rows past ``n_rows`` (the padding of a partial last block, also in the halo after it) are zeroed
  before any reduction: they hold undefined values (NaN in interpret mode) and 0·NaN is NaN.
  """
  hb_ref, he_ref, ar_ref, af_ref, enc_ref, encb_ref, dec_ref, gy_ref = refs[:8]
  rest = list(refs[8:])
  gh_ref = rest.pop(0) if with_g_h else None
  if with_halo:
    hbh_ref, heh_ref, arh_ref, gyh_ref = rest[:4]
    rest = rest[4:]
  ghb_ref, ghe_ref, gar_ref, gaf_ref, genc_ref, gencb_ref, gdec_ref, gdecb_ref = rest
  dtype = hb_ref.dtype
  f32 = jnp.float32
  rows = hb_ref.shape[0]
  row0 = pl.program_id(1) * rows

  def valid(first, n):  # (n, 1) bool: global rows first..first+n−1 exist
    return first + jax.lax.broadcasted_iota(jnp.int32, (n, 1), 0) < n_rows

  def load(ref, first):
    x = ref[...]
    if not mask_rows:
      return x
    return jnp.where(valid(first, x.shape[0]), x, jnp.zeros_like(x))

  enc, enc_bias, a_feat = enc_ref[...], encb_ref[...], af_ref[...]
  hb, he, a_row = load(hb_ref, row0), load(he_ref, row0), load(ar_ref, row0)
  g_y = load(gy_ref, row0)
  a, h, pre, z = blend_encode(hb, he, a_row, a_feat, enc, enc_bias, dtype, gpu)

  # Decoder: y_t = Σ_j z_{t−(W−1)+j} · dec[j] + dec_bias.
  gdecb_ref[...] = jnp.sum(g_y.astype(f32), axis=0, keepdims=True)
  if W > 1:
    if with_halo:
      z_before = _halo_z(hbh_ref, heh_ref, arh_ref, a_feat, enc, enc_bias, dtype, W, halo, gpu)
      g_y_after = gyh_ref[...]  # always masked: past the last block it is clamped to another block
      g_y_after = jnp.where(
        valid(row0 + rows, g_y_after.shape[0]), g_y_after, jnp.zeros_like(g_y_after)
      )
    else:
      z_before = jnp.zeros((16 if gpu else W - 1, z.shape[1]), dtype)
      g_y_after = jnp.zeros((16 if gpu else W - 1, g_y.shape[1]), g_y.dtype)
  g_z = dot(g_y, dec_ref[W - 1], (1, 1))  # (rows, Z) f32
  gdec_ref[W - 1] = dot(z, g_y, (0, 0))
  for j in range(W - 1):
    s = W - 1 - j
    gdec_ref[j] = dot(shift_down(z, z_before, s, gpu), g_y, (0, 0))  # Σ_t z_{t−s}ᵀ g_y_t
    g_z = g_z + dot(
      shift_up(g_y, g_y_after, s, gpu), dec_ref[j], (1, 1)
    )  # g_z_t += g_y_{t+s} dec[j]ᵀ

  # Encoder and GELU.
  g_pre = g_z.astype(dtype).astype(f32) * gelu_exact_grad(pre, gpu)  # (rows, Z) f32
  gencb_ref[...] = jnp.sum(g_pre, axis=0, keepdims=True)
  g_pre_d = g_pre.astype(dtype)
  genc_ref[...] = dot(h, g_pre_d, (0, 0))
  g_h = dot(g_pre_d, enc, (1, 1))  # (rows, D) f32
  if with_g_h:
    g_h = g_h + load(gh_ref, row0).astype(f32)

  # Blend: h = (1 − a)·hb + a·he with a = a_row · a_feat.
  ghb_ref[...] = ((1.0 - a) * g_h).astype(ghb_ref.dtype)
  ghe_ref[...] = (a * g_h).astype(ghe_ref.dtype)
  g_a = g_h * (he.astype(f32) - hb.astype(f32))
  gar_ref[...] = jnp.sum(g_a * a_feat, axis=1, keepdims=True)
  gaf_ref[...] = jnp.sum(g_a * a_row, axis=0, keepdims=True)


def _layout(T: int, W: int, dtype, config: KernelConfig) -> tuple[int, int, bool, int, str]:
  """(block_t, n_t, with_halo, halo, platform) of a row axis of length T."""
  platform = config.resolved_platform()
  gpu = platform == "gpu"
  if config.kernel_variant(dtype) == "mosaic":  # halos of 64 rows inside the kernel
    block_t = mgpu.block_rows(T, config.block_rows)
    return block_t, pl.cdiv(T, block_t), False, 0, platform
  if gpu:
    block_t = min(config.block_rows, max(16, 1 << (T - 1).bit_length()))
  else:
    block_t = min(config.block_rows, 8 * math.ceil(T / 8))
  n_t = pl.cdiv(T, block_t)
  with_halo = W > 1 and n_t > 1
  if with_halo and W - 1 > block_t:
    raise ValueError(
      f"superpose_step: the conv needs W − 1 = {W - 1} previous rows, more than block_rows "
      f"= {block_t}; raise KernelConfig.block_rows"
    )
  if gpu and W - 1 > 16 and not with_halo:
    raise ValueError(f"superpose_step: on the GPU the conv width is at most 17 (W = {W})")
  tile = 16 if gpu else 8 * max(1, 4 // jnp.dtype(dtype).itemsize)
  halo = _halo_rows(W, block_t, tile) if with_halo else 0
  return block_t, n_t, with_halo, halo, platform


def _check_gpu(D: int, Z: int, config: KernelConfig):
  """Triton's constraints: every loaded/stored block and every dot operand has a power-of-two size,
  dot dims ≥ 16."""
  bad = [
    f"{name} = {v}"
    for name, v in (("D", D), ("Z", Z), ("block_rows", config.block_rows))
    if v < 16 or v & (v - 1)
  ]
  if bad:
    raise ValueError(
      f"superpose_step: the GPU (Pallas Triton) kernel needs D, Z and block_rows to be powers "
      f"of two ≥ 16; got {', '.join(bad)} (pad D/Z, or use impl='reference' on the GPU)"
    )


def _grid(
  hb_BTD, enc_DZ, dec_WZD, config: KernelConfig
) -> tuple[int, int, int, int, int, int, int, bool, int, str]:
  """(B, T, D, Z, W, block_t, n_t, with_halo, halo, platform) of one kernel call over the rows of
  hb_BTD (T is the row axis: B·T for the linear decoder), after Triton's checks on the GPU."""
  B, T, D = hb_BTD.shape
  Z, W = enc_DZ.shape[1], dec_WZD.shape[0]
  block_t, n_t, with_halo, halo, platform = _layout(T, W, hb_BTD.dtype, config)
  if platform == "gpu":
    _check_gpu(D, Z, config)
  return B, T, D, Z, W, block_t, n_t, with_halo, halo, platform


def _compiler_params(config: KernelConfig, platform: str, n_axes: int = 2):
  if config.use_interpret():
    return None
  if platform == "tpu":
    return pltpu.CompilerParams(
      dimension_semantics=("parallel",) * n_axes, vmem_limit_bytes=config.vmem_limit_bytes
    )
  if platform == "gpu":
    if pltriton is None:
      raise ValueError(
        "superpose_step: jax.experimental.pallas.triton is not available in this jax; "
        "use impl='reference' on the GPU"
      )
    return pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
  raise ValueError(
    f"superpose_step: no compiled Pallas kernel for platform {platform!r}; use interpret=True"
  )


def _specs(block_t: int, D: int, Z: int, W: int):
  row = lambda b, i: (b, i, 0)
  whole2 = lambda b, i: (0, 0)
  return [
    pl.BlockSpec((None, block_t, D), row),  # h_base
    pl.BlockSpec((None, block_t, D), row),  # h_expert
    pl.BlockSpec((None, block_t, 1), row),  # α per position
    pl.BlockSpec((1, D), whole2),  # α per feature
    pl.BlockSpec((D, Z), whole2),  # enc
    pl.BlockSpec((1, Z), whole2),  # enc_bias
    pl.BlockSpec((W, Z, D), lambda b, i: (0, 0, 0)),  # dec
  ]


def _pallas_forward(
  hb_BTD,
  he_BTD,
  a_row_BT1,
  a_feat_1D,
  enc_DZ,
  enc_bias_Z,
  dec_WZD,
  dec_bias_D,
  config: KernelConfig,
  return_h: bool,
):
  B, T, D, Z, W, block_t, n_t, with_halo, halo, platform = _grid(hb_BTD, enc_DZ, dec_WZD, config)
  dtype = hb_BTD.dtype

  row = lambda b, i: (b, i, 0)
  in_specs = _specs(block_t, D, Z, W) + [pl.BlockSpec((1, D), lambda b, i: (0, 0))]  # + dec_bias
  args = [
    hb_BTD,
    he_BTD,
    a_row_BT1,
    a_feat_1D,
    enc_DZ,
    enc_bias_Z[None, :],
    dec_WZD,
    dec_bias_D[None, :],
  ]
  if with_halo:
    per_block = block_t // halo
    halo_row = lambda b, i: (
      b,
      jnp.maximum(i * per_block - 1, 0),
      0,
    )  # the halo block just before block i
    in_specs += [
      pl.BlockSpec((None, halo, D), halo_row),
      pl.BlockSpec((None, halo, D), halo_row),
      pl.BlockSpec((None, halo, 1), halo_row),
    ]
    args += [hb_BTD, he_BTD, a_row_BT1]
  out_spec = pl.BlockSpec((None, block_t, D), row)
  out_shape = jax.ShapeDtypeStruct((B, T, D), dtype)
  kernel = functools.partial(
    _fwd_kernel, W=W, halo=halo, with_halo=with_halo, return_h=return_h, gpu=platform == "gpu"
  )
  itemsize = jnp.dtype(dtype).itemsize
  cost = pl.CostEstimate(
    flops=int(2 * B * T * Z * D * (1 + W) + 6 * B * T * D),
    transcendentals=int(B * T * Z),
    bytes_accessed=int(itemsize * B * T * D * (3 + return_h) + itemsize * Z * D * (1 + W)),
  )
  outs = pl.pallas_call(
    kernel,
    out_shape=(out_shape, out_shape) if return_h else out_shape,
    grid=(B, n_t),
    in_specs=in_specs,
    out_specs=(out_spec, out_spec) if return_h else out_spec,
    compiler_params=_compiler_params(config, platform),
    cost_estimate=cost,
    interpret=config.use_interpret(),
    name="superpose_step",
  )(*args)
  return outs if return_h else (outs, None)


def _pallas_backward(
  hb_BTD,
  he_BTD,
  a_row_BT1,
  a_feat_1D,
  enc_DZ,
  enc_bias_Z,
  dec_WZD,
  g_y_BTD,
  g_h_BTD,
  config: KernelConfig,
):
  """Cotangents of (hb, he, a_row, a_feat, enc, enc_bias, dec, dec_bias) from one Pallas kernel over
  the forward's grid; the parameter cotangents are per-block partial sums reduced here."""
  B, T, D, Z, W, block_t, n_t, with_halo, halo, platform = _grid(hb_BTD, enc_DZ, dec_WZD, config)
  dtype = hb_BTD.dtype
  with_g_h = g_h_BTD is not None

  row = lambda b, i: (b, i, 0)
  in_specs = _specs(block_t, D, Z, W) + [pl.BlockSpec((None, block_t, D), row)]  # + g_y
  args = [hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z[None, :], dec_WZD, g_y_BTD]
  if with_g_h:
    in_specs.append(pl.BlockSpec((None, block_t, D), row))
    args.append(g_h_BTD)
  if with_halo:
    per_block = block_t // halo
    last = pl.cdiv(T, halo) - 1
    before = lambda b, i: (
      b,
      jnp.maximum(i * per_block - 1, 0),
      0,
    )  # the halo block just before block i
    after = lambda b, i: (
      b,
      jnp.minimum((i + 1) * per_block, last),
      0,
    )  # ... just after it (clamped)
    in_specs += [
      pl.BlockSpec((None, halo, D), before),
      pl.BlockSpec((None, halo, D), before),
      pl.BlockSpec((None, halo, 1), before),
      pl.BlockSpec((None, halo, D), after),
    ]
    args += [hb_BTD, he_BTD, a_row_BT1, g_y_BTD]

  f32 = jnp.float32
  part = lambda *shape: (
    jax.ShapeDtypeStruct((B, n_t) + shape, f32),
    pl.BlockSpec((None, None) + shape, lambda b, i: (b, i) + (0,) * len(shape)),
  )
  outs = [
    (jax.ShapeDtypeStruct((B, T, D), dtype), pl.BlockSpec((None, block_t, D), row)),  # g_hb
    (jax.ShapeDtypeStruct((B, T, D), dtype), pl.BlockSpec((None, block_t, D), row)),  # g_he
    (jax.ShapeDtypeStruct((B, T, 1), f32), pl.BlockSpec((None, block_t, 1), row)),  # g_a_row
    # partial sums of g_a_feat, g_enc, g_enc_bias, g_dec, g_dec_bias
    part(1, D),
    part(D, Z),
    part(1, Z),
    part(W, Z, D),
    part(1, D),
  ]
  kernel = functools.partial(
    _bwd_kernel,
    W=W,
    halo=halo,
    with_halo=with_halo,
    with_g_h=with_g_h,
    n_rows=T,
    mask_rows=T % block_t != 0,
    gpu=platform == "gpu",
  )
  itemsize = jnp.dtype(dtype).itemsize
  cost = pl.CostEstimate(
    flops=int(2 * B * T * Z * D * (3 + 2 * W) + 20 * B * T * D),
    transcendentals=int(2 * B * T * Z),
    bytes_accessed=int(itemsize * B * T * D * (5 + with_g_h) + 4 * B * n_t * Z * D * (1 + W)),
  )
  g_hb, g_he, g_a_row, p_af, p_enc, p_encb, p_dec, p_decb = pl.pallas_call(
    kernel,
    out_shape=tuple(o[0] for o in outs),
    grid=(B, n_t),
    in_specs=in_specs,
    out_specs=tuple(o[1] for o in outs),
    compiler_params=_compiler_params(config, platform),
    cost_estimate=cost,
    interpret=config.use_interpret(),
    name="superpose_step_bwd",
  )(*args)
  total = lambda p: jnp.sum(p, axis=(0, 1))
  return (
    g_hb,
    g_he,
    g_a_row,
    total(p_af),
    total(p_enc).astype(enc_DZ.dtype),
    total(p_encb)[0],
    total(p_dec).astype(dec_WZD.dtype),
    total(p_decb)[0],
  )


def _kernels(config: KernelConfig, dtype):
  """(forward, backward) Pallas kernels that run states of ``dtype`` under ``config``: Mosaic GPU's
  (``superpose_step_mgpu``) or those of this module (Mosaic TPU, Triton, interpret mode)."""
  if config.kernel_variant(dtype) == "mosaic":
    return mgpu.forward, mgpu.backward
  return _pallas_forward, _pallas_backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _fused_core(
  hb_BTD,
  he_BTD,
  a_row_BT1,
  a_feat_1D,
  enc_DZ,
  enc_bias_Z,
  dec_WZD,
  dec_bias_D,
  config: KernelConfig,
  return_h: bool,
):
  forward, _ = _kernels(config, hb_BTD.dtype)
  y_BTD, h_BTD = forward(
    hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D, config, return_h
  )
  return (y_BTD, h_BTD) if return_h else y_BTD


def _fused_fwd(
  hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D, config, return_h
):
  out = _fused_core(
    hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D, config, return_h
  )
  return out, (hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D)


def _fused_bwd(config, return_h, residuals, g):
  """The Pallas backward (``backward='pallas'``) or the plain-JAX recompute (``'recompute'``: the
  VJP of the reference math at the saved inputs)."""
  if config.backward == "pallas":
    g_y, g_h = g if return_h else (g, None)
    hb, he, a_row, a_feat, enc, enc_bias, dec, dec_bias = residuals
    _, backward = _kernels(config, hb.dtype)
    grads = backward(hb, he, a_row, a_feat, enc, enc_bias, dec, g_y, g_h, config)
    return tuple(gr.astype(r.dtype) for gr, r in zip(grads, residuals))

  def math_(hb, he, a_row, a_feat, enc, enc_bias, dec, dec_bias):
    y, h = reference_math(hb, he, a_row * a_feat, enc, enc_bias, dec, dec_bias)
    return (y, h) if return_h else y

  _, vjp = jax.vjp(math_, *residuals)
  return vjp(g)


_fused_core.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("config", "return_h"))
def fused(
  h_base_BTD,
  h_expert_BTD,
  alpha,
  enc_DZ,
  enc_bias_Z,
  dec,
  dec_bias_D,
  *,
  config: KernelConfig = KernelConfig(),
  return_h: bool = False,
):
  """Pallas superposition step, same signature and result as ``reference`` (differentiable)."""
  B, T, D, _, W = check_shapes(h_base_BTD, h_expert_BTD, alpha, enc_DZ, enc_bias_Z, dec, dec_bias_D)
  enc, enc_bias, dec_WZD, dec_bias = cast_params(
    h_base_BTD.dtype, enc_DZ, enc_bias_Z, dec, dec_bias_D
  )
  a_row_BT1, a_feat_1D = _alpha_factors(alpha, B, T, D)
  hb, he = h_base_BTD, h_expert_BTD
  if W == 1:  # no coupling along T: one long row of B·T positions fills the blocks best
    hb, he, a_row_BT1 = (
      hb.reshape(1, B * T, D),
      he.reshape(1, B * T, D),
      a_row_BT1.reshape(1, B * T, 1),
    )
  L = hb.shape[1]
  pad = 0
  if config.resolved_platform() == "gpu":
    # Pallas Triton neither masks nor pads a partial last block (its loads and stores would run past
    # the array), nor do the Mosaic GPU kernel's TMA copies of whole blocks, so the row axis is
    # zero-padded to whole blocks. Zero rows at the end are exact:
    # they never reach an earlier row through the causal conv, and in the backward their g_y, g_h
    # and h_expert − h_base are zero, so they add nothing to any reduction.
    block_t = _layout(L, W, hb.dtype, config)[0]
    pad = -L % block_t
    if pad:
      widths = ((0, 0), (0, pad), (0, 0))
      hb, he, a_row_BT1 = jnp.pad(hb, widths), jnp.pad(he, widths), jnp.pad(a_row_BT1, widths)
  out = _fused_core(
    hb, he, a_row_BT1, a_feat_1D, enc, enc_bias, dec_WZD, dec_bias, config, return_h
  )
  unpad = lambda x: x[:, :L].reshape(B, T, D)
  if return_h:
    return unpad(out[0]), unpad(out[1])
  return unpad(out)


def superpose_step(
  h_base_BTD,
  h_expert_BTD,
  alpha,
  enc_DZ,
  enc_bias_Z,
  dec,
  dec_bias_D,
  *,
  impl: Literal["reference", "pallas"] = "reference",
  config: KernelConfig | None = None,
  return_h: bool = False,
):
  """y_BTD (and h_BTD with ``return_h``) of one superposition step; ``impl`` picks the
  implementation."""
  if impl == "reference":
    return reference(
      h_base_BTD, h_expert_BTD, alpha, enc_DZ, enc_bias_Z, dec, dec_bias_D, return_h=return_h
    )
  if impl == "pallas":
    return fused(
      h_base_BTD,
      h_expert_BTD,
      alpha,
      enc_DZ,
      enc_bias_Z,
      dec,
      dec_bias_D,
      config=config or KernelConfig(),
      return_h=return_h,
    )
  raise ValueError(f"superpose_step: impl must be one of {IMPLS}, got {impl!r}")


def autoencoder_params(ae) -> dict[str, jax.Array]:
  """enc, enc_bias, dec, dec_bias of a ``superpose.blend.Autoencoder`` (causal conv or linear)."""
  if ae.decoder == "conv" and not ae.causal and ae.kernel_size > 1:
    raise ValueError(
      "superpose_step: only the causal conv decoder is supported (the Autoencoder has causal=False)"
    )
  return {
    "enc_DZ": ae.enc[...],
    "enc_bias_Z": ae.enc_bias[...],
    "dec": ae.dec[...],
    "dec_bias_D": ae.dec_bias[...],
  }
