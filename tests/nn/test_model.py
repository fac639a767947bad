"""Transformer forward: option combinations, masking, embeds override, hooks and taps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn.testing import random_model
from superpose.nn import cache as cache_lib

V, D, T = 50, 32, 12


def build(cfg, seed=0):
  return random_model(cfg, seed, scale=0.2)


@functools.partial(
  jax.jit, static_argnums=0, static_argnames=("return_hidden", "return_attention", "hook")
)
def forward(graphdef, state, tokens, **kwargs):
  return nnx.merge(graphdef, state)(tokens, **kwargs)


def run(model, tokens, **kwargs):
  graphdef, state = nnx.split(model)
  return forward(graphdef, state, tokens, **kwargs)


def tokens_for(seed, batch=2, length=T):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, length)), jnp.int32)


SMALL = dict(vocab_size=V, d_model=D, num_layers=2, num_heads=4, max_seq_len=16, d_ff=64)
COMBOS = {
  "gpt2": nn.gpt2(**SMALL),
  "gpt2_exact_gelu_untied_nobias": nn.gpt2(
    **SMALL, activation="gelu", tie_embeddings=False, use_bias=False
  ),
  "llama_gqa": nn.llama(**SMALL, num_kv_heads=2),
  "llama_mqa_head_dim_24": nn.llama(**SMALL, num_kv_heads=1, head_dim=24),
  "superposition_construction": nn.TransformerConfig(
    **SMALL,
    norm="l2",
    attn_norm="none",
    mlp_norm="post",
    mlp_residual=False,
    final_norm=False,
    activation="step",
    step_threshold=0.05,
    attn_scale="one",
    positions="sinusoidal",
    use_bias=False,
  ),
  "tracr_noncausal": nn.TransformerConfig(
    **SMALL, norm="none", activation="relu", causal=False, tie_embeddings=False, final_norm=False
  ),
  "post_norm_float_scale_no_positions": nn.gpt2(
    **SMALL, attn_norm="post", mlp_norm="post", attn_scale=0.3, positions="none"
  ),
  "rmsnorm_gelu_sinusoidal_one_head": nn.TransformerConfig(
    **{**SMALL, "num_heads": 1}, norm="rmsnorm", activation="gelu", positions="sinusoidal"
  ),
  "eight_heads_of_8_rope_bias": nn.TransformerConfig(
    **{**SMALL, "num_heads": 8}, head_dim=8, positions="rope", use_bias=True, vocab_multiple=7
  ),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_option_combination_runs_and_respects_causality(name):
  cfg = COMBOS[name]
  model = build(cfg)
  base = tokens_for(1)
  changed = base.at[:, 7:].set((base[:, 7:] + 1) % V)  # tokens after t=6 differ
  out = run(model, jnp.concatenate([base, changed]))
  logits = np.asarray(out.logits_BTV)
  assert logits.shape == (4, T, cfg.padded_vocab) and logits.dtype == np.float32
  assert np.all(np.isfinite(logits))
  assert np.all(logits[..., V:] == nn.decoder.VOCAB_PAD_LOGIT)
  assert out.final_hidden_BTD.shape == (4, T, D) and out.hidden is None and out.cache is None
  if cfg.causal:
    np.testing.assert_allclose(logits[:2, :7], logits[2:, :7], atol=1e-5)
  else:  # bidirectional: earlier positions see the change too
    assert np.abs(logits[:2, :7] - logits[2:, :7]).max() > 1e-4
  assert np.abs(logits[:2, 7:] - logits[2:, 7:]).max() > 1e-4
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n_params > 0


def test_parameter_layout_and_axes():
  cfg = nn.llama(**SMALL, num_kv_heads=2, head_dim=6)
  abstract = nnx.state(nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))))
  shapes = {
    jax.tree_util.keystr(p): (v.shape, v.get_metadata()["out_sharding"])
    for p, v in jax.tree_util.tree_flatten_with_path(
      abstract, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )[0]
  }
  assert shapes["['token_embedding']"] == ((128, 32), ("vocab", "embed"))
  assert shapes["['unembedding']"] == ((32, 128), ("embed", "vocab"))
  assert shapes["['blocks'][0]['attn']['q']"] == ((32, 4, 6), ("embed", "heads", "head_dim"))
  assert shapes["['blocks'][1]['attn']['k']"] == ((32, 2, 6), ("embed", "kv_heads", "head_dim"))
  assert shapes["['blocks'][0]['attn']['o']"] == ((4, 6, 32), ("heads", "head_dim", "embed"))
  assert shapes["['blocks'][0]['mlp']['wg']"] == ((32, 64), ("embed", "mlp"))
  assert shapes["['blocks'][0]['mlp']['wo']"] == ((64, 32), ("mlp", "embed"))
  assert shapes["['final_norm']['scale']"] == ((32,), ("norm",))
  gpt = nnx.state(nnx.eval_shape(lambda: nn.Transformer(nn.gpt2(**SMALL), rngs=nnx.Rngs(0))))
  assert gpt["position_embedding"].get_metadata()["out_sharding"] == (None, "embed")
  assert gpt["blocks"][0]["attn"]["q_bias"].shape == (4, 8) and "unembedding" not in gpt


def test_init_statistics_and_output_scaling():
  cfg = nn.gpt2(**{**SMALL, "num_layers": 8}, init_std=0.05)
  model = nn.Transformer(cfg, rngs=nnx.Rngs(0))
  assert float(jnp.std(model.token_embedding[...])) == pytest.approx(0.05, rel=0.1)
  assert float(jnp.std(model.blocks[0].mlp.wo[...])) == pytest.approx(
    0.05 / 4, rel=0.1
  )  # 1/sqrt(2·8)
  assert float(jnp.abs(model.blocks[0].attn.q_bias[...]).max()) == 0.0


def test_segment_ids_isolate_documents():
  model = build(nn.gpt2(**SMALL))
  doc_a, doc_b = tokens_for(2, 1, 5), tokens_for(3, 1, 7)
  packed = jnp.concatenate([doc_a, doc_b], 1)
  segments = jnp.asarray([[1] * 5 + [2] * 7])
  positions = jnp.asarray([list(range(5)) + list(range(7))])
  out = run(model, packed, segment_ids_BT=segments, positions_BT=positions).logits_BTV
  np.testing.assert_allclose(out[:, :5], run(model, doc_a).logits_BTV, atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], run(model, doc_b).logits_BTV, atol=1e-5)


def test_padded_vocab_has_zero_probability():
  model = build(nn.gpt2(**SMALL))
  logits = run(model, tokens_for(4)).logits_BTV
  probs = jax.nn.softmax(logits, -1)
  assert float(probs[..., V:].max()) == 0.0
  np.testing.assert_allclose(probs[..., :V].sum(-1), 1.0, atol=1e-5)
  assert np.isfinite(float(jnp.square(logits).sum()))  # z-loss style terms stay finite


def test_embeds_override():
  model = build(nn.gpt2(**SMALL))
  tokens = tokens_for(5)
  plain = run(model, tokens)
  own = model.token_embedding[...][tokens]
  mask = jnp.zeros(tokens.shape, bool).at[:, 3:6].set(True)
  same = run(model, tokens, embeds_BTD=own, embeds_mask_BT=mask)
  np.testing.assert_allclose(same.logits_BTV, plain.logits_BTV, atol=1e-5)
  only_embeds = run(model, None, embeds_BTD=own)
  np.testing.assert_allclose(only_embeds.logits_BTV, plain.logits_BTV, atol=1e-5)
  thought = jnp.asarray(np.random.default_rng(6).standard_normal((2, T, D)), jnp.float32)
  mask = jnp.zeros(tokens.shape, bool).at[:, 4].set(True)
  other = run(model, tokens, embeds_BTD=thought, embeds_mask_BT=mask)
  np.testing.assert_allclose(other.logits_BTV[:, :4], plain.logits_BTV[:, :4], atol=1e-5)
  assert (
    float(jnp.abs(other.logits_BTV[:, 4:, :V] - plain.logits_BTV[:, 4:, :V]).max(-1).min()) > 1e-4
  )
  with pytest.raises(ValueError, match="embeds_mask_BT"):
    model.embed(tokens, embeds_BTD=own)


def _identity(index, x):
  return x


DIRECTION = jnp.asarray(np.random.default_rng(7).standard_normal(D), jnp.float32)


def _add_at_layer_1(index, x):
  return jnp.where(index == 1, x + DIRECTION, x)  # works for a Python int and a traced index


def as_scanned(looped):
  """The same weights in a scan_layers=True model (via stack_layers)."""
  scanned = nnx.eval_shape(
    lambda: nn.Transformer(looped.cfg.replace(scan_layers=True), rngs=nnx.Rngs(0))
  )
  nnx.update(scanned, nn.stack_layers(nnx.state(looped)))
  return scanned


@nnx.jit
def _manual_passes(looped, tokens):
  """Embed, then the looped blocks one by one: all taps, and a second pass adding DIRECTION after
  block 1."""
  positions, mask = (
    nn.decoder.default_positions(*tokens.shape),
    cache_lib.self_mask(None, tokens.shape[1], True),
  )
  x = looped.embed(tokens)
  taps = [x]
  for block in looped.blocks:
    taps.append(block(taps[-1], positions_BT=positions, mask_BTS=mask)[0])
  for i, block in enumerate(looped.blocks):
    x = block(x, positions_BT=positions, mask_BTS=mask)[0] + (DIRECTION if i == 1 else 0)
  return jnp.stack(taps), x


@pytest.mark.parametrize("scan", [False, True])
def test_hook_and_hidden_taps(scan):
  looped = build(nn.gpt2(**{**SMALL, "num_layers": 3}))
  model = as_scanned(looped) if scan else looped
  tokens = tokens_for(8)
  plain = run(model, tokens, return_hidden=True, return_attention=True)
  np.testing.assert_array_equal(run(model, tokens, hook=_identity).logits_BTV, plain.logits_BTV)

  manual_hidden, manual_hooked = _manual_passes(looped, tokens)
  for i in range(4):
    np.testing.assert_allclose(plain.hidden[i], manual_hidden[i], atol=1e-5)
  hooked = run(model, tokens, hook=_add_at_layer_1, return_hidden=True)
  np.testing.assert_allclose(hooked.hidden[-1], manual_hooked, atol=1e-4)
  np.testing.assert_allclose(
    hooked.logits_BTV, nnx.jit(lambda m, x: m.unembed(x))(looped, manual_hooked), atol=1e-4
  )
  assert float(jnp.abs(hooked.logits_BTV - plain.logits_BTV).max()) > 1e-3

  assert plain.hidden.shape == (4, 2, T, D)
  final_norm, logits = nnx.jit(lambda m, h: (m.final_norm(h), m.logits(m.final_norm(h))))(
    looped, plain.hidden[-1]
  )
  np.testing.assert_allclose(plain.final_hidden_BTD, final_norm, atol=1e-5)
  np.testing.assert_allclose(plain.logits_BTV, logits, atol=1e-5)
  probs = np.asarray(plain.attention)
  assert probs.shape == (3, 2, 4, T, T)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert probs[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]].max() == 0.0


def test_fused_attention_cannot_return_probabilities():
  for impl in ("cudnn", "splash"):
    model = build(nn.gpt2(**SMALL, attention=impl))
    with pytest.raises(ValueError, match="return_attention needs attention='xla'"):
      model(tokens_for(0, 1, 16), return_attention=True)
