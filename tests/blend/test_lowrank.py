"""ExpertDeltas: layout, logical axes, sizes, SVD values from experts, and the experts through the
Transformer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.blend import ExpertDeltas
from superpose.blend.lowrank import values_from_experts
from superpose.nn import deltas
from superpose.nn.testing import random_model

V, T, K = 40, 8, 2
GPT2 = nn.gpt2(
  vocab_size=V, d_model=16, num_layers=2, num_heads=2, max_seq_len=T, d_ff=32, vocab_multiple=8
)
LLAMA = nn.llama(
  vocab_size=V,
  d_model=16,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  max_seq_len=T,
  d_ff=32,
  vocab_multiple=8,
)


def params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flat(tree):
  return {
    jax.tree_util.keystr(p): v
    for p, v in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )[0]
  }


@functools.partial(jax.jit, static_argnums=(0, 2))
def forward(graphdef, state, deltas_graphdef, deltas_state, tokens, gate):
  delta = None if deltas_graphdef is None else nnx.merge(deltas_graphdef, deltas_state)(gate)
  return nnx.merge(graphdef, state)(tokens, delta=delta).logits_BTV


def logits(model, tokens, expert_deltas=None, gate=None):
  extra = (None, None) if expert_deltas is None else nnx.split(expert_deltas)
  return np.asarray(forward(*nnx.split(model), *extra, tokens, gate))


def abstract(cfg, rank, **kwargs):
  """ExpertDeltas with shapes only: no PRNG compilations (values come from ``load``)."""
  return nnx.eval_shape(lambda: ExpertDeltas.for_config(cfg, K, rank, rngs=nnx.Rngs(0), **kwargs))


def tokens_for(seed):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (2, T)), jnp.int32)


def test_layout_axes_and_sizes():
  module = abstract(GPT2, 4)
  state = flat(nnx.state(module, nnx.Param))
  trunk = flat(nnx.state(nnx.eval_shape(lambda: nn.Transformer(GPT2, rngs=nnx.Rngs(0))), nnx.Param))
  assert {p.rsplit("[", 1)[0] for p in state} == set(
    trunk
  )  # every trunk parameter has a delta, at its path
  q, o = "['blocks'][1]['attn']['q']", "['blocks'][0]['attn']['o']"
  assert state[q + "['a']"].shape == (K, 16, 4) and state[q + "['b']"].shape == (K, 4, 2, 8)
  assert state[o + "['a']"].shape == (K, 2, 8, 4) and state[o + "['b']"].shape == (K, 4, 16)
  assert state["['blocks'][0]['attn']['q_bias']['d']"].shape == (
    K,
    2,
    8,
  )  # a (h, dh) bias is added: Full
  axes = {p: v.get_metadata()["out_sharding"] for p, v in state.items()}
  assert axes[q + "['a']"] == ("experts", "embed", None) and axes[q + "['b']"] == (
    "experts",
    None,
    "heads",
    "head_dim",
  )
  assert axes["['token_embedding']['a']"] == ("experts", "vocab", None)
  assert axes["['final_norm']['scale']['d']"] == ("experts", "norm")
  assert all(len(a) == len(v.shape) for a, v in zip(axes.values(), state.values()))

  # Sizes by hand (D 16, H·dh 16, F 32, V 40, P 8, r 4): a + b per matrix, K·size per vector.
  lowrank = lambda n_in, n_out: K * 4 * (n_in + n_out)
  block = (
    4 * lowrank(16, 16)
    + 4 * K * 16  # q, k, v, o and their biases
    + lowrank(16, 32)
    + lowrank(32, 16)
    + K * (32 + 16)  # wi, wo, wi_bias, wo_bias
    + 4 * K * 16
  )  # two layer norms, scale and bias
  total = 2 * block + 2 * K * 16 + lowrank(40, 16) + lowrank(8, 16)
  assert module.num_params() == total == sum(np.prod(v.shape) for v in state.values()) == 4992
  assert module.tied_embeddings
  assert module.flops_per_token() == deltas.flops_per_token(
    module(jnp.zeros((1, 1, K))).params, tied_embeddings=True
  )

  stacked = abstract(
    LLAMA.replace(scan_layers=True),
    3,
    vector_mode="none",
    embedding_mode="full",
    skip=(r"mlp/wg$",),
  )
  state = flat(nnx.state(stacked, nnx.Param))
  assert state["['blocks']['attn']['o']['a']"].get_metadata()["out_sharding"] == (
    "layers",
    "experts",
    "heads",
    "head_dim",
    None,
  )
  assert state["['blocks']['attn']['o']['a']"].shape == (2, K, 4, 4, 3)
  assert state["['token_embedding']['d']"].shape == (K, V, 16) and "['unembedding']['d']" in state
  assert not [p for p in state if "scale" in p or "['wg']" in p]
  assert not stacked.tied_embeddings
  with pytest.raises(ValueError, match="embedding_mode"):
    abstract(GPT2, 4, embedding_mode="tied")


def test_fresh_deltas_are_zero_but_not_both_factors():
  # A hand-written pure dict of shapes (each new PRNG shape costs a compilation on CPU), with axes.
  trunk = {
    "token_embedding": jax.ShapeDtypeStruct((40, 16), jnp.float32),
    "mlp": {
      "wo": jax.ShapeDtypeStruct((64, 16), jnp.float32),
      "wo_bias": jax.ShapeDtypeStruct((16,), jnp.float32),
    },
  }
  axes = {
    "token_embedding": ("vocab", "embed"),
    "mlp": {"wo": ("mlp", "embed"), "wo_bias": ("embed",)},
  }
  module = ExpertDeltas(trunk, K, 8, axes=axes, rngs=nnx.Rngs(0))
  wo, table = module.mlp["wo"], module.token_embedding
  assert wo["a"].get_metadata()["out_sharding"] == ("experts", "mlp", None)
  assert table["b"].get_metadata()["out_sharding"] == ("experts", None, "embed")
  assert float(jnp.std(wo["a"][...])) == pytest.approx(1 / np.sqrt(64), rel=0.15)  # N(0, 1/fan_in)
  assert float(jnp.std(table["a"][...])) == pytest.approx(
    1.0, rel=0.15
  )  # a lookup's input is one-hot
  for leaf in (wo, table):
    assert float(jnp.abs(leaf["b"][...]).max()) == 0  # Δ = a·0 = 0, yet ∂L/∂b ≠ 0
  assert float(jnp.abs(module.mlp["wo_bias"]["d"][...]).max()) == 0
  entry = module(jnp.zeros((1, 1, K))).params["mlp"]["wo"]
  x, gate = jnp.ones((1, 2, 64)), jnp.ones((1, 2, K))
  grad_b = jax.grad(lambda b: deltas.linear(x, entry.replace(b=b), gate, 1, jnp.float32).sum())(
    entry.b
  )
  assert float(jnp.abs(grad_b).min()) > 0
  assert (
    module.tied_embeddings
  )  # a token table and no unembedding: the head reuses the table's delta
  unnamed = nnx.eval_shape(lambda: ExpertDeltas(trunk, K, 8, rngs=nnx.Rngs(0)))
  assert unnamed.mlp["wo"]["a"].get_metadata()["out_sharding"] == ("experts", None, None)


@pytest.mark.parametrize(
  "cfg", [GPT2, LLAMA.replace(scan_layers=True)], ids=["gpt2_looped", "llama_scanned"]
)
def test_full_rank_values_reproduce_each_expert(cfg):
  trunk, experts = random_model(cfg, 0, 0.2), [random_model(cfg, 1 + k, 0.2) for k in range(K)]
  values = ExpertDeltas.values_from_experts(params(trunk), [params(e) for e in experts], rank=64)
  module = abstract(cfg, 64)
  module.load(values)
  tokens = tokens_for(2)
  for k, expert in enumerate(experts):
    gate = jnp.broadcast_to(jax.nn.one_hot(k, K), (2, T, K))
    np.testing.assert_allclose(
      logits(trunk, tokens, module, gate), logits(expert, tokens), atol=1e-4, rtol=1e-4
    )


def test_rank_r_values_are_the_truncated_svd():
  trunk, experts = random_model(LLAMA, 0, 0.2), [random_model(LLAMA, 1 + k, 0.2) for k in range(K)]
  values = values_from_experts(
    params(trunk), [params(e) for e in experts], rank=3, embedding_mode="none"
  )
  assert "token_embedding" not in values and "unembedding" not in values
  for k, expert in enumerate(experts):
    for layer, name, n_in in ((0, "o", 2), (1, "wg", 1)):
      group = "attn" if name == "o" else "mlp"
      diff = np.asarray(params(expert)["blocks"][layer][group][name]) - np.asarray(
        params(trunk)["blocks"][layer][group][name]
      )
      matrix = diff.reshape(int(np.prod(diff.shape[:n_in])), -1).astype(np.float64)
      u, s, vt = np.linalg.svd(matrix, full_matrices=False)
      entry = values["blocks"][layer][group][name]
      assert entry["a"].shape == (K, *diff.shape[:n_in], 3)
      got = np.tensordot(np.asarray(entry["a"][k]), np.asarray(entry["b"][k]), axes=1).reshape(
        matrix.shape
      )
      np.testing.assert_allclose(got, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-5)
    norm = values["blocks"][1]["mlp_norm"]["scale"]["d"][k]
    np.testing.assert_allclose(
      norm,
      np.asarray(params(expert)["blocks"][1]["mlp_norm"]["scale"])
      - np.asarray(params(trunk)["blocks"][1]["mlp_norm"]["scale"]),
      atol=1e-6,
    )
  module = abstract(LLAMA, 3)  # tables planned too: load asks for them
  with pytest.raises(KeyError):
    module.load(values)
