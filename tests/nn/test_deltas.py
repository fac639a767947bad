"""Per-token gated parameter deltas (superpose.nn.deltas) threaded through the Transformer
forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn import cache as cache_lib
from superpose.nn import deltas
from superpose.nn.deltas import Delta, Full, LowRank
from superpose.nn.testing import random_model

V, T, K = 40, 8, 2
SMALL = dict(
  vocab_size=V, d_model=16, num_layers=2, num_heads=2, max_seq_len=T, d_ff=32, vocab_multiple=8
)
CONFIGS = {
  "gpt2_tied_learned_bias": nn.gpt2(**SMALL),
  "gpt2_untied_nobias": nn.gpt2(**SMALL, tie_embeddings=False, use_bias=False),
  "llama_rope_untied": nn.llama(**SMALL, num_kv_heads=1),
  "llama_rope_tied_bias": nn.llama(
    **{**SMALL, "num_heads": 4}, num_kv_heads=2, tie_embeddings=True, use_bias=True
  ),
}


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, state, tokens, delta=None):
  return nnx.merge(graphdef, state)(tokens, delta=delta).logits_BTV


def logits(model, tokens, delta=None):
  return np.asarray(forward(*nnx.split(model), tokens, delta))


def params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def tokens_for(seed, batch=2):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, T)), jnp.int32)


def one_hot_gate(expert_B, batch=2):
  return jnp.broadcast_to(jax.nn.one_hot(jnp.asarray(expert_B), K)[:, None, :], (batch, T, K))


def map_params(fn, trunk):
  """fn(name, value) over every parameter of a pure dict, keeping the paths."""
  return jax.tree_util.tree_map_with_path(lambda path, x: fn(str(path[-1].key), x), trunk)


def is_matrix(name, x):
  return x.ndim >= 2 and not deltas.is_vector(name)


def full_rank_deltas(trunk, experts):
  """Exact deltas of every parameter: full-rank balanced SVD factors for matrices, differences for
  vectors."""

  def make(path, theta, *others):
    name = str(path[-1].key)
    diffs = [np.asarray(o) - np.asarray(theta) for o in others]
    if not is_matrix(name, theta):
      return Full(jnp.asarray(np.stack(diffs)))
    n_in = deltas.in_dims(name, theta.ndim)
    rank = min(int(np.prod(theta.shape[:n_in])), int(np.prod(theta.shape[n_in:])))
    factors = [deltas.lowrank_from_difference(d, rank, n_in) for d in diffs]
    assert factors[0][0].shape == (*theta.shape[:n_in], rank)
    return LowRank(
      jnp.asarray(np.stack([a for a, _ in factors])), jnp.asarray(np.stack([b for _, b in factors]))
    )

  return jax.tree_util.tree_map_with_path(make, trunk, *experts)


def random_deltas(trunk, rank, seed, scale=0.1, full_tables=False):
  """Random deltas of every parameter: LowRank matrices (Full vocabulary/position tables on
  request)."""
  rng = np.random.default_rng(seed)

  def make(name, x):
    draw = lambda *shape: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
    if not is_matrix(name, x) or (
      full_tables and name in ("token_embedding", "position_embedding", "unembedding")
    ):
      return Full(draw(K, *x.shape))
    n_in = deltas.in_dims(name, x.ndim)
    return LowRank(draw(K, *x.shape[:n_in], rank), draw(K, rank, *x.shape[n_in:]))

  return map_params(make, trunk)


def test_zero_delta_changes_nothing():
  model = random_model(CONFIGS["gpt2_tied_learned_bias"], 0, scale=0.2)
  tokens = tokens_for(1)
  zero = jax.tree.map(jnp.zeros_like, random_deltas(params(model), 3, 0))
  np.testing.assert_array_equal(
    logits(model, tokens, Delta(jnp.full((2, T, K), 0.7), zero)), logits(model, tokens)
  )  # delta=None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_rank_deltas_reproduce_each_expert(name):
  cfg = CONFIGS[name]
  trunk, experts = random_model(cfg, 0, 0.2), [random_model(cfg, 1 + k, 0.2) for k in range(K)]
  delta_params = full_rank_deltas(params(trunk), [params(e) for e in experts])
  tokens = tokens_for(2)
  expert_logits = [logits(e, tokens) for e in experts]
  assert np.abs(expert_logits[0] - expert_logits[1])[..., :V].max() > 1.0  # the experts differ
  for k in range(K):
    got = logits(trunk, tokens, Delta(one_hot_gate([k, k]), delta_params))
    np.testing.assert_allclose(got, expert_logits[k], atol=1e-4, rtol=1e-4)
  rows = logits(
    trunk, tokens, Delta(one_hot_gate([0, 1]), delta_params)
  )  # row 0 → expert 0, row 1 → expert 1
  np.testing.assert_allclose(rows[0], expert_logits[0][0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(rows[1], expert_logits[1][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2_tied_learned_bias", "llama_rope_untied"])
def test_constant_gate_equals_materialised_weights(name):
  cfg = CONFIGS[name]
  trunk = random_model(cfg, 0, 0.2)
  theta = params(trunk)
  delta_params = random_deltas(
    theta, rank=3, seed=1, scale=0.3, full_tables=True
  )  # Full lookups and head
  gate_E = np.asarray([0.3, -0.7], np.float32)

  def materialise(x, e):
    if isinstance(e, LowRank):
      n_in = e.a.ndim - 2
      dense = np.stack(
        [np.tensordot(np.asarray(e.a[k]), np.asarray(e.b[k]), axes=1) for k in range(K)]
      )
      assert (
        np.linalg.matrix_rank(dense[0].reshape(int(np.prod(x.shape[:n_in])), -1)) == 3
      )  # r < min dim
    else:
      dense = np.asarray(e.d)
    return jnp.asarray(np.asarray(x) + np.tensordot(gate_E, dense, axes=1), jnp.float32)

  merged = jax.tree.map(
    materialise, theta, delta_params, is_leaf=lambda x: isinstance(x, (LowRank, Full))
  )
  target = random_model(cfg, 0, 0.2)
  state = nnx.state(target, nnx.Param)
  nnx.replace_by_pure_dict(state, merged)
  nnx.update(target, state)
  tokens = tokens_for(3)
  gate = jnp.broadcast_to(jnp.asarray(gate_E), (2, T, K))
  expected = logits(target, tokens)
  assert np.abs(expected - logits(trunk, tokens))[..., :V].max() > 0.1
  np.testing.assert_allclose(
    logits(trunk, tokens, Delta(gate, delta_params)), expected, atol=1e-4, rtol=1e-4
  )


def test_truncated_svd_is_the_best_rank_r_approximation():
  diff = (
    np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
  )  # in = (6, 3), out = (5,)
  a, b = deltas.lowrank_from_difference(diff, 2, n_in=2)
  assert a.shape == (6, 3, 2) and b.shape == (2, 5) and a.dtype == np.float32
  approx = np.tensordot(a, b, axes=1)
  u, s, vt = np.linalg.svd(diff.reshape(18, 5).astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(approx.reshape(18, 5), (u[:, :2] * s[:2]) @ vt[:2], atol=1e-5)
  np.testing.assert_allclose(
    np.linalg.norm(diff.reshape(18, 5) - approx.reshape(18, 5)),
    np.sqrt(np.sum(s[2:] ** 2)),
    rtol=1e-5,
  )  # Eckart–Young: the tail
  a2 = a.reshape(18, 2).astype(np.float64)
  np.testing.assert_allclose(a2.T @ a2, np.diag(s[:2]), atol=1e-4)  # balanced: aᵀa = b bᵀ = S_r
  np.testing.assert_allclose(
    b.astype(np.float64) @ b.T.astype(np.float64), np.diag(s[:2]), atol=1e-4
  )
  a_full, b_full = deltas.lowrank_from_difference(diff, 99, n_in=2)  # rank capped at min(18, 5)
  assert a_full.shape == (6, 3, 5)
  np.testing.assert_allclose(np.tensordot(a_full, b_full, axes=1), diff, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(graphdef, state, tokens, delta_params, gate):
  model = nnx.merge(graphdef, state)

  def loss_fn(delta_params, gate):
    out = model(tokens, delta=Delta(gate, delta_params)).logits_BTV
    return -jnp.take_along_axis(jax.nn.log_softmax(out), tokens[..., None], -1).mean()

  return jax.value_and_grad(loss_fn, argnums=(0, 1))(delta_params, gate)


def _with_config(model, **changes):
  cfg = model.cfg.replace(**changes)
  target = nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model)
  nnx.update(target, nn.stack_layers(state) if cfg.scan_layers else state)
  return target


@pytest.fixture(scope="module")
def looped_case():
  """A looped model with rank-2 deltas of every parameter, a random gate, and its loss and
  gradients."""
  model = random_model(CONFIGS["llama_rope_tied_bias"], 0, 0.2)
  delta_params = random_deltas(params(model), rank=2, seed=1)
  gate = jnp.asarray(np.random.default_rng(2).standard_normal((2, T, K)), jnp.float32)
  tokens = tokens_for(4)
  return (
    model,
    delta_params,
    gate,
    tokens,
    loss_and_grads(*nnx.split(model), tokens, delta_params, gate),
  )


def test_gradients_reach_every_delta_and_the_gate(looped_case):
  *_, (loss, (grads, gate_grad)) = looped_case
  assert np.isfinite(float(loss))
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  # Per block a and b of 7 matrices, d of 7 biases and 2 norm scales; the final norm; the tied
  # table.
  assert len(flat) == 2 * (2 * 7 + 7 + 2) + 1 + 2
  for path, g in flat:
    assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
  assert float(jnp.abs(gate_grad).min()) > 0


def test_scan_layers_and_remat_equal_the_loop(looped_case):
  looped, delta_params, gate, tokens, (loss, (grads, gate_grad)) = looped_case
  stacked = nn.stack_layers(delta_params)  # LowRank / Full leaves stack like the params
  assert stacked["blocks"]["attn"]["o"].a.shape == (2, K, 4, 4, 2)
  scanned = _with_config(looped, scan_layers=True)
  np.testing.assert_allclose(
    logits(scanned, tokens, Delta(gate, stacked)),
    logits(looped, tokens, Delta(gate, delta_params)),
    atol=1e-5,
  )
  # Gradients through the scan of rematerialised blocks: the layer deltas enter as scan xs and
  # jax.checkpoint arguments; an error in either would show here.
  other_loss, (other_grads, other_gate_grad) = loss_and_grads(
    *nnx.split(_with_config(looped, scan_layers=True, remat="full")), tokens, stacked, gate
  )
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(other_gate_grad, gate_grad, atol=1e-6)
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, atol=1e-6), other_grads, nn.stack_layers(grads)
  )


@functools.partial(jax.jit, static_argnums=0)
def cached_forward(graphdef, state, tokens, positions, cache, delta):
  out = nnx.merge(graphdef, state)(tokens, positions_BT=positions, cache=cache, delta=delta)
  return out.logits_BTV, out.cache


def test_cached_decode_with_deltas_equals_the_full_forward():
  model = random_model(CONFIGS["gpt2_tied_learned_bias"], 0, 0.2)
  gate = jnp.asarray(np.random.default_rng(1).standard_normal((2, T, K)), jnp.float32)
  delta_params = random_deltas(params(model), rank=2, seed=2, scale=0.3)
  tokens, positions = tokens_for(5), nn.decoder.default_positions(2, T)
  full = logits(model, tokens, Delta(gate, delta_params))
  graphdef, state = nnx.split(model)
  _, cache = cached_forward(
    graphdef,
    state,
    tokens[:, :-1],
    positions[:, :-1],
    cache_lib.init_cache(model.cfg, 2, T),
    Delta(gate[:, :-1], delta_params),
  )
  last, _ = cached_forward(
    graphdef, state, tokens[:, -1:], positions[:, -1:], cache, Delta(gate[:, -1:], delta_params)
  )
  np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-4)


def test_deltas_that_do_not_fit_the_model_are_refused():
  model = random_model(CONFIGS["gpt2_untied_nobias"], 0, 0.2)
  trunk = params(model)
  tokens = tokens_for(6)
  good = random_deltas(trunk, rank=2, seed=0)
  gate = jnp.ones((2, T, K))
  bias = Full(jnp.zeros((K, 2, 8)))
  with pytest.raises(ValueError, match="blocks/0/attn/q_bias: the model has no such parameter"):
    model(tokens, delta=Delta(gate, {"blocks": {0: {"attn": {"q_bias": bias}}}}))
  with pytest.raises(ValueError, match="attn/o: LowRank a has 1 in dims"):
    o = trunk["blocks"][1]["attn"]["o"]
    model(
      tokens,
      delta=Delta(
        gate,
        {"blocks": {1: {"attn": {"o": LowRank(jnp.zeros((K, 2, 3)), jnp.zeros((K, 3, 8, 16)))}}}},
      ),
    )
  assert o.shape == (2, 8, 16)
  with pytest.raises(ValueError, match="3 deltas for a gate over 2"):
    model(tokens, delta=Delta(gate, {"final_norm": {"scale": Full(jnp.zeros((3, 16)))}}))
  with pytest.raises(ValueError, match="does not match"):
    model(tokens, delta=Delta(jnp.ones((2, T - 1, K)), good))
  scanned = {**good, "blocks": good["blocks"][0]}  # a looped model given a stacked layout
  with pytest.raises(ValueError, match="blocks/attn/q: the model has no such parameter"):
    model(tokens, delta=Delta(gate, scanned))


def test_flops_per_token_counts_a_small_case_by_hand():
  zeros = jnp.zeros
  delta_params = {
    "token_embedding": LowRank(zeros((2, 10, 3)), zeros((2, 3, 4))),  # V 10, D 4, r 3, K 2
    "position_embedding": Full(zeros((2, 6, 4))),
    "blocks": {
      0: {
        "attn": {"o": LowRank(zeros((2, 2, 3, 1)), zeros((2, 1, 4)))},  # (h 2, dh 3) → 4, r 1
        "mlp": {"wi_bias": Full(zeros((2, 5)))},
      }
    },
  }
  lookup_b = 2 * (2 * 3 * 4)  # Σ_k g_k a_k[tok] b_k: the b-matmul only
  tied_head = 2 * (2 * 4 * 3) + 2 * (2 * 3 * 10)  # h·b_kᵀ (D→r), then ·a_kᵀ (r→V)
  position = 2 * (2 * 4)  # K gathered rows of D, summed with the gate
  o_proj = 2 * (2 * 6 * 1) + 2 * (2 * 1 * 4)  # (h·dh)→r, r→D per expert
  bias = 2 * (2 * 5)
  assert (
    deltas.flops_per_token(delta_params, tied_embeddings=True)
    == (lookup_b + tied_head + position + o_proj + bias)
    == 292
  )
  assert deltas.flops_per_token(delta_params, tied_embeddings=False) == 292 - tied_head
  stacked = {
    "blocks": {"mlp": {"wo": LowRank(zeros((3, 2, 5, 2)), zeros((3, 2, 2, 4)))}}
  }  # 3 scanned layers
  assert deltas.flops_per_token(stacked, tied_embeddings=False) == 3 * (
    2 * (2 * 5 * 2) + 2 * (2 * 2 * 4)
  )
