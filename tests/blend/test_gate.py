"""CausalGate: exact causality, the EMA against a Python loop, document resets, uniform start,
training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose.blend import CausalGate
from superpose.blend.gate import causal_ema

B, T, D, K = 2, 8, 16, 3
ema = jax.jit(causal_ema, static_argnums=1)
run = nnx.jit(lambda gate, s, segments=None: gate(s, segments))


def states(seed, shape=(B, T, D)):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def trained_gate(seed=0):
  """A gate whose output layer is no longer zero, so every feature reaches the logits."""
  gate = CausalGate(D, K, hidden=8, rngs=nnx.Rngs(seed))
  gate.w_out[...] = states(seed + 1, (8, K))
  gate.b_out[...] = states(seed + 2, (K,))
  return gate


def naive_ema(x, beta, segments=None):
  """m_t = Σ (1 − β) β^(t − τ) x_τ / (1 − β^(t − start + 1)), one token at a time, restarted at
  documents."""
  x = np.asarray(x, np.float64)
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    acc, count = np.zeros(x.shape[-1]), 0
    for t in range(x.shape[1]):
      if t > 0 and segments is not None and segments[b][t] != segments[b][t - 1]:
        acc, count = np.zeros(x.shape[-1]), 0
      acc, count = beta * acc + (1 - beta) * x[b, t], count + 1
      out[b, t] = acc / (1 - beta**count)
  return out


def test_ema_equals_a_python_loop_with_and_without_document_resets():
  x = states(0)
  decays = (0.0, 0.5, 0.9, 0.98)
  segments = np.asarray([[1, 1, 1, 2, 2, 2, 2, 3], [1, 1, 1, 1, 1, 1, 0, 0]])
  plain, reset = np.asarray(ema(x, decays)), np.asarray(ema(x, decays, jnp.asarray(segments)))
  assert plain.shape == (B, T, len(decays), D)
  for n, beta in enumerate(decays):
    np.testing.assert_allclose(plain[:, :, n], naive_ema(x, beta), atol=1e-5)
    np.testing.assert_allclose(reset[:, :, n], naive_ema(x, beta, segments), atol=1e-5)
  np.testing.assert_array_equal(plain[:, :, 0], x)  # β = 0: the token itself
  np.testing.assert_allclose(reset[0, 3, 2], x[0, 3], atol=1e-6)  # a new document starts afresh
  constant = np.asarray(ema(jnp.full((B, T, D), 2.5), decays))
  np.testing.assert_allclose(constant, 2.5, atol=1e-5)  # bias-corrected from the first token


def test_logits_are_exactly_causal_and_documents_are_isolated():
  gate = trained_gate()
  s = states(3)
  t = 4
  changed = s.at[:, t + 1 :].set(states(4, (B, T - t - 1, D)))
  logits, logits_changed = np.asarray(run(gate, s)), np.asarray(run(gate, changed))
  assert logits.shape == (B, T, K) and logits.dtype == np.float32
  np.testing.assert_array_equal(logits[:, : t + 1], logits_changed[:, : t + 1])
  assert np.abs(logits[:, t + 1 :] - logits_changed[:, t + 1 :]).min() > 0
  # With documents packed in a row, a document's logits ignore the ones before it.
  segments = jnp.asarray([[1] * 3 + [2] * 5] * B)
  other_start = s.at[:, :3].set(states(5, (B, 3, D)))
  packed = run(gate, s, segments)
  np.testing.assert_allclose(packed[:, 3:], run(gate, other_start, segments)[:, 3:], atol=1e-6)
  alone = run(
    gate, jnp.concatenate([s[:, 3:], s[:, :3]], axis=1)
  )  # the second document first, same shapes
  np.testing.assert_allclose(packed[:, 3:], alone[:, :5], atol=1e-5)


def test_zero_output_layer_starts_uniform_and_one_sgd_step_reaches_every_parameter():
  gate = CausalGate(D, K, hidden=8, rngs=nnx.Rngs(0))
  s = states(6)
  logits = np.asarray(run(gate, s))
  np.testing.assert_array_equal(logits, 0.0)
  np.testing.assert_allclose(jax.nn.softmax(logits), 1.0 / K, rtol=1e-6)
  targets = jnp.asarray(np.random.default_rng(7).integers(0, K, (B, T)))
  graphdef, params = nnx.split(gate, nnx.Param)

  @jax.jit
  def grads(params):
    def loss(params):
      logp = jax.nn.log_softmax(nnx.merge(graphdef, params)(s))
      return -jnp.take_along_axis(logp, targets[..., None], -1).mean()

    return jax.grad(loss)(params)

  first = nnx.to_pure_dict(grads(params))
  assert float(jnp.abs(first["w_in"]).max()) == 0 and float(jnp.abs(first["b_in"]).max()) == 0
  assert float(jnp.abs(first["w_out"]).max()) > 0 and float(jnp.abs(first["b_out"]).max()) > 0
  stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads(params))
  for name, g in nnx.to_pure_dict(grads(stepped)).items():
    assert float(jnp.abs(g).max()) > 0, name


def test_flops_and_bad_decays():
  gate = CausalGate(D, K, hidden=8, rngs=nnx.Rngs(0))
  assert (
    gate.flops_per_token() == 2 * (3 * D * 8 + 8 * K) + 3 * 8 * 2
  )  # two EMAs with β > 0, at width 8
  with pytest.raises(ValueError, match="decays"):
    CausalGate(D, K, decays=(0.5, 1.0), rngs=nnx.Rngs(0))


def test_projecting_before_averaging_equals_the_features_formula():
  """The forward averages s·W instead of s (the EMA is linear): the logits of the written formula
  dense(concat of the EMAs of the normalised states) are unchanged."""
  gate = trained_gate(3)
  s, segments = states(4), jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 3]] * B)
  f_BTND = gate.features(s, segments)
  h = jax.nn.gelu(
    jnp.einsum("btnd,ndh->bth", f_BTND, gate.w_in[...]) + gate.b_in[...], approximate=False
  )
  want = h @ gate.w_out[...] + gate.b_out[...]
  np.testing.assert_allclose(run(gate, s, segments), want, atol=1e-5, rtol=1e-5)
