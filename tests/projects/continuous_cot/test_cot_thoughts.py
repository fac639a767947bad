"""Continuous thoughts: the KV-cached forward equals the full re-forward per thought (values and
grads), with one thought count for every row and with per-row counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from projects.continuous_cot import thoughts as th
from superpose import nn
from superpose.nn import sharding
from superpose.nn.testing import random_model
from superpose.train.mesh import make_mesh

V, T, U = 40, 16, 3
STARTS = np.array([5, 9, 7], np.int32)  # a different prefix length per row
LENGTHS = np.array([10, 14, 12], np.int32)  # prefix + U thoughts + 2 tokens, then right padding
TIGHT = th.layout_bounds(STARTS, LENGTHS, U)  # (9, 2): rest windows start at latent_start + U
CLAMPED = (9, 5)  # row 1's window is clamped: it recomputes a thought
COUNTS = np.array(
  [3, 0, 2], np.int32
)  # per-row thought counts ≤ U; a row's other slots hold its tokens


def tokens(seed=1):
  return np.random.default_rng(seed).integers(0, V, (len(STARTS), T)).astype(np.int32)


def valid_mask():
  return np.arange(T)[None] < LENGTHS[:, None]


@pytest.fixture(scope="module")
def gpt2():
  return random_model(th.model_config("tiny", vocab_size=V, max_seq_len=32), seed=0, scale=0.3)


def test_model_sizes():
  paper = th.model_config("paper")
  assert (paper.num_layers, paper.num_heads, paper.d_model, paper.d_ff) == (2, 8, 768, 3072)
  assert (paper.vocab_size, paper.padded_vocab, paper.positions, paper.tie_embeddings) == (
    40,
    40,
    "learned",
    True,
  )
  assert th.model_config("small", vocab_size=50).padded_vocab == 56
  params = nnx.state(nnx.eval_shape(lambda: nn.Transformer(paper, rngs=nnx.Rngs(0))), nnx.Param)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == 40 * 768 + 256 * 768 + 2 * (12 * 768 * 768 + 13 * 768) + 2 * 768  # ≈ 14.4M
  with pytest.raises(ValueError, match="must be one of"):
    th.model_config("huge")


@pytest.mark.parametrize(
  "bounds", [(None, None), TIGHT, CLAMPED], ids=["default", "tight", "clamped"]
)
def test_cached_equals_reforward(gpt2, bounds):
  prefix_len, rest_len = bounds
  tok = tokens()
  cached = th.forward_with_thoughts(
    gpt2, tok, STARTS, U, prefix_len=prefix_len, rest_len=rest_len, lengths_B=LENGTHS
  )
  ref = th.forward_with_thoughts(gpt2, tok, STARTS, U, method="reforward")
  assert cached.thoughts_BUD.shape == (3, U, 64) and cached.logits_BTV.shape == (3, T, V)
  np.testing.assert_allclose(cached.thoughts_BUD, ref.thoughts_BUD, atol=1e-5, rtol=1e-5)
  valid = valid_mask()
  np.testing.assert_allclose(
    np.asarray(cached.logits_BTV)[valid], np.asarray(ref.logits_BTV)[valid], atol=2e-5, rtol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(cached.final_hidden_BTD)[valid],
    np.asarray(ref.final_hidden_BTD)[valid],
    atol=1e-5,
    rtol=1e-5,
  )
  # The thoughts matter: the same tokens with the latent slots read as tokens give other logits.
  plain = gpt2(jnp.asarray(tok)).logits_BTV
  assert np.abs(np.asarray(plain)[:, -1] - np.asarray(ref.logits_BTV)[:, -1]).max() > 1e-2


def test_cached_equals_reforward_rope_scanned():
  model = random_model(
    nn.llama(
      vocab_size=V,
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      d_ff=64,
      max_seq_len=32,
      scan_layers=True,
    ),
    seed=2,
    scale=0.3,
  )
  cached = th.forward_with_thoughts(
    model, tokens(3), STARTS, U, prefix_len=TIGHT[0], rest_len=TIGHT[1]
  )
  ref = th.forward_with_thoughts(model, tokens(3), STARTS, U, method="reforward")
  np.testing.assert_allclose(cached.thoughts_BUD, ref.thoughts_BUD, atol=1e-5, rtol=1e-5)
  valid = valid_mask()
  np.testing.assert_allclose(
    np.asarray(cached.logits_BTV)[valid], np.asarray(ref.logits_BTV)[valid], atol=2e-5, rtol=1e-5
  )


def detached(model, tokens_BT, latent_start_B, *, num_thoughts, **unused):
  """Thoughts computed, then fed back without a gradient path: what Coconut does *not* do."""
  thoughts = jax.lax.stop_gradient(
    th.reforward(model, tokens_BT, latent_start_B, num_thoughts=num_thoughts).thoughts_BUD
  )
  embeds, mask = th._thought_embeds(
    thoughts, nn.decoder.default_positions(*tokens_BT.shape), latent_start_B
  )
  out = model(tokens_BT, embeds_BTD=embeds, embeds_mask_BT=mask)
  return th.ThoughtOutput(out.logits_BTV, thoughts, out.final_hidden_BTD)


@functools.partial(jax.jit, static_argnums=(0, 1))
def loss_grads(
  graphdef, forward, state, tokens_BT, latent_start_B, weights_BT, num_thoughts_B=None
):
  """Shifted cross-entropy on the weighted positions plus a term on the thoughts themselves."""

  def loss(state):
    out = forward(
      nnx.merge(graphdef, state),
      tokens_BT,
      latent_start_B,
      num_thoughts=U,
      num_thoughts_B=num_thoughts_B,
      prefix_len=TIGHT[0],
      rest_len=TIGHT[1],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits_BTV[:, :-1], tokens_BT[:, 1:])
    return (ce * weights_BT[:, 1:]).sum() + 0.1 * jnp.square(out.thoughts_BUD).mean()

  return jax.value_and_grad(loss)(state)


def test_gradients_flow_through_thoughts(gpt2):
  graphdef, state = nnx.split(gpt2)
  tok = jnp.asarray(tokens())
  after_thoughts = np.arange(T)[None] >= (STARTS + U)[:, None]
  weights = jnp.asarray(valid_mask() & after_thoughts, jnp.float32)  # loss only after the thoughts
  args = (state, tok, jnp.asarray(STARTS), weights)
  loss_c, grads_c = loss_grads(graphdef, th.cached_forward, *args)
  loss_r, grads_r = loss_grads(graphdef, th.reforward, *args)
  np.testing.assert_allclose(loss_c, loss_r, rtol=1e-5)
  flat_c, flat_r = jax.tree.leaves(grads_c), jax.tree.leaves(grads_r)
  scale = max(
    float(np.abs(g).max()) for g in flat_r
  )  # k biases have ~0 gradient (softmax shift invariance)
  for g_c, g_r in zip(flat_c, flat_r):
    np.testing.assert_allclose(g_c, g_r, rtol=1e-4, atol=1e-5 * scale)
  _, grads_d = loss_grads(graphdef, detached, *args)
  gap = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads_d), flat_r))
  assert gap > 1e-3, "gradients through the fed-back thoughts should change the parameter gradients"


@pytest.mark.parametrize(
  "bounds", [(None, None), TIGHT, CLAMPED], ids=["default", "tight", "clamped"]
)
def test_per_row_counts_equal_reforward(gpt2, bounds):
  """Per-row counts (one row without thoughts): the cached forward equals the re-forward reference,
  the thoughts past a row's count are zero, and each row equals its own forward with its count for
  every row."""
  tok = tokens(7)
  cached = th.forward_with_thoughts(
    gpt2,
    tok,
    STARTS,
    U,
    num_thoughts_B=COUNTS,
    prefix_len=bounds[0],
    rest_len=bounds[1],
    lengths_B=LENGTHS,
  )
  ref = th.forward_with_thoughts(gpt2, tok, STARTS, U, num_thoughts_B=COUNTS, method="reforward")
  np.testing.assert_allclose(cached.thoughts_BUD, ref.thoughts_BUD, atol=1e-5, rtol=1e-5)
  assert (np.asarray(cached.thoughts_BUD)[np.arange(U)[None] >= COUNTS[:, None]] == 0).all()
  valid = valid_mask()
  np.testing.assert_allclose(
    np.asarray(cached.logits_BTV)[valid], np.asarray(ref.logits_BTV)[valid], atol=2e-5, rtol=1e-5
  )
  for b, count in enumerate(COUNTS):
    alone = th.forward_with_thoughts(
      gpt2, tok[b : b + 1], STARTS[b : b + 1], int(count), method="reforward"
    )
    end = LENGTHS[b]
    np.testing.assert_allclose(
      np.asarray(cached.logits_BTV)[b, :end],
      np.asarray(alone.logits_BTV)[0, :end],
      atol=2e-5,
      rtol=1e-5,
    )


def test_per_row_counts_gradients(gpt2):
  graphdef, state = nnx.split(gpt2)
  weights = jnp.asarray(valid_mask() & (np.arange(T)[None] >= STARTS[:, None]), jnp.float32)
  args = (state, jnp.asarray(tokens(8)), jnp.asarray(STARTS), weights, jnp.asarray(COUNTS))
  loss_c, grads_c = loss_grads(graphdef, th.cached_forward, *args)
  loss_r, grads_r = loss_grads(graphdef, th.reforward, *args)
  np.testing.assert_allclose(loss_c, loss_r, rtol=1e-5)
  flat_r = jax.tree.leaves(grads_r)
  scale = max(float(np.abs(g).max()) for g in flat_r)
  for g_c, g_r in zip(jax.tree.leaves(grads_c), flat_r):
    np.testing.assert_allclose(g_c, g_r, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("bounds", [(None, None), (9, 5)], ids=["default", "tight"])
def test_zero_thoughts_is_a_plain_forward(gpt2, bounds):
  tok = tokens(4)
  out = th.forward_with_thoughts(gpt2, tok, STARTS, 0, prefix_len=bounds[0], rest_len=bounds[1])
  plain = gpt2(jnp.asarray(tok))
  assert out.thoughts_BUD.shape == (3, 0, 64)
  valid = np.arange(T)[None] < (STARTS + (bounds[1] or T))[:, None]
  np.testing.assert_allclose(
    np.asarray(out.logits_BTV)[valid], np.asarray(plain.logits_BTV)[valid], atol=1e-5, rtol=1e-5
  )


def test_thought_is_post_final_norm_state_of_previous_position(gpt2):
  tok = tokens(5)
  out = th.forward_with_thoughts(gpt2, tok, STARTS, U, prefix_len=TIGHT[0], rest_len=TIGHT[1])
  embeds, mask = th._thought_embeds(
    out.thoughts_BUD, nn.decoder.default_positions(3, T), jnp.asarray(STARTS)
  )
  full = gpt2(jnp.asarray(tok), embeds_BTD=embeds, embeds_mask_BT=mask, return_hidden=True)
  post_norm = np.asarray(
    gpt2.final_norm(full.hidden[-1])
  )  # hidden[L] is the residual before the final norm
  for b, start in enumerate(STARTS):
    for k in range(U):
      np.testing.assert_allclose(
        out.thoughts_BUD[b, k], post_norm[b, start + k - 1], atol=1e-5, rtol=1e-5
      )
      assert (
        abs(
          float(
            np.linalg.norm(
              post_norm[b, start + k - 1] - np.asarray(full.hidden[-1])[b, start + k - 1]
            )
          )
        )
        > 1e-3
      )
    # The input embedding at a latent slot is the thought plus the position embedding.
    np.testing.assert_allclose(
      full.hidden[0][b, start : start + U],
      out.thoughts_BUD[b] + gpt2.position_embedding[...][start : start + U],
      atol=1e-5,
    )


def test_layout_checks():
  assert TIGHT == (9, 2)
  th.check_layout((3, T), STARTS, U, *TIGHT, lengths_B=LENGTHS)
  with pytest.raises(ValueError, match="must lie in"):
    th.check_layout((3, T), STARTS, U, prefix_len=8)
  with pytest.raises(ValueError, match="must lie in"):
    th.check_layout((3, T), np.array([0, 9, 7]), U)
  with pytest.raises(ValueError, match="tokens after its thoughts"):
    th.check_layout((3, T), STARTS, U, *TIGHT, lengths_B=LENGTHS + 1)
  with pytest.raises(ValueError, match="prefix_len=14"):
    th.check_layout((3, T), STARTS, U, prefix_len=14)
  with pytest.raises(ValueError, match="counts in"):
    th.check_layout((3, T), STARTS, U, num_thoughts_B=np.array([0, 4, 1]))
  with pytest.raises(ValueError, match="shorter than"):
    th.check_layout((3, T), STARTS, U, lengths_B=STARTS + 1, num_thoughts_B=np.array([2, 0, 1]))
  th.check_layout(
    (3, T), STARTS, U, *TIGHT, lengths_B=STARTS + 1, num_thoughts_B=np.array([1, 0, 1])
  )
  with pytest.raises(ValueError, match="method="):
    th.forward_with_thoughts(None, np.zeros((3, T), np.int32), STARTS, U, method="fast")


@pytest.mark.parametrize("shape", [(2, 2, 2), (4, 1, 2)], ids=lambda s: "x".join(map(str, s)))
def test_sharded_cached_equals_unsharded(devices8, gpt2, shape):
  starts, lengths = np.array([5, 9, 7, 6], np.int32), np.array([10, 14, 12, 11], np.int32)
  tok = np.random.default_rng(6).integers(0, V, (4, T)).astype(np.int32)
  bounds = th.layout_bounds(starts, lengths, U)
  graphdef, state = nnx.split(gpt2)
  reference = th.thought_forward(
    graphdef, state, tok, starts, num_thoughts=U, prefix_len=bounds[0], rest_len=bounds[1]
  )
  mesh = make_mesh(shape)
  abstract = nnx.state(nnx.eval_shape(lambda: nn.Transformer(gpt2.cfg, rngs=nnx.Rngs(0))))
  with jax.set_mesh(mesh):
    placed = jax.device_put(state, sharding.state_shardings(abstract, mesh))
    rows = jax.NamedSharding(mesh, sharding.spec_for(("batch",), (4,)))
    tok_s, starts_s = jax.device_put(
      (tok, starts),
      (jax.NamedSharding(mesh, sharding.spec_for(("batch", "length"), tok.shape)), rows),
    )
    out = th.thought_forward(
      graphdef, placed, tok_s, starts_s, num_thoughts=U, prefix_len=bounds[0], rest_len=bounds[1]
    )
  assert len(out.logits_BTV.sharding.device_set) == 8
  valid = np.arange(T)[None] < lengths[:, None]
  # Sharded matmuls sum in another order; on an AVX2-only host logits of size ~5 moved by up to
  # 9.5e-5.
  np.testing.assert_allclose(
    np.asarray(out.logits_BTV)[valid], np.asarray(reference.logits_BTV)[valid], atol=3e-4, rtol=1e-4
  )
  np.testing.assert_allclose(out.thoughts_BUD, reference.thoughts_BUD, atol=1e-4, rtol=1e-4)
