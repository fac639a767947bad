"""The superposition step's GPU kernels on Pallas Mosaic GPU (Hopper warpgroup matmuls, ``wgmma``).

Same math and the same per-block work split as the Mosaic TPU / Triton kernels of
``superpose.kernels.superpose_step`` (read its module docstring first); written against
``jax.experimental.pallas.mosaic_gpu`` in lane semantics, because Pallas Triton is deprecated
upstream ("migrate to the Mosaic GPU backend", jax 0.12). One CTA (one warpgroup, 128 threads) per
(batch row, row block); inputs arrive by TMA into shared memory, every matmul is a ``wgmma`` with
both operands in shared memory (tiled (8, 128 B / itemsize), 128-byte swizzle) and an f32
accumulator, the elementwise math (blend, exact GELU by erf, its derivative) runs in registers in
the WGMMA layout, results leave by TMA.

The causal conv's row shifts are 0/1 selection matmuls, as in the Triton kernel: z of the block and
of the 64-row halo before it are written one under the other into shared memory, and the rows
shifted by s are S_s · [z_halo; z] with S_s[t, k] = 1 iff k = 64 + t − s — exact, since each output
row has one nonzero term and the operands are 16-bit. The backward's ``shift_up`` of g_y reads the
64-row halo after the block the same way. W − 1 ≤ 64.

Constraints (a ValueError names the failing one; ``impl='reference'`` runs anything):
  * bf16 or f16 states: ``wgmma`` takes f32 operands only as tf32, which would round the step's
    matmuls; f32 stays on the Triton kernel (``KernelConfig.gpu_backend``);
  * D and Z multiples of 64, at most 256 (one ``wgmma`` N extent); block_rows a multiple of 64;
  * enc, dec and the block's buffers fit the shared memory budget (``SMEM_BUDGET``): D·Z modest,
    as for the other kernels, which also hold enc and dec whole.
The row axis is zero-padded to whole blocks by the caller (``superpose_step.fused``, exact).

Tested on the CPU host: Mosaic GPU lowering for ('cuda',) of forward and backward, and the math in
Pallas' GPU interpreter (``plgpu.kernel(interpret=InterpretGPUParams())``, i.e.
``KernelConfig(interpret=True)``) against the TPU variant and the reference. Not compiled
by ptxas nor run on a GPU here.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from superpose.kernels._math import gelu_exact, gelu_exact_grad

try:
  from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover
  plgpu = None

HALO = 64  # rows of the halo blocks (one wgmma M extent)
SMEM_BUDGET = 224 * 1024  # bytes of shared memory the buffers may use (H100/H200: 227 KiB a CTA)
_f32 = jnp.float32


def available() -> bool:
  """Whether this jax has the Mosaic GPU Pallas API the kernels are written against (jax 0.12:
  ``plgpu.kernel`` with an ``interpret`` mode, lane semantics, ``wgmma``, ``plgpu.load(ref, *,
  layout)``; jax 0.10's ``load`` takes an index and it has no GPU interpreter)."""
  if plgpu is None:
    return False
  names = ("kernel", "wgmma", "ACC", "copy_gmem_to_smem", "LoweringSemantics", "Layout")
  if not all(hasattr(plgpu, n) for n in names + ("InterpretGPUParams", "load")):
    return False
  return "idx" not in inspect.signature(plgpu.load).parameters


def block_rows(T: int, requested: int) -> int:
  """Rows per CTA for a row axis of T: ``requested`` (a multiple of 64), or T rounded up to 64 if
  that is fewer (``superpose_step`` pads the row axis to a multiple of it)."""
  return min(requested, 64 * math.ceil(T / 64))


def _smem(shape, dtype):
  """A shared-memory buffer laid out for wgmma: tiles of 8 rows × 128 bytes, 128-byte swizzle."""
  itemsize = jnp.dtype(dtype).itemsize
  return plgpu.SMEM(
    shape,
    dtype,
    transforms=(plgpu.TilingTransform((8, 128 // itemsize)), plgpu.SwizzleTransform(128)),
  )


def _bytes(shapes_dtypes) -> int:
  return sum(math.prod(s) * jnp.dtype(d).itemsize for s, d in shapes_dtypes)


def check(D: int, Z: int, W: int, dtype, block_rows: int, backward: bool = True):
  """Raise a ValueError naming what this kernel cannot take."""
  bad = []
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    bad.append(f"dtype {jnp.dtype(dtype).name} (bf16/f16 only: wgmma reads f32 as tf32)")
  for name, v in (("D", D), ("Z", Z)):
    if v % 64 or v > 256:
      bad.append(f"{name} = {v} (a multiple of 64, ≤ 256)")
  if block_rows % 64:
    bad.append(f"block_rows = {block_rows} (a multiple of 64)")
  if W - 1 > HALO:
    bad.append(f"W = {W} (W − 1 ≤ {HALO})")
  if not bad:
    need = _bytes(
      (shape, dt) for shape, dt, _ in _scratch(block_rows, D, Z, W, dtype, backward).values()
    )
    if need > SMEM_BUDGET:
      bad.append(f"shared memory {need} bytes > {SMEM_BUDGET} (lower block_rows, D or Z)")
  if bad:
    raise ValueError(
      "superpose_step: the Mosaic GPU kernel cannot take "
      + "; ".join(bad)
      + " — use impl='reference' (or KernelConfig(gpu_backend='triton'))"
    )


def _scratch(R, D, Z, W, dtype, backward) -> dict[str, tuple[tuple[int, ...], object, bool]]:
  """name → (shape, dtype, tiled for wgmma) of every shared-memory buffer of one CTA: the one table
  the kernels allocate from and the budget check counts."""
  H, t, f = HALO, True, False
  bufs = {
    "hb": ((R, D), dtype, t),  # the halo's rows, then the block's
    "he": ((R, D), dtype, t),
    "x": ((R, D), dtype, t),  # h of the halo, then of the block
    "enc": ((D, Z), dtype, t),
    "dec": ((Z, D), dtype, t),  # dec[j], one j at a time
    "z": ((R, Z), dtype, t),  # z of the block, shifted
    "a_row": ((R,), _f32, f),
    "a_feat": ((D,), _f32, f),
    "enc_bias": ((Z,), _f32, f),
    "vec_d": ((D,), _f32, f),  # dec_bias in; g_dec_bias, g_a_feat out
  }
  if W > 1:
    bufs |= {
      "zcat": ((H + R, Z), dtype, t),  # [z of the halo before; z of the block]
      "sel": ((R, H + R), dtype, t),  # a 0/1 row-shift matrix
    }
  if backward:
    bufs |= {
      "gycat": ((R + (H if W > 1 else 0), D), dtype, t),  # [g_y of the block; of the halo after]
      "g_pre": ((R, Z), dtype, t),
      "stage": ((Z, D), _f32, t),  # g_dec[j] and g_encᵀ on their way out
      "vec_r": ((R,), _f32, f),  # g_a_row out
    }
    if W > 1:
      bufs["gys"] = ((R, D), dtype, t)  # g_y shifted up
  return bufs


def _allocate(bufs):
  """The run_scoped arguments of ``_scratch``'s table (+ 8 TMA barriers), in its order."""
  types = [
    _smem(shape, dt) if tiled else plgpu.SMEM(shape, dt) for shape, dt, tiled in bufs.values()
  ]
  return types + [plgpu.Barrier(num_barriers=8)]


def _layouts():
  L = plgpu.Layout.WGMMA
  return L, L.reduce(1), L.reduce(0)  # 2-D, per row (R,), per column (C,)


def _mm(a_ref, b_ref, shape):
  """a_ref @ b_ref (shared memory, 16-bit) as an f32 value of ``shape``."""

  def body(acc):
    plgpu.wgmma(acc, a_ref, b_ref)
    return acc[...]

  return pl.run_scoped(body, plgpu.ACC(shape, _f32))


def _accumulate(acc, a_ref, b_ref):
  """acc += a_ref @ b_ref, waited for (its operands may be overwritten next)."""
  plgpu.wgmma(acc, a_ref, b_ref)
  plgpu.wgmma_wait(0)


def _store(ref, value):
  ref[...] = value
  plgpu.commit_smem()


def _blend(hb_ref, he_ref, ar_ref, af, rows, D, dtype):
  """(a f32, h in dtype) of ``rows`` rows: a = a_row · a_feat, h = (1 − a)·hb + a·he in f32."""
  L, ROW, _ = _layouts()
  a_row = plgpu.load(ar_ref, layout=ROW)
  a = lax.broadcast_in_dim(a_row, (rows, D), [0]) * lax.broadcast_in_dim(af, (rows, D), [1])
  hb = plgpu.load(hb_ref, layout=L).astype(_f32)
  he = plgpu.load(he_ref, layout=L).astype(_f32)
  return a, a_row, ((1.0 - a) * hb + a * he).astype(dtype)


def _encode(h_ref, enc_ref, encb, rows, Z):
  """pre-activation (f32) of h (shared memory) through enc."""
  return _mm(h_ref, enc_ref, (rows, Z)) + lax.broadcast_in_dim(encb, (rows, Z), [1])


def _selection(sel_ref, R, K, offset, dtype):
  """Write S into ``sel_ref`` (R, K): S[t, k] = 1 iff k = t + offset."""
  L, _, _ = _layouts()
  t = plgpu.broadcasted_iota(jnp.int32, (R, K), 0, layout=L)
  k = plgpu.broadcasted_iota(jnp.int32, (R, K), 1, layout=L)
  _store(sel_ref, jnp.where(k == t + offset, 1.0, 0.0).astype(dtype))


def _copy_in(pairs, bar):
  """TMA copies global → shared memory, one barrier each, all waited for."""
  for k, (src, dst) in enumerate(pairs):
    plgpu.copy_gmem_to_smem(src, dst, bar.at[k])
  for k in range(len(pairs)):
    plgpu.barrier_wait(bar.at[k])


def _front(g, s, bar, *, R, D, Z, W, n_t, dtype):
  """What forward and backward both compute first, in one CTA: the parameters, then (W > 1) z of
  the HALO rows before the block into zcat[:HALO] (zero in a row's first block), then the block:
  hb, he, a_row in their buffers, h in s['x'], z in zcat[HALO:] (W > 1) or s['z'].

  Returns (b, i, a_feat (D,), a (R, D) f32, a_row (R,), pre (R, Z) f32)."""
  _, _, COL = _layouts()
  b, i = lax.axis_index("b"), lax.axis_index("t")
  _copy_in([(g["a_feat"], s["a_feat"]), (g["enc"], s["enc"]), (g["enc_bias"], s["enc_bias"])], bar)
  af = plgpu.load(s["a_feat"], layout=COL)
  encb = plgpu.load(s["enc_bias"], layout=COL)

  def blend_encode(first, n):  # rows first … first + n − 1 of batch row b
    rows, part = pl.ds(first, n), pl.ds(0, n)
    pairs = [(g[k].at[b, rows], s[k].at[part]) for k in ("hb", "he", "a_row")]
    _copy_in(pairs, bar)
    a, a_row, h = _blend(*(s[k].at[part] for k in ("hb", "he", "a_row")), af, n, D, dtype)
    _store(s["x"].at[part], h)
    return a, a_row, _encode(s["x"].at[part], s["enc"], encb, n, Z)

  if W > 1:
    if n_t > 1:
      pre = blend_encode(jnp.maximum(i * R - HALO, 0), HALO)[2]
      z_halo = jnp.where(i > 0, gelu_exact(pre), 0.0).astype(dtype)
    else:
      z_halo = jnp.zeros((HALO, Z), dtype)
    _store(s["zcat"].at[pl.ds(0, HALO)], z_halo)
  a, a_row, pre = blend_encode(i * R, R)
  z = gelu_exact(pre).astype(dtype)
  _store(s["zcat"].at[pl.ds(HALO, R)] if W > 1 else s["z"], z)
  return b, i, af, a, a_row, pre


def _shifted_z(s, shift, R, Z, dtype):
  """s['z'] = z_{t − shift} (rows of the halo before the block for t < shift), by S · zcat."""
  if "zcat" in s:
    _selection(s["sel"], R, HALO + R, HALO - shift, dtype)
    _store(s["z"], _mm(s["sel"], s["zcat"], (R, Z)).astype(dtype))
  return s["z"]


def _call(body, bufs, out_type, grid, interpret, *args):
  def entry(*refs):
    pl.run_scoped(lambda *sm: body(*refs, dict(zip(bufs, sm)), sm[-1]), *_allocate(bufs))

  return plgpu.kernel(
    entry,
    out_type=out_type,
    grid=grid,
    grid_names=("b", "t"),
    compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    interpret=plgpu.InterpretGPUParams() if interpret else None,  # Pallas' GPU interpreter
  )(*args)


_INPUTS = ("hb", "he", "a_row", "a_feat", "enc", "enc_bias", "dec")


def _inputs(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD):
  """The kernels' inputs: α factors and biases as f32 vectors."""
  f = lambda x: x.astype(_f32)
  return hb_BTD, he_BTD, f(a_row_BT1[..., 0]), f(a_feat_1D[0]), enc_DZ, f(enc_bias_Z), dec_WZD


def forward(
  hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, dec_bias_D, config, return_h
):
  """(y_BTD, h_BTD or None), as ``superpose_step._pallas_forward`` (same arguments; ``config`` a
  ``KernelConfig``); T a multiple of the row block (the caller pads)."""
  B, T, D = hb_BTD.shape
  Z, W, R, dtype = enc_DZ.shape[1], dec_WZD.shape[0], block_rows(T, config.block_rows), hb_BTD.dtype
  check(D, Z, W, dtype, R, backward=False)
  n_t = T // R
  _, _, COL = _layouts()

  def body(*refs_s_bar):
    *refs, s, bar = refs_s_bar
    g = dict(zip(_INPUTS + ("dec_bias", "y", "h"), refs))
    b, i, _, _, _, _ = _front(g, s, bar, R=R, D=D, Z=Z, W=W, n_t=n_t, dtype=dtype)
    rows = pl.ds(i * R, R)
    if return_h:
      plgpu.copy_smem_to_gmem(s["x"], g["h"].at[b, rows])
    _copy_in([(g["dec_bias"], s["vec_d"])], bar)

    def decode(acc):  # y_t = Σ_j z_{t−s} · dec[j], s = W − 1 − j
      for j in (W - 1, *range(W - 1)):  # the order of the other kernels (same f32 sums)
        _copy_in([(g["dec"].at[j], s["dec"])], bar)
        _accumulate(acc, _shifted_z(s, W - 1 - j, R, Z, dtype), s["dec"])
      return acc[...]

    y = pl.run_scoped(decode, plgpu.ACC((R, D), _f32))
    y = y + lax.broadcast_in_dim(plgpu.load(s["vec_d"], layout=COL), (R, D), [1])
    _store(s["he"], y.astype(dtype))  # he is not needed any more: y leaves from its buffer
    plgpu.copy_smem_to_gmem(s["he"], g["y"].at[b, rows])
    plgpu.wait_smem_to_gmem(0)

  out = jax.ShapeDtypeStruct((B, T, D), dtype)
  args = _inputs(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD)
  bufs = _scratch(R, D, Z, W, dtype, backward=False)
  out_type = (out, out) if return_h else (out,)
  outs = _call(
    body, bufs, out_type, (B, n_t), config.use_interpret(), *args, dec_bias_D.astype(_f32)
  )
  return (outs[0], outs[1]) if return_h else (outs[0], None)


def backward(
  hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD, g_y_BTD, g_h_BTD, config
):
  """Cotangents of (hb, he, a_row, a_feat, enc, enc_bias, dec, dec_bias), as
  ``superpose_step._pallas_backward`` returns them (same arguments); the parameter cotangents are
  per-block partial sums (f32) reduced here. T a multiple of the row block (the caller pads with
  zeros)."""
  B, T, D = hb_BTD.shape
  Z, W, R, dtype = enc_DZ.shape[1], dec_WZD.shape[0], block_rows(T, config.block_rows), hb_BTD.dtype
  check(D, Z, W, dtype, R, backward=True)
  n_t, H = T // R, HALO
  with_g_h = g_h_BTD is not None
  L = _layouts()[0]
  outputs = ("g_hb", "g_he", "g_a_row", "g_a_feat", "g_enc", "g_enc_bias", "g_dec", "g_dec_bias")

  def body(*refs_s_bar):
    *refs, s, bar = refs_s_bar
    g = dict(zip(_INPUTS + ("g_y",) + ("g_h",) * with_g_h + outputs, refs))
    b, i, af, a, a_row, pre = _front(g, s, bar, R=R, D=D, Z=Z, W=W, n_t=n_t, dtype=dtype)
    rows, gycat = pl.ds(i * R, R), s["gycat"]
    g_y_ref = gycat.at[pl.ds(0, R)]
    _copy_in([(g["g_y"].at[b, rows], g_y_ref)], bar)

    def put(value, ref, dst):  # value → shared memory → global memory
      _store(ref, value)
      plgpu.copy_smem_to_gmem(ref, dst)
      plgpu.wait_smem_to_gmem(0)

    put(
      jnp.sum(plgpu.load(g_y_ref, layout=L).astype(_f32), axis=0),
      s["vec_d"],
      g["g_dec_bias"].at[b, i],
    )
    if W > 1:  # g_y of the halo after the block (zero past the last block)
      after = pl.ds(jnp.minimum((i + 1) * R, T - H), H)
      _copy_in([(g["g_y"].at[b, after], gycat.at[pl.ds(R, H)])], bar)
      g_after = plgpu.load(gycat.at[pl.ds(R, H)], layout=L)
      _store(gycat.at[pl.ds(R, H)], jnp.where(i < n_t - 1, g_after, jnp.zeros_like(g_after)))

    def decoder_grads(acc_gz):  # g_dec[j] = Σ_t z_{t−s}ᵀ g_y_t, g_z_t = Σ_j g_y_{t+s} dec[j]ᵀ
      for j in (W - 1, *range(W - 1)):  # the order of the other kernels (same f32 sums)
        shift = W - 1 - j
        _copy_in([(g["dec"].at[j], s["dec"])], bar)
        z_ref = _shifted_z(s, shift, R, Z, dtype)
        put(_mm(z_ref.transpose((1, 0)), g_y_ref, (Z, D)), s["stage"], g["g_dec"].at[b, i, j])
        g_y_up = g_y_ref
        if shift:
          _selection(s["sel"], R, H + R, shift, dtype)
          _store(s["gys"], _mm(s["sel"], gycat, (R, D)).astype(dtype))
          g_y_up = s["gys"]
        _accumulate(acc_gz, g_y_up, s["dec"].transpose((1, 0)))
      return acc_gz[...]

    g_z = pl.run_scoped(decoder_grads, plgpu.ACC((R, Z), _f32))
    g_pre = g_z.astype(dtype).astype(_f32) * gelu_exact_grad(pre)
    put(jnp.sum(g_pre, axis=0), s["enc_bias"], g["g_enc_bias"].at[b, i])
    _store(s["g_pre"], g_pre.astype(dtype))
    g_enc_t = _mm(s["g_pre"].transpose((1, 0)), s["x"], (Z, D))
    put(g_enc_t, s["stage"], g["g_enc"].at[b, i])
    g_h = _mm(s["g_pre"], s["enc"].transpose((1, 0)), (R, D))
    if with_g_h:
      _copy_in([(g["g_h"].at[b, rows], s["x"])], bar)
      g_h = g_h + plgpu.load(s["x"], layout=L).astype(_f32)
    hb = plgpu.load(s["hb"], layout=L).astype(_f32)
    he = plgpu.load(s["he"], layout=L).astype(_f32)
    g_a = g_h * (he - hb)
    g_a_row = jnp.sum(g_a * lax.broadcast_in_dim(af, (R, D), [1]), axis=1)
    put(g_a_row, s["vec_r"], g["g_a_row"].at[b, rows])
    g_a_feat = jnp.sum(g_a * lax.broadcast_in_dim(a_row, (R, D), [0]), axis=0)
    put(g_a_feat, s["vec_d"], g["g_a_feat"].at[b, i])
    put(((1.0 - a) * g_h).astype(dtype), s["hb"], g["g_hb"].at[b, rows])
    put((a * g_h).astype(dtype), s["he"], g["g_he"].at[b, rows])

  sds = jax.ShapeDtypeStruct
  out_type = (
    sds((B, T, D), dtype),
    sds((B, T, D), dtype),
    sds((B, T), _f32),
    sds((B, n_t, D), _f32),
    sds((B, n_t, Z, D), _f32),  # g_encᵀ
    sds((B, n_t, Z), _f32),
    sds((B, n_t, W, Z, D), _f32),
    sds((B, n_t, D), _f32),
  )
  args = _inputs(hb_BTD, he_BTD, a_row_BT1, a_feat_1D, enc_DZ, enc_bias_Z, dec_WZD) + (g_y_BTD,)
  args += (g_h_BTD,) if with_g_h else ()
  bufs = _scratch(R, D, Z, W, dtype, backward=True)
  g_hb, g_he, g_a_row, p_af, p_enc, p_encb, p_dec, p_decb = _call(
    body, bufs, out_type, (B, n_t), config.use_interpret(), *args
  )
  total = lambda p: jnp.sum(p, axis=(0, 1))
  return (
    g_hb,
    g_he,
    g_a_row[..., None],
    total(p_af)[None, :],
    total(p_enc).T.astype(enc_DZ.dtype),
    total(p_encb),
    total(p_dec).astype(dec_WZD.dtype),
    total(p_decb),
  )
