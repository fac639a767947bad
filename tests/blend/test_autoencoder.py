"""The autoencoder of p1 §3.3: a numpy reference, causality, the paper's parameter count, sharding
names."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from superpose.blend import Autoencoder, autoencoder
from superpose.nn import sharding


def _numpy_reference(ae, h_BTD):
  """Encoder + exact GELU + (zero-padded 1-D cross-correlation over T | linear), in float64."""
  enc, enc_bias = np.asarray(ae.enc[...], np.float64), np.asarray(ae.enc_bias[...], np.float64)
  dec, dec_bias = np.asarray(ae.dec[...], np.float64), np.asarray(ae.dec_bias[...], np.float64)
  z = np.asarray(h_BTD, np.float64) @ enc + enc_bias
  z = 0.5 * z * (1 + erf(z / np.sqrt(2)))
  if ae.decoder == "linear":
    return z @ dec + dec_bias
  k, t = dec.shape[0], z.shape[1]
  left, right = (k - 1, 0) if ae.causal else ((k - 1) // 2, (k - 1) // 2)
  z = np.pad(z, ((0, 0), (left, right), (0, 0)))
  return sum(z[:, j : j + t] @ dec[j] for j in range(k)) + dec_bias


def _inputs(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("causal", [True, False])
def test_conv_matches_numpy_reference(causal):
  ae = Autoencoder(12, 8, causal=causal, rngs=nnx.Rngs(0))
  h = _inputs((2, 7, 12))
  np.testing.assert_allclose(ae(h), _numpy_reference(ae, h), atol=1e-5)


def test_linear_decoder_shape_and_reference():
  ae = Autoencoder(12, 8, decoder="linear", rngs=nnx.Rngs(1))
  assert ae.dec[...].shape == (8, 12)
  h = _inputs((3, 5, 12))
  out = ae(h)
  assert out.shape == (3, 5, 12) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _numpy_reference(ae, h), atol=1e-5)


def test_causal_output_ignores_future_inputs():
  ae = Autoencoder(12, 8, rngs=nnx.Rngs(2))
  h = _inputs((2, 9, 12))
  t = 4
  changed = h.at[:, t + 1 :].set(_inputs((2, 9 - t - 1, 12), seed=1))
  out, out_changed = np.asarray(ae(h)), np.asarray(ae(changed))
  np.testing.assert_array_equal(out[:, : t + 1], out_changed[:, : t + 1])
  assert np.abs(out[:, t + 1 :] - out_changed[:, t + 1 :]).min() > 0
  # The same, exactly, for the Jacobian of output t with respect to every later input.
  jac = jax.jacobian(lambda x: ae(x)[:, t])(h)
  assert (
    np.all(np.asarray(jac)[:, :, :, t + 1 :] == 0) and np.abs(np.asarray(jac)[:, :, :, t]).max() > 0
  )


def test_non_causal_sees_next_token_and_warns(monkeypatch, caplog):
  monkeypatch.setattr(autoencoder, "_WARNED", set())
  with caplog.at_level(logging.WARNING, logger=autoencoder.__name__):
    ae = Autoencoder(12, 8, causal=False, rngs=nnx.Rngs(3))
    Autoencoder(12, 8, causal=False, rngs=nnx.Rngs(4))
  assert sum("non-causal" in r.getMessage() for r in caplog.records) == 1  # once per process
  h = _inputs((2, 9, 12))
  t = 4
  changed = h.at[:, t + 1].add(1.0)
  out, out_changed = np.asarray(ae(h)), np.asarray(ae(changed))
  np.testing.assert_array_equal(out[:, :t], out_changed[:, :t])
  assert np.abs(out[:, t] - out_changed[:, t]).min() > 0


def test_paper_parameter_count_and_torch_init():
  graphdef, params = jax.eval_shape(
    lambda: nnx.split(Autoencoder(768, 576, rngs=nnx.Rngs(0)), nnx.Param)
  )
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_770_816
  ae = Autoencoder(64, 48, rngs=nnx.Rngs(5))
  for name, fan_in in (("enc", 64), ("enc_bias", 64), ("dec", 48 * 3), ("dec_bias", 48 * 3)):
    value = np.abs(np.asarray(getattr(ae, name)[...]))
    bound = 1 / np.sqrt(fan_in)
    assert value.max() <= bound and value.max() > 0.9 * bound, name


@pytest.mark.parametrize("decoder", ["conv", "linear"])
def test_every_param_has_logical_axes(decoder, devices8):
  ae = Autoencoder(16, 8, decoder=decoder, rngs=nnx.Rngs(0))
  _, params, rest = nnx.split(ae, nnx.Param, ...)
  assert not jax.tree.leaves(rest)
  rules = dict(sharding.DEFAULT_RULES)
  leaves = jax.tree.leaves(nnx.state(ae), is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert len(leaves) == 4
  for v in leaves:
    axes = v.get_metadata()["out_sharding"]
    assert len(axes) == len(v.shape) and all(a is None or a in rules for a in axes)
  mesh = jax.sharding.Mesh(np.array(devices8).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  specs = {k: s.spec for k, s in nnx.to_pure_dict(sharding.state_shardings(params, mesh)).items()}
  assert specs["enc"] == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert specs["dec_bias"] == jax.sharding.PartitionSpec("fsdp")


def test_bfloat16_inputs_keep_their_dtype():
  ae = Autoencoder(12, 8, rngs=nnx.Rngs(6))
  h = _inputs((1, 5, 12))
  out = ae(h.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), ae(h), atol=0.1)


def test_rejects_bad_options():
  with pytest.raises(ValueError, match="decoder"):
    Autoencoder(4, 2, decoder="mlp", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="odd"):
    Autoencoder(4, 2, kernel_size=2, causal=False, rngs=nnx.Rngs(0))
