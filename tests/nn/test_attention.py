"""Attention implementations agree with the xla reference; sharded forward equals unsharded."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn import attention, sharding
from superpose.nn.testing import random_model as build
from superpose.train.mesh import make_mesh

V = 40
SMALL = dict(vocab_size=V, d_model=32, num_layers=2, num_heads=4, max_seq_len=128, d_ff=64)


def same_weights(model, **changes):
  target = nnx.eval_shape(lambda: nn.Transformer(model.cfg.replace(**changes), rngs=nnx.Rngs(0)))
  nnx.update(target, nnx.state(model))
  return target


@functools.partial(jax.jit, static_argnums=0)
def logits_of(graphdef, state, tokens, segment_ids):
  return nnx.merge(graphdef, state)(tokens, segment_ids_BT=segment_ids).logits_BTV


def packed_batch(batch, length, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (batch, length))
  segments = np.ones((batch, length), np.int32)
  segments[:, length // 3 :] = 2
  segments[-1, -length // 4 :] = 0  # trailing padding
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(segments)


def test_kernels_directly_on_gqa_shapes():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((2, 128, 4, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 128, 2, 16)), jnp.float32) for _ in range(2))
  seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 78], 2, 0))
  mask = nn.cache.self_mask(seg, 128, causal=True)
  ref, probs = attention.xla_attention(q, k, v, mask, 0.25, return_probs=True)
  # numpy reference with the K/V heads repeated per group
  kr, vr = np.repeat(np.asarray(k), 2, axis=2), np.repeat(np.asarray(v), 2, axis=2)
  s = np.einsum("bthd,bshd->bhts", np.asarray(q), kr) * 0.25
  s = np.where(np.asarray(mask)[:, None], s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(ref, np.einsum("bhts,bshd->bthd", w, vr), atol=1e-5)
  np.testing.assert_allclose(probs, w, atol=1e-6)
  cudnn = attention.cudnn_attention(q, k, v, mask, 0.25, True, plain=False)
  np.testing.assert_allclose(cudnn, ref, atol=1e-5)
  splash = jax.jit(attention.splash_attention, static_argnums=(4, 5))(q, k, v, seg, 0.25, True)
  np.testing.assert_allclose(splash, ref, atol=1e-5)


@pytest.mark.parametrize(
  "impl,causal", [("cudnn", True), ("cudnn", False), ("splash", True), ("splash", False)]
)
def test_model_with_fused_attention_equals_xla(impl, causal):
  model = build(nn.llama(**SMALL, num_kv_heads=2, causal=causal))
  tokens, segments = packed_batch(2, 128)
  ref = logits_of(*nnx.split(model), tokens, segments)
  out = logits_of(*nnx.split(same_weights(model, attention=impl)), tokens, segments)
  valid = np.asarray(segments) > 0  # padding rows are garbage by design
  # f32 logits of size ~3 through 2+ layers: the kernels sum in another order than XLA, and how much
  # that moves the last bits depends on the CPU's vector width (3.3e-5 seen on an AVX2-only host),
  # hence 1e-4.
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=1e-4)
  plain = logits_of(*nnx.split(same_weights(model, attention=impl)), tokens, None)
  np.testing.assert_allclose(plain, logits_of(*nnx.split(model), tokens, None), atol=1e-4)


def test_splash_needs_block_multiple():
  model = build(nn.gpt2(**{**SMALL, "max_seq_len": 256}, attention="splash"))
  with pytest.raises(ValueError, match="multiple of 128"):
    model(jnp.zeros((1, 130), jnp.int32))


def test_generate_with_splash_model_falls_back_to_xla():
  model = build(nn.gpt2(**SMALL, attention="splash"))
  prompts, lengths = np.array([[3, 4, 5], [6, 0, 0]]), np.array([3, 1])
  a, _ = nn.generate(*nnx.split(model), prompts, lengths, 3)
  b, _ = nn.generate(*nnx.split(same_weights(model, attention="xla")), prompts, lengths, 3)
  np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def mesh(devices8):
  return make_mesh((2, 2, 2))


@pytest.mark.parametrize(
  "cfg",
  [
    nn.gpt2(**SMALL),
    nn.llama(**SMALL, num_kv_heads=2, scan_layers=True, remat="dots"),
    nn.llama(**SMALL, num_kv_heads=2, attention="splash"),
  ],
  ids=["gpt2", "llama_scan_remat", "llama_splash"],
)
def test_sharded_forward_equals_unsharded(mesh, cfg):
  model = build(cfg)
  tokens, segments = packed_batch(4, 128 if cfg.attention == "splash" else 16, seed=2)
  graphdef, state = nnx.split(model)
  reference = logits_of(graphdef, state, tokens, segments)
  abstract = nnx.state(nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))))
  shardings = sharding.state_shardings(abstract, mesh)
  with jax.set_mesh(mesh):
    placed = jax.device_put(state, shardings)
    batch_sharding = jax.NamedSharding(mesh, sharding.spec_for(("batch", "length"), tokens.shape))
    tokens_s, segments_s = jax.device_put((tokens, segments), batch_sharding)
    out = logits_of(graphdef, placed, tokens_s, segments_s)
  q = placed["blocks"]["attn"]["q"] if cfg.scan_layers else placed["blocks"][0]["attn"]["q"]
  assert "tensor" in str(q.get_value().sharding.spec) and "fsdp" in str(q.get_value().sharding.spec)
  assert len(out.sharding.device_set) == 8
  valid = np.asarray(segments) > 0
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(reference)[valid], atol=2e-5)


def test_generate_under_mesh_equals_unsharded(mesh):
  cfg = nn.llama(**SMALL, num_kv_heads=2, scan_layers=True)
  model = build(cfg, seed=5)
  graphdef, state = nnx.split(model)
  prompts, lengths = (
    np.array([[3, 4, 5, 6], [7, 8, 0, 0], [9, 0, 0, 0], [1, 2, 3, 0]]),
    np.array([4, 2, 1, 3]),
  )
  reference, _ = nn.generate(graphdef, state, prompts, lengths, 4)
  abstract = nnx.state(nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))))
  with jax.set_mesh(mesh):
    placed = jax.device_put(state, sharding.state_shardings(abstract, mesh))
    tokens, _ = nn.generate(graphdef, placed, prompts, lengths, 4)
    cache = jax.eval_shape(lambda: nn.init_cache(cfg, 4, 8))
    specs = nn.cache_shardings(cache, mesh)
  np.testing.assert_array_equal(tokens, reference)
  assert specs.k.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor")


@pytest.mark.parametrize("block", [32, 64])
def test_causal_blocks_equal_one_block(block):
  """Queries in causal blocks (each scoring only the keys up to its last row) give the logits and
  every gradient of the one-block attention: T = 100 leaves a partial last block; segments and
  padding; grouped K/V heads."""
  model = build(nn.llama(**SMALL, num_kv_heads=2, causal_block=block))
  tokens, segments = packed_batch(2, 100)
  one = same_weights(model, causal_block=0)

  def loss(state, graphdef):
    logits = nnx.merge(graphdef, state)(tokens, segment_ids_BT=segments).logits_BTV
    return jnp.sum(jnp.sin(logits) * (segments > 0)[..., None])

  grads = {}
  for name, m in (("blocks", model), ("one", one)):
    graphdef, state = nnx.split(m)
    grads[name] = jax.jit(jax.value_and_grad(loss), static_argnums=1)(state, graphdef)
  np.testing.assert_allclose(grads["blocks"][0], grads["one"][0], rtol=1e-5)
  flat = jax.tree.leaves(grads["blocks"][1]), jax.tree.leaves(grads["one"][1])
  assert len(flat[0]) == len(flat[1]) > 0
  for a, b in zip(*flat):  # f32 sums in another order: within 1e-5 of each leaf's largest entry
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()

  # the blocks are really taken: only the one-block program scores all 100 × 100 pairs at once
  def scores_all_pairs(m):
    graphdef, state = nnx.split(m)
    return (
      "tensor<2x2x2x100x100xf32>"
      in jax.jit(loss, static_argnums=1).lower(state, graphdef).as_text()
    )

  assert scores_all_pairs(one) and not scores_all_pairs(model)


def test_causal_block_validated():
  with pytest.raises(ValueError, match="causal_block"):
    nn.gpt2(**SMALL, causal_block=-1)
