"""The fused superposition-step kernel (Pallas, interpret mode on CPU), forward and Pallas backward,
against its plain-JAX reference (values and ``jax.grad``) and against
``superpose.blend.Autoencoder`` applied to the blended state; the GPU (Triton) variant's math in
interpret mode; the Mosaic GPU variant's math in Pallas' GPU interpreter; TPU (Mosaic), CUDA
(Triton) and CUDA (Mosaic GPU) lowering of forward and backward on the CPU host."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

try:
  from jax.experimental.pallas import triton as pltriton
except ImportError:  # a jax without the (deprecated) Pallas Triton backend
  pltriton = None

from superpose.blend import Autoencoder
from superpose.kernels import KernelConfig, autoencoder_params, fused, reference, superpose_step
from superpose.kernels import _math as kernel_math
from superpose.kernels import superpose_step_mgpu as mgpu

B, T, D, Z = (
  2,
  37,
  20,
  12,
)  # T spans 5 blocks of 8 rows (the last one partial); D, Z not multiples of 8
CFG = KernelConfig(block_rows=8)
ARGNUMS = tuple(range(7))  # h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias


def _normal(rng, shape, scale=1.0, dtype=jnp.float32):
  return jnp.asarray(scale * rng.normal(size=shape), dtype)


def _args(
  decoder="conv", alpha="scalar", kernel_size=3, dtype=jnp.float32, t=T, seed=0, b=B, d=D, k=Z
):
  """h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias at the Autoencoder's initial scale."""
  B, D, Z = b, d, k
  rng = np.random.default_rng(seed)
  a = {
    "scalar": jnp.float32(0.3),
    "feature": jax.nn.sigmoid(_normal(rng, (D,))),
    "position": jax.nn.sigmoid(_normal(rng, (B, t))),
  }[alpha]
  dec_shape = (Z, D) if decoder == "linear" else (kernel_size, Z, D)
  fan = Z if decoder == "linear" else Z * kernel_size
  return (
    _normal(rng, (B, t, D), dtype=dtype),
    _normal(rng, (B, t, D), dtype=dtype),
    a,
    _normal(rng, (D, Z), D**-0.5),
    _normal(rng, (Z,), D**-0.5),
    _normal(rng, dec_shape, fan**-0.5),
    _normal(rng, (D,), fan**-0.5),
  )


def _close(actual, expected, tol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(
    actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max()))
  )


def _grads(fn, args, seed=1, return_h=True):
  """Gradients of Σ y·c + Σ h·c' (fixed random cotangents; without ``return_h``, fn returns y only
  and the loss is Σ y·c) with respect to every argument."""
  rng = np.random.default_rng(seed)
  c_y, c_h = _normal(rng, args[0].shape), _normal(rng, args[0].shape)

  def loss(*a):
    y, h = fn(*a) if return_h else (fn(*a), jnp.zeros_like(c_h))
    return jnp.sum(y.astype(jnp.float32) * c_y) + jnp.sum(h.astype(jnp.float32) * c_h)

  return jax.grad(loss, argnums=ARGNUMS)(*args)


def _fused(*a, config=CFG):
  return fused(*a, config=config, return_h=True)


def _reference(*a):
  return reference(*a, return_h=True)


@pytest.mark.parametrize(
  "decoder,alpha",
  [("conv", "scalar"), ("conv", "feature"), ("linear", "feature"), ("conv", "position")],
)
def test_f32_forward_and_grads_match_reference(decoder, alpha):
  args = _args(decoder, alpha)
  (y, h), (y_ref, h_ref) = _fused(*args), _reference(*args)
  assert y.shape == (B, T, D) and y.dtype == jnp.float32
  _close(y, y_ref, 1e-5)
  _close(h, h_ref, 1e-6)
  for g, g_ref in zip(_grads(_fused, args), _grads(_reference, args)):
    _close(g, g_ref, 1e-5)


def test_bf16_forward_and_grads_match_reference():
  args = _args("conv", "feature", dtype=jnp.bfloat16)
  (y, h), (y_ref, h_ref) = _fused(*args), _reference(*args)
  assert y.dtype == h.dtype == jnp.bfloat16
  _close(h, h_ref, 0)  # the blend is elementwise: bit-equal
  _close(y, y_ref, 2e-2)  # bf16 z rounding and accumulation order
  for g, g_ref in zip(_grads(_fused, args), _grads(_reference, args)):
    _close(g, g_ref, 2e-2)


@pytest.mark.parametrize("decoder,kernel_size", [("conv", 4), ("linear", 1)])
def test_matches_autoencoder_on_blended_state(decoder, kernel_size):
  ae = Autoencoder(D, Z, decoder=decoder, kernel_size=kernel_size, rngs=nnx.Rngs(0))
  h_base, h_expert, alpha = _args(decoder, "feature", kernel_size)[:3]
  h = ((1 - alpha) * h_base + alpha * h_expert).astype(h_base.dtype)
  y = fused(h_base, h_expert, alpha, config=KernelConfig(block_rows=16), **autoencoder_params(ae))
  _close(y, ae(h), 1e-5)


def test_halo_of_several_blocks_and_block_sizes():
  """W − 1 = 8 previous rows (a whole halo block), a 16-row block with an 8-row halo, and one
  block."""
  args = _args("conv", "scalar", kernel_size=9, t=50)
  y_ref = reference(*args)
  for config in (
    KernelConfig(block_rows=8),
    KernelConfig(block_rows=16),
    KernelConfig(block_rows=128),
  ):
    _close(fused(*args, config=config), y_ref, 1e-5)


def test_causal_output_ignores_future_inputs():
  args = _args("conv", "scalar")
  t = 17  # mid-block: rows 16..23 form one block
  h_expert = args[1].at[:, t + 1 :].set(0.0)
  y = np.asarray(fused(*args, config=CFG))
  y_changed = np.asarray(fused(args[0], h_expert, *args[2:], config=CFG))
  np.testing.assert_array_equal(y[:, : t + 1], y_changed[:, : t + 1])
  assert np.abs(y[:, t + 1 :] - y_changed[:, t + 1 :]).min() > 0


def test_dispatch_and_config():
  args = _args("linear", "position")
  np.testing.assert_array_equal(superpose_step(*args, impl="reference"), reference(*args))
  _close(superpose_step(*args, impl="pallas", config=CFG), reference(*args), 1e-5)
  assert KernelConfig().use_interpret() == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="impl"):
    superpose_step(*args, impl="triton")
  with pytest.raises(ValueError, match="multiple of 8"):
    KernelConfig(block_rows=12)


def test_bad_shapes_raise():
  h_base, h_expert, _, enc, enc_bias, dec, dec_bias = _args("conv", "scalar")
  with pytest.raises(ValueError, match="alpha"):
    fused(h_base, h_expert, jnp.ones((Z,)), enc, enc_bias, dec, dec_bias)
  with pytest.raises(ValueError, match="dec must be"):
    reference(h_base, h_expert, 0.5, enc, enc_bias, dec[:, :, :-1], dec_bias)
  with pytest.raises(ValueError, match="h_base and h_expert"):
    fused(h_base, h_expert[:, :-1], 0.5, enc, enc_bias, dec, dec_bias)
  wide = jnp.zeros((10, Z, D))  # W − 1 = 9 rows of halo > an 8-row block
  with pytest.raises(ValueError, match="block_rows"):
    fused(h_base, h_expert, 0.5, enc, enc_bias, wide, dec_bias, config=CFG)


# Backward -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "decoder,alpha,kernel_size,t,block_rows,return_h",
  [
    (
      "conv",
      "position",
      4,
      50,
      16,
      False,
    ),  # 8-row halos inside 16-row blocks: the halo after is not the next block
    ("conv", "scalar", 9, 50, 8, True),  # W − 1 = 8: the halo is a whole block
    ("linear", "position", 1, 37, 16, False),  # B·T = 74 rows: a partial last block
    ("conv", "feature", 3, 5, 8, True),  # one partial block, no halo
  ],
)
def test_pallas_backward_matches_reference_grads(
  decoder, alpha, kernel_size, t, block_rows, return_h
):
  args = _args(decoder, alpha, kernel_size, t=t, seed=2)
  config = KernelConfig(block_rows=block_rows)
  fn = lambda *a: fused(*a, config=config, return_h=return_h)
  ref = lambda *a: reference(*a, return_h=return_h)
  for g, g_ref in zip(_grads(fn, args, return_h=return_h), _grads(ref, args, return_h=return_h)):
    _close(g, g_ref, 1e-5)


def test_pallas_and_recompute_backwards_agree():
  args = _args("conv", "position", 3, dtype=jnp.bfloat16)
  grads = {
    bwd: _grads(
      lambda *a: fused(*a, config=KernelConfig(block_rows=16, backward=bwd), return_h=True), args
    )
    for bwd in ("pallas", "recompute")
  }
  for g_p, g_r in zip(grads["pallas"], grads["recompute"]):
    assert g_p.dtype == g_r.dtype
    _close(g_p, g_r, 2e-2)


def test_backward_ignores_padding_rows_and_future_cotangents():
  """The cotangent of y at row t reaches only inputs at rows ≤ t; rows past T contribute nothing."""
  args = _args("conv", "scalar", 4, t=21)
  c = jnp.zeros((B, 21, D)).at[:, 10].set(1.0)
  g = jax.grad(lambda hb: jnp.sum(fused(hb, *args[1:], config=CFG) * c))(args[0])
  assert np.all(np.isfinite(np.asarray(g)))
  assert np.abs(np.asarray(g[:, 11:])).max() == 0 and np.abs(np.asarray(g[:, 7:11])).min() > 0


# GPU (Triton) variant -----------------------------------------------------------------------------

GPU_D, GPU_K = 32, 16  # powers of two ≥ 16: Triton's constraint


def test_rational_erf_matches_lax_erf():
  x = jnp.linspace(-6.0, 6.0, 4001, dtype=jnp.float32)
  np.testing.assert_allclose(kernel_math.erf_rational(x), jax.lax.erf(x), atol=5e-7)


@pytest.mark.parametrize(
  "decoder,alpha,kernel_size", [("conv", "position", 3), ("linear", "feature", 1)]
)
def test_gpu_variant_in_interpret_mode(decoder, alpha, kernel_size):
  """The GPU variant's math (rational erf, selection-matmul row shifts, 16-row halos, zero padding
  of the row axis to whole blocks) in interpret mode on the CPU, forward and gradients."""
  args = _args(decoder, alpha, kernel_size, t=37, d=GPU_D, k=GPU_K, seed=3)
  config = KernelConfig(block_rows=16, platform="gpu", interpret=True)
  fn = lambda *a: fused(*a, config=config, return_h=True)
  (y, h), (y_ref, h_ref) = fn(*args), _reference(*args)
  _close(y, y_ref, 1e-5)
  _close(h, h_ref, 1e-6)
  for g, g_ref in zip(_grads(fn, args), _grads(_reference, args)):
    _close(g, g_ref, 1e-5)


def test_gpu_constraints_raise():
  args = _args("conv", "scalar")  # D = 20, Z = 12
  with pytest.raises(ValueError, match="powers of two"):
    fused(*args, config=KernelConfig(block_rows=16, platform="gpu", interpret=True))
  with pytest.raises(ValueError, match="block_rows = 24"):
    fused(
      *_args("conv", "scalar", d=GPU_D, k=GPU_K), config=KernelConfig(block_rows=24, platform="gpu")
    )
  with pytest.raises(ValueError, match="platform"):
    KernelConfig(platform="cuda")
  with pytest.raises(ValueError, match="backward"):
    KernelConfig(backward="jvp")


# Lowering on the CPU host -------------------------------------------------------------------------


def _lowering_args(dtype, W):
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  dec = s(W, 128, 256) if W > 1 else s(128, 256)
  return (
    s(2, 256, 256),
    s(2, 256, 256),
    jax.ShapeDtypeStruct((256,), jnp.float32),
    s(256, 128),
    s(128),
    dec,
    s(256),
  )


def _lower_fwd_bwd(config, dtype, W, return_h, platform):
  def loss(*b):
    out = fused(*b, config=config, return_h=return_h)
    return sum(o.astype(jnp.float32).sum() for o in (out if return_h else (out,)))

  f = lambda *a: jax.value_and_grad(loss, argnums=ARGNUMS)(*a)
  return jax.jit(f).trace(*_lowering_args(dtype, W)).lower(lowering_platforms=(platform,)).as_text()


def _host_can_lower(platform, compiler_params):
  """Whether this jax lowers a trivial Pallas kernel for ``platform`` on this host (else: skip)."""

  def k(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0

  f = lambda x: pl.pallas_call(
    k, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), compiler_params=compiler_params
  )(x)
  try:
    jax.jit(f).trace(jax.ShapeDtypeStruct((16, 128), jnp.float32)).lower(
      lowering_platforms=(platform,)
    )
  except Exception as e:  # noqa: BLE001
    return f"{type(e).__name__}: {e}"
  return None


@pytest.mark.parametrize(
  "dtype,W,return_h", [(jnp.float32, 3, False), (jnp.bfloat16, 4, True), (jnp.float32, 1, True)]
)
def test_lowers_for_tpu_on_cpu_host(dtype, W, return_h):
  """Mosaic lowering of forward and Pallas backward (compiled by libtpu on a TPU, not exercised
  here)."""
  why = _host_can_lower("tpu", pltpu.CompilerParams())
  if why:
    pytest.skip(f"this jax cannot lower Pallas for TPU on this host: {why}")
  text = _lower_fwd_bwd(KernelConfig(block_rows=128, platform="tpu"), dtype, W, return_h, "tpu")
  assert text.count("tpu_custom_call") == 2  # the forward and the backward kernel
  assert "superpose_step_bwd" in text


@pytest.mark.parametrize(
  "dtype,W,return_h", [(jnp.float32, 3, False), (jnp.bfloat16, 4, True), (jnp.float32, 1, True)]
)
def test_lowers_for_cuda_triton_on_cpu_host(dtype, W, return_h):
  """Pallas Triton lowering of forward and backward for ('cuda',) (Triton IR; ptxas runs on a GPU
  only)."""
  if pltriton is None:
    pytest.skip("jax.experimental.pallas.triton is not importable in this jax")
  why = _host_can_lower("cuda", pltriton.CompilerParams(num_warps=4, num_stages=2))
  if why:
    pytest.skip(f"this jax cannot lower Pallas Triton for CUDA on this host: {why}")
  config = KernelConfig(block_rows=64, platform="gpu", gpu_backend="triton")
  text = _lower_fwd_bwd(config, dtype, W, return_h, "cuda")
  assert text.count("__gpu$xla.gpu.triton") == 2  # the forward and the backward kernel


# Mosaic GPU ---------------------------------------------------------------------------------------

needs_mosaic_gpu = pytest.mark.skipif(
  not mgpu.available(), reason=f"jax {jax.__version__} lacks the Mosaic GPU API (jax ≥ 0.12)"
)
MGPU_D, MGPU_Z = 64, 128  # multiples of 64


@needs_mosaic_gpu
@pytest.mark.parametrize(
  "decoder,alpha,kernel_size,t", [("conv", "position", 3, 150), ("linear", "feature", 1, 45)]
)
def test_mosaic_gpu_variant_in_interpret_mode(decoder, alpha, kernel_size, t):
  """The Mosaic GPU kernels (wgmma matmuls, selection-matmul row shifts, 64-row halos before and
  after a block, zero padding to whole blocks: t = 150 is 3 blocks of 64, the last partial) in
  Pallas' GPU interpreter, forward and gradients: equal to the TPU variant's math (same cast points)
  up to f32 summation order, and to the reference within bf16 rounding."""
  args = _args(decoder, alpha, kernel_size, dtype=jnp.bfloat16, t=t, d=MGPU_D, k=MGPU_Z, seed=5)
  config = KernelConfig(block_rows=64, platform="gpu", interpret=True)
  assert config.kernel_variant(jnp.bfloat16) == "mosaic"
  same_math = KernelConfig(block_rows=64, platform="tpu", interpret=True)
  fn = lambda *a: fused(*a, config=config, return_h=True)
  tpu = lambda *a: fused(*a, config=same_math, return_h=True)
  (y, h), (y_tpu, _), (y_ref, h_ref) = fn(*args), tpu(*args), _reference(*args)
  assert y.dtype == h.dtype == jnp.bfloat16
  _close(h, h_ref, 0)  # the blend is elementwise: bit-equal
  _close(y, y_tpu, 4e-3)  # ≤ one bf16 ulp: a rounding flipped by the f32 summation order
  _close(y, y_ref, 2e-2)
  grads = _grads(fn, args)
  for g, g_tpu, g_ref in zip(grads, _grads(tpu, args), _grads(_reference, args)):
    _close(g, g_tpu, 4e-3)
    _close(g, g_ref, 2e-2)


@needs_mosaic_gpu
def test_mosaic_gpu_is_the_default_for_16_bit_states_and_says_what_it_cannot_take():
  gpu = KernelConfig(block_rows=64, platform="gpu")
  assert gpu.kernel_variant(jnp.bfloat16) == gpu.kernel_variant(jnp.float16) == "mosaic"
  assert gpu.kernel_variant(jnp.float32) == "triton"  # wgmma would read f32 as tf32
  assert KernelConfig(platform="tpu").kernel_variant(jnp.bfloat16) == "tpu"
  forced = KernelConfig(block_rows=64, platform="gpu", gpu_backend="mosaic", interpret=True)
  with pytest.raises(ValueError, match="tf32"):
    fused(*_args("conv", "scalar", t=64, d=MGPU_D, k=MGPU_Z), config=forced)
  with pytest.raises(ValueError, match="D = 20"):
    fused(*_args("conv", "scalar", dtype=jnp.bfloat16), config=forced)
  with pytest.raises(ValueError, match="block_rows = 72"):
    args = _args("conv", "scalar", dtype=jnp.bfloat16, t=256, d=MGPU_D, k=MGPU_Z)
    fused(*args, config=KernelConfig(block_rows=72, platform="gpu", interpret=True))
  with pytest.raises(ValueError, match="shared memory"):
    args = _args("conv", "scalar", dtype=jnp.bfloat16, t=256, d=256, k=256, kernel_size=4)
    fused(*args, config=KernelConfig(block_rows=128, platform="gpu", interpret=True))
  with pytest.raises(ValueError, match="gpu_backend"):
    KernelConfig(gpu_backend="cuda")


@needs_mosaic_gpu
@pytest.mark.parametrize("W,return_h", [(4, True), (1, False)])
def test_lowers_for_cuda_mosaic_gpu_on_cpu_host(W, return_h):
  """The default GPU path for bf16 states lowers forward and backward to two Mosaic GPU kernels for
  ('cuda',) on the CPU host (ptxas and the GPU run happen on a GPU only), with no deprecation
  warning (Pallas Triton warns when it lowers)."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  dec = s(W, 64, 128) if W > 1 else s(64, 128)  # D = 128, Z = 64: within the shared memory
  alpha = jax.ShapeDtypeStruct((2, 256), jnp.float32)
  args = (s(2, 256, 128), s(2, 256, 128), alpha, s(128, 64), s(64), dec, s(128))

  def loss(*b):
    out = fused(*b, config=KernelConfig(block_rows=64, platform="gpu"), return_h=return_h)
    return sum(o.astype(jnp.float32).sum() for o in (out if return_h else (out,)))

  f = lambda *a: jax.value_and_grad(loss, argnums=ARGNUMS)(*a)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("stablehlo.custom_call @mosaic_gpu") == 2  # the forward and the backward
  assert "triton" not in text
  assert not [w for w in caught if "deprecat" in str(w.message).lower()]
