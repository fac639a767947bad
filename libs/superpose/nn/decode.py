"""Autoregressive generation: prefill + the whole decode loop in one ``jax.jit``.

Functional style: pass the (graphdef, state) pair from ``nnx.split(model)`` once; the model is
merged inside the jit and the loop body only calls it on arrays.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.nn.cache import init_cache

log = logging.getLogger(__name__)


def sample_logits(
  logits_BV: jax.Array,
  rng: jax.Array,
  temperature: float | jax.Array = 0.0,
  top_k: int | None = None,
  *,
  greedy: bool | None = None,
) -> jax.Array:
  """Greedy for ``temperature == 0``; else softmax(logits / temperature) restricted to the top k.

  Under jit pass ``greedy`` (static) and the temperature may then be a traced scalar.
  """
  if greedy is None:
    greedy = float(temperature) == 0.0
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k is not None:
    kth_BV = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV >= kth_BV, logits_BV, -jnp.inf)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _checked_args(
  name, prompt_BT, prompt_lengths_B, max_new_tokens, rng, temperature, top_k, eos_id
):
  """The checked arguments of a jitted generator: (prompt, lengths, rng, temperature), statics."""
  if rng is None:
    if temperature != 0.0:
      raise ValueError(f"{name}: sampling with temperature > 0 needs rng")
    rng = jax.random.key(0)
  if temperature < 0:
    raise ValueError(f"{name}: temperature={temperature} must be >= 0")
  if max_new_tokens < 1:
    raise ValueError(f"{name}: max_new_tokens={max_new_tokens} must be >= 1")
  args = (
    jnp.asarray(prompt_BT, jnp.int32),
    jnp.asarray(prompt_lengths_B, jnp.int32),
    rng,
    jnp.float32(max(temperature, 1e-6)),
  )
  statics = dict(
    max_new_tokens=int(max_new_tokens),
    greedy=temperature == 0.0,
    top_k=None if top_k is None else int(top_k),
    eos_id=None if eos_id is None else int(eos_id),
  )
  return args, statics


def _eos_step(token_B, done_B, lengths_B, n, eos_id):
  """After new token n: rows already done emit ``eos_id``; a row's first EOS fixes its length."""
  if eos_id is None:
    return token_B, done_B, lengths_B
  token_B = jnp.where(done_B, eos_id, token_B)
  newly_done_B = ~done_B & (token_B == eos_id)
  return token_B, done_B | newly_done_B, jnp.where(newly_done_B, n + 1, lengths_B)


def generate(
  graphdef,
  state,
  prompt_BT: jax.Array,
  prompt_lengths_B: jax.Array,
  max_new_tokens: int,
  *,
  rng: jax.Array | None = None,
  temperature: float = 0.0,
  top_k: int | None = None,
  eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Continue right-padded prompts of different lengths; returns (tokens (B, N), lengths (B,)).

  Row b's prompt is ``prompt_BT[b, :prompt_lengths_B[b]]``; the rest of the row is ignored. New
  token n of row b sits at absolute position ``prompt_lengths_B[b] + n``. With ``eos_id``, a row
  stops at its first EOS: later tokens are ``eos_id`` and ``lengths`` counts the tokens up to and
  including that EOS (``max_new_tokens`` for rows that never emit it).
  """
  args, kwargs = _checked_args(
    "generate", prompt_BT, prompt_lengths_B, max_new_tokens, rng, temperature, top_k, eos_id
  )
  return _generate(graphdef, state, *args, **kwargs)


@functools.partial(
  jax.jit, static_argnums=(0,), static_argnames=("max_new_tokens", "greedy", "top_k", "eos_id")
)
def _generate(
  graphdef,
  state,
  prompt_BT,
  prompt_lengths_B,
  rng,
  temperature,
  *,
  max_new_tokens,
  greedy,
  top_k,
  eos_id,
):
  model = nnx.merge(graphdef, state)
  if model.cfg.attention == "splash":  # splash cannot read a cache; same weights, xla attention
    log.info(
      "generate: attention='splash' cannot decode from a KV cache; using 'xla' for generation"
    )
    from superpose.nn.decoder import Transformer

    model = nnx.eval_shape(
      lambda: Transformer(model.cfg.replace(attention="xla"), rngs=nnx.Rngs(0))
    )
    nnx.update(model, state)
  batch, prompt_len = prompt_BT.shape
  if model.cfg.positions == "learned" and prompt_len + max_new_tokens > model.cfg.max_seq_len:
    raise ValueError(
      f"generate: {prompt_len} prompt + {max_new_tokens} new tokens exceed the learned position "
      f"table (max_seq_len={model.cfg.max_seq_len})"
    )
  cache = init_cache(model.cfg, batch, prompt_len + max_new_tokens)
  positions_BT = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
  # Padding gets segment 0, so the cache slots it fills are invisible to the real tokens; decoding
  # overwrites them one by one as each row advances past its own prompt.
  segments_BT = (positions_BT < prompt_lengths_B[:, None]).astype(jnp.int32)
  out = model(prompt_BT, positions_BT=positions_BT, segment_ids_BT=segments_BT, cache=cache)
  last_BV = jnp.take_along_axis(out.logits_BTV, (prompt_lengths_B - 1)[:, None, None], axis=1)[:, 0]
  rng, first_rng = jax.random.split(rng)
  token_B = sample_logits(last_BV, first_rng, temperature, top_k, greedy=greedy)
  tokens_BN = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(token_B)
  done_B = jnp.zeros((batch,), bool) if eos_id is None else token_B == eos_id
  lengths_B = jnp.where(done_B, 1, max_new_tokens).astype(jnp.int32)

  def step(n, carry):
    tokens_BN, cache, done_B, lengths_B, rng = carry
    previous_B = tokens_BN[:, n - 1]
    positions_B1 = (prompt_lengths_B + n - 1)[:, None]
    out = model(previous_B[:, None], positions_BT=positions_B1, cache=cache)
    rng, step_rng = jax.random.split(rng)
    token_B = sample_logits(out.logits_BTV[:, 0], step_rng, temperature, top_k, greedy=greedy)
    token_B, done_B, lengths_B = _eos_step(token_B, done_B, lengths_B, n, eos_id)
    return tokens_BN.at[:, n].set(token_B), out.cache, done_B, lengths_B, rng

  tokens_BN, _, _, lengths_B, _ = jax.lax.fori_loop(
    1, max_new_tokens, step, (tokens_BN, out.cache, done_B, lengths_B, rng)
  )
  return tokens_BN, lengths_B


def generate_uncached(
  graphdef,
  state,
  prompt_BT,
  prompt_lengths_B,
  max_new_tokens: int,
  *,
  rng: jax.Array | None = None,
  temperature: float = 0.0,
  top_k: int | None = None,
  eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """:func:`generate` for any causal module whose call maps tokens (B, T) to logits (B, T, V) (or to
  an output with ``logits_BTV``) but keeps no KV cache — e.g. a superposition of experts: one full
  forward per new token over a fixed width, in one jit. The same rows, rngs and EOS handling as
  :func:`generate`, so both give the same tokens for a Transformer."""
  args, kwargs = _checked_args(
    "generate_uncached",
    prompt_BT,
    prompt_lengths_B,
    max_new_tokens,
    rng,
    temperature,
    top_k,
    eos_id,
  )
  return _generate_uncached(graphdef, state, *args, **kwargs)


@functools.partial(
  jax.jit, static_argnums=(0,), static_argnames=("max_new_tokens", "greedy", "top_k", "eos_id")
)
def _generate_uncached(
  graphdef,
  state,
  prompt_BT,
  prompt_lengths_B,
  rng,
  temperature,
  *,
  max_new_tokens,
  greedy,
  top_k,
  eos_id,
):
  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompt_BT.shape
  width = prompt_len + max_new_tokens
  rows_B = jnp.arange(batch)
  tokens_BT = jnp.zeros((batch, width), jnp.int32).at[:, :prompt_len].set(prompt_BT)
  tokens_BT = jnp.where(jnp.arange(width)[None] < prompt_lengths_B[:, None], tokens_BT, 0)

  def step(n, carry):
    tokens_BT, done_B, lengths_B, rng = carry
    out = model(tokens_BT)
    logits_BTV = getattr(out, "logits_BTV", out)
    last_BV = jnp.take_along_axis(logits_BTV, (prompt_lengths_B + n - 1)[:, None, None], axis=1)[
      :, 0
    ]
    rng, step_rng = jax.random.split(rng)
    token_B = sample_logits(last_BV, step_rng, temperature, top_k, greedy=greedy)
    token_B, done_B, lengths_B = _eos_step(token_B, done_B, lengths_B, n, eos_id)
    return tokens_BT.at[rows_B, prompt_lengths_B + n].set(token_B), done_B, lengths_B, rng

  done_B = jnp.zeros((batch,), bool)
  lengths_B = jnp.full((batch,), max_new_tokens, jnp.int32)
  tokens_BT, _, lengths_B, _ = jax.lax.fori_loop(
    0, max_new_tokens, step, (tokens_BT, done_B, lengths_B, rng)
  )
  new_BN = jnp.take_along_axis(
    tokens_BT, prompt_lengths_B[:, None] + jnp.arange(max_new_tokens)[None], axis=1
  )
  return new_BN, lengths_B
