"""The fused superposition-step kernel (Pallas, interpret mode on CPU) against its plain-JAX reference
and against ``superpose.blend.Autoencoder`` applied to the blended state; TPU lowering on the CPU host."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose.blend import Autoencoder
from superpose.kernels import KernelConfig, autoencoder_params, fused, reference, superpose_step

B, T, D, K = 2, 37, 20, 12     # T spans 5 blocks of 8 rows (the last one partial); D, K not multiples of 8
CFG = KernelConfig(block_rows=8)
ARGNUMS = tuple(range(7))      # h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias


def _normal(rng, shape, scale=1.0, dtype=jnp.float32):
  return jnp.asarray(scale * rng.normal(size=shape), dtype)


def _args(decoder="conv", alpha="scalar", kernel_size=3, dtype=jnp.float32, t=T, seed=0):
  """h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias at the Autoencoder's initial scale."""
  rng = np.random.default_rng(seed)
  a = {"scalar": jnp.float32(0.3),
       "feature": jax.nn.sigmoid(_normal(rng, (D,))),
       "position": jax.nn.sigmoid(_normal(rng, (B, t)))}[alpha]
  dec_shape = (K, D) if decoder == "linear" else (kernel_size, K, D)
  fan = K if decoder == "linear" else K * kernel_size
  return (_normal(rng, (B, t, D), dtype=dtype), _normal(rng, (B, t, D), dtype=dtype), a,
          _normal(rng, (D, K), D ** -0.5), _normal(rng, (K,), D ** -0.5),
          _normal(rng, dec_shape, fan ** -0.5), _normal(rng, (D,), fan ** -0.5))


def _close(actual, expected, tol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


def _grads(fn, args, seed=1):
  """Gradients of Σ y·c + Σ h·c' (a fixed random cotangent) with respect to every argument."""
  rng = np.random.default_rng(seed)
  c_y, c_h = _normal(rng, args[0].shape), _normal(rng, args[0].shape)

  def loss(*a):
    y, h = fn(*a)
    return jnp.sum(y.astype(jnp.float32) * c_y) + jnp.sum(h.astype(jnp.float32) * c_h)
  return jax.grad(loss, argnums=ARGNUMS)(*args)


def _fused(*a, config=CFG):
  return fused(*a, config=config, return_h=True)


def _reference(*a):
  return reference(*a, return_h=True)


@pytest.mark.parametrize("decoder,alpha", [("conv", "scalar"), ("conv", "feature"), ("linear", "feature"),
                                           ("conv", "position")])
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
  _close(h, h_ref, 0)                # the blend is elementwise: bit-equal
  _close(y, y_ref, 2e-2)             # bf16 z rounding and accumulation order
  for g, g_ref in zip(_grads(_fused, args), _grads(_reference, args)):
    _close(g, g_ref, 2e-2)


@pytest.mark.parametrize("decoder,kernel_size", [("conv", 4), ("linear", 1)])
def test_matches_autoencoder_on_blended_state(decoder, kernel_size):
  ae = Autoencoder(D, K, decoder=decoder, kernel_size=kernel_size, rngs=nnx.Rngs(0))
  h_base, h_expert, alpha = _args(decoder, "feature", kernel_size)[:3]
  h = ((1 - alpha) * h_base + alpha * h_expert).astype(h_base.dtype)
  y = fused(h_base, h_expert, alpha, config=KernelConfig(block_rows=16), **autoencoder_params(ae))
  _close(y, ae(h), 1e-5)


def test_halo_of_several_blocks_and_block_sizes():
  """W − 1 = 8 previous rows (a whole halo block), a 16-row block with an 8-row halo, and one block."""
  args = _args("conv", "scalar", kernel_size=9, t=50)
  y_ref = reference(*args)
  for config in (KernelConfig(block_rows=8), KernelConfig(block_rows=16), KernelConfig(block_rows=128)):
    _close(fused(*args, config=config), y_ref, 1e-5)


def test_causal_output_ignores_future_inputs():
  args = _args("conv", "scalar")
  t = 17                              # mid-block: rows 16..23 form one block
  h_expert = args[1].at[:, t + 1:].set(0.0)
  y = np.asarray(fused(*args, config=CFG))
  y_changed = np.asarray(fused(args[0], h_expert, *args[2:], config=CFG))
  np.testing.assert_array_equal(y[:, :t + 1], y_changed[:, :t + 1])
  assert np.abs(y[:, t + 1:] - y_changed[:, t + 1:]).min() > 0


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
    fused(h_base, h_expert, jnp.ones((K,)), enc, enc_bias, dec, dec_bias)
  with pytest.raises(ValueError, match="dec must be"):
    reference(h_base, h_expert, 0.5, enc, enc_bias, dec[:, :, :-1], dec_bias)
  with pytest.raises(ValueError, match="h_base and h_expert"):
    fused(h_base, h_expert[:, :-1], 0.5, enc, enc_bias, dec, dec_bias)
  wide = jnp.zeros((10, K, D))        # W − 1 = 9 rows of halo > an 8-row block
  with pytest.raises(ValueError, match="block_rows"):
    fused(h_base, h_expert, 0.5, enc, enc_bias, wide, dec_bias, config=CFG)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_for_tpu_on_cpu_host(dtype):
  """Mosaic lowering only (the module is compiled by libtpu on a TPU, which this does not exercise)."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  args = (s(2, 256, 256), s(2, 256, 256), jax.ShapeDtypeStruct((256,), jnp.float32), s(256, 128), s(128),
          s(3, 128, 256), s(256))
  config = KernelConfig(block_rows=128, interpret=False)
  f = lambda *a: jax.value_and_grad(lambda *b: fused(*b, config=config).astype(jnp.float32).sum(),
                                    argnums=ARGNUMS)(*a)
  try:
    lowered = jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",))
  except Exception as e:   # noqa: BLE001 - a jax that cannot lower Mosaic on this host
    pytest.skip(f"TPU lowering unavailable on this host: {type(e).__name__}: {e}")
  assert "tpu_custom_call" in lowered.as_text()
