"""KV cache and generation: incremental decoding reproduces the full forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn.testing import random_model as build

V = 40
SMALL = dict(vocab_size=V, d_model=32, num_layers=2, num_heads=4, max_seq_len=32, d_ff=64)


@functools.partial(jax.jit, static_argnums=(0, 3))
def full_and_incremental(graphdef, state, tokens_BT, num_prefill):
  """Full-forward logits, and the same logits from a prefill of `num_prefill` tokens + 1-token
  steps."""
  model = nnx.merge(graphdef, state)
  batch, length = tokens_BT.shape
  full = model(tokens_BT).logits_BTV
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  out = model(
    tokens_BT[:, :num_prefill],
    positions_BT=positions[:, :num_prefill],
    cache=nn.init_cache(model.cfg, batch, length + 2),
  )
  pieces, cache = [out.logits_BTV], out.cache
  for t in range(num_prefill, length):
    out = model(tokens_BT[:, t : t + 1], positions_BT=positions[:, t : t + 1], cache=cache)
    pieces.append(out.logits_BTV)
    cache = out.cache
  return full, jnp.concatenate(pieces, axis=1), cache


@pytest.mark.parametrize(
  "cfg",
  [
    nn.gpt2(**SMALL),
    nn.llama(**SMALL, num_kv_heads=2, scan_layers=True),
    nn.llama(**SMALL, num_kv_heads=1, head_dim=12, attention="cudnn"),
  ],
  ids=["gpt2", "llama_gqa_scan", "llama_mqa_cudnn"],
)
def test_prefill_and_steps_match_full_forward(cfg):
  model = build(cfg)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, 10)), jnp.int32)
  full, incremental, cache = full_and_incremental(*nnx.split(model), tokens, 7)
  np.testing.assert_allclose(incremental, full, atol=2e-5)
  assert cache.k.shape == (2, 2, 12, cfg.kv_heads, cfg.head_size) and cache.k.dtype == jnp.float32
  np.testing.assert_array_equal(cache.segment_ids, [[1] * 10 + [0] * 2] * 2)


@pytest.fixture(scope="module")
def llama():
  return build(nn.llama(**SMALL, num_kv_heads=2, scan_layers=True), seed=3)


PROMPTS = np.array([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6], [9, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([3, 6, 1], np.int32)
NEW = 5


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(graphdef, state, tokens_BT, lengths_B):
  logits = nnx.merge(graphdef, state)(tokens_BT).logits_BTV
  return jnp.take_along_axis(logits, (lengths_B - 1)[:, None, None], axis=1)[:, 0]


def greedy_by_full_forwards(model, prompts, lengths, new):
  """Reference: argmax of a full (causal, right-padded) forward after each appended token."""
  graphdef, state = nnx.split(model)
  buffer = np.zeros((len(prompts), prompts.shape[1] + new), np.int32)
  buffer[:, : prompts.shape[1]] = prompts
  lengths = lengths.copy()
  out = []
  for _ in range(new):
    token = np.asarray(
      _last_logits(graphdef, state, jnp.asarray(buffer), jnp.asarray(lengths))
    ).argmax(-1)
    buffer[np.arange(len(buffer)), lengths] = token
    lengths += 1
    out.append(token)
  return np.stack(out, 1)


def test_generate_greedy_equals_full_forward_argmax(llama):
  graphdef, state = nnx.split(llama)
  tokens, lengths = nn.generate(graphdef, state, PROMPTS, LENGTHS, NEW)
  assert tokens.shape == (3, NEW) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(lengths, [NEW] * 3)
  np.testing.assert_array_equal(tokens, greedy_by_full_forwards(llama, PROMPTS, LENGTHS, NEW))
  assert np.all(np.asarray(tokens) < V)  # padded vocab ids are never produced


def test_batched_rows_equal_rows_alone(llama):
  graphdef, state = nnx.split(llama)
  batched, _ = nn.generate(graphdef, state, PROMPTS, LENGTHS, NEW)
  for row in range(3):
    alone, _ = nn.generate(graphdef, state, PROMPTS[row : row + 1], LENGTHS[row : row + 1], NEW)
    np.testing.assert_array_equal(alone[0], batched[row])


def test_sampling_top_k_one_is_greedy_and_eos_stops(llama):
  graphdef, state = nnx.split(llama)
  greedy, _ = nn.generate(graphdef, state, PROMPTS, LENGTHS, NEW)
  greedy = np.asarray(greedy)
  eos = int(greedy[0, 1])  # row 0 emits it at step 1
  # top_k=1 sampling is greedy at any temperature (one compiled program: the temperature is traced)
  for temperature in (0.8, 50.0):
    tokens, lengths = nn.generate(
      graphdef,
      state,
      PROMPTS,
      LENGTHS,
      NEW,
      rng=jax.random.key(4),
      temperature=temperature,
      top_k=1,
      eos_id=eos,
    )
    for row in range(3):
      hits = np.flatnonzero(greedy[row] == eos)
      stop = hits[0] + 1 if hits.size else NEW
      assert lengths[row] == stop
      np.testing.assert_array_equal(tokens[row, :stop], greedy[row, :stop])
      assert np.all(np.asarray(tokens[row, stop:]) == eos)
  assert lengths[0] == 2


def test_uncached_generation_gives_the_cached_tokens(llama):
  """The full-forward decoder (models without a KV cache) draws the same tokens as the cached one:
  greedy, sampled with the same rng, and with EOS."""
  graphdef, state = nnx.split(llama)
  for kw in (
    dict(),
    dict(rng=jax.random.key(3), temperature=1.5, top_k=5),
    dict(
      rng=jax.random.key(4),
      temperature=0.8,
      eos_id=int(np.asarray(nn.generate(graphdef, state, PROMPTS, LENGTHS, NEW)[0])[0, 1]),
    ),
  ):
    cached = nn.generate(graphdef, state, PROMPTS, LENGTHS, NEW, **kw)
    full = nn.generate_uncached(graphdef, state, PROMPTS, LENGTHS, NEW, **kw)
    for a, b in zip(cached, full):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_logits_top_k_support():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 2000))
  draws = np.asarray(nn.sample_logits(logits, jax.random.key(0), temperature=1.0, top_k=2))
  assert set(draws.tolist()) == {2, 3}
  assert abs((draws == 3).mean() - 4 / 7) < 0.05


def test_cache_errors():
  model = build(nn.gpt2(**SMALL))
  cache = nn.init_cache(model.cfg, 1, 8)
  with pytest.raises(ValueError, match="pass positions_BT"):
    model(jnp.zeros((1, 2), jnp.int32), cache=cache)
  bidirectional = build(nn.gpt2(**SMALL, causal=False))
  with pytest.raises(ValueError, match="needs causal=True"):
    bidirectional(
      jnp.zeros((1, 2), jnp.int32), positions_BT=jnp.zeros((1, 2), jnp.int32), cache=cache
    )
  splash = build(nn.gpt2(**SMALL, attention="splash"))
  with pytest.raises(ValueError, match="splash' cannot read a KV cache"):
    splash(jnp.zeros((1, 2), jnp.int32), positions_BT=jnp.zeros((1, 2), jnp.int32), cache=cache)
