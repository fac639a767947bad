"""Continuous thoughts (Coconut): the model sizes and the forward pass that feeds thoughts back.

At each latent slot the input embedding is the last-layer, post-final-norm hidden state of the
previous position (spec §2.3): the vector the tied LM head reads. Two implementations, same maths:

* :func:`cached_forward`: prefill the prefix once, then one single-position forward per thought
  against the KV cache, then the tokens after the thoughts (``[A]``, the target) in one short pass.
* :func:`reforward`: the reference; one full forward of the whole sequence per thought, then a final
  full forward. Costs ``num_thoughts + 1`` full forwards.

Both are traceable functions of an NNX model (call them inside your own ``jax.jit`` / ``jax.grad``,
gradients flow through the thoughts as in Coconut); :func:`forward_with_thoughts` is the jitted
functional entry point over ``nnx.split(model)``.

Layout (right-padded, per-row offsets). ``tokens_BT[b]`` is ``prefix | K latent slots | rest | pad``
with the first latent slot at column ``latent_start_B[b]``; row b's tokens sit at their natural
absolute positions (column = position), so rows of different prefix lengths share one fixed shape
and need no mask beyond causality: padding only ever follows the real tokens. (Coconut's collator
left-pads instead so that the first latent shares one column; right-padding keeps positions equal to
columns and cache slots, as in ``superpose.nn.decode``.) The token ids in the latent slots are ignored. Static bounds keep the shapes fixed:

* ``prefix_len`` ≥ max ``latent_start_B`` (default ``T - K``): width of the prefill;
* ``rest_len`` ≥ max over rows of (tokens after the thoughts) (default ``T - K - 1``, always enough):
  width of the last pass. Its window starts at ``latent_start + K``, clamped to ``T - rest_len``; a
  clamped window recomputes some earlier positions (thoughts fed back in place) with equal results.

Logits at columns past a row's ``latent_start + K + rest_len`` (its padding) are unspecified, and
differ between the two implementations. Needs ``attention='xla'`` or ``'cudnn'`` (splash cannot
read a cache). :func:`layout_bounds` gives the tightest bounds for a set of rows.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from superpose import nn
from superpose.nn.cache import write_rows

# The Reasoning-by-Superposition model is GPT-2 from scratch with 2 layers, 8 heads, d 768 (spec §2.1);
# the smaller ones keep the depth and change the width, for CPU runs and tests.
SIZES = {
    "paper": dict(d_model=768, num_layers=2, num_heads=8),
    "medium": dict(d_model=384, num_layers=2, num_heads=8),
    "small": dict(d_model=256, num_layers=2, num_heads=8),
    "tiny": dict(d_model=64, num_layers=2, num_heads=4),
}


def model_config(size: str = "paper", *, vocab_size: int = 40, max_seq_len: int = 256,
                 **overrides) -> nn.TransformerConfig:
  """The ``gpt2`` preset at one of :data:`SIZES` (d_ff = 4·d, learned positions, tied embeddings).

  ``vocab_size`` is the symbolic vocabulary (40 in the paper); it is padded to a multiple of 8
  only, as the unembedding of a 40-token vocabulary padded to 128 would cost 3× its worth.
  """
  if size not in SIZES:
    raise ValueError(f"model size {size!r}: must be one of {', '.join(SIZES)}")
  values = {**SIZES[size], "vocab_multiple": 8, **overrides}
  return nn.gpt2(vocab_size=vocab_size, max_seq_len=max_seq_len, **values)


@struct.dataclass
class ThoughtOutput:
  logits_BTV: jax.Array         # f32, the whole sequence (teacher forcing), padded vocab
  thoughts_BKD: jax.Array       # thought k = the input embedding at column latent_start + k
  final_hidden_BTD: jax.Array   # post-final-norm hidden states of the whole sequence


def resolve_bounds(length: int, num_thoughts: int, prefix_len: int | None, rest_len: int | None):
  """(prefix_len, rest_len) with the defaults filled in, checked against the sequence length."""
  if num_thoughts < 0:
    raise ValueError(f"num_thoughts={num_thoughts}: must be >= 0")
  prefix = length - num_thoughts if prefix_len is None else int(prefix_len)
  rest = max(length - num_thoughts - 1, 0) if rest_len is None else int(rest_len)
  if not 1 <= prefix <= length - num_thoughts:
    raise ValueError(f"prefix_len={prefix}: must be in [1, T - num_thoughts = {length - num_thoughts}]")
  if not 0 <= rest <= length:
    raise ValueError(f"rest_len={rest}: must be in [0, T = {length}]")
  return prefix, rest


def layout_bounds(latent_start_B, lengths_B, num_thoughts: int) -> tuple[int, int]:
  """The tightest (prefix_len, rest_len) for rows whose real tokens end at ``lengths_B``."""
  latent_start_B, lengths_B = np.asarray(latent_start_B), np.asarray(lengths_B)
  return int(latent_start_B.max()), int(max((lengths_B - latent_start_B - num_thoughts).max(), 0))


def check_layout(shape, latent_start_B, num_thoughts: int, prefix_len: int | None = None,
                 rest_len: int | None = None, lengths_B=None) -> None:
  """Eager check of concrete offsets against the bounds; one-line ValueError."""
  batch, length = shape
  prefix, rest = resolve_bounds(length, num_thoughts, prefix_len, rest_len)
  starts = np.asarray(latent_start_B)
  if starts.shape != (batch,):
    raise ValueError(f"latent_start_B has shape {starts.shape}; expected ({batch},)")
  if starts.min() < 1 or starts.max() > prefix:
    raise ValueError(f"latent_start_B in [{starts.min()}, {starts.max()}]: must lie in [1, prefix_len={prefix}] "
                     "(a thought is the hidden state of the position before it)")
  if lengths_B is not None:
    after = np.asarray(lengths_B) - starts - num_thoughts
    if after.min() < 0:
      raise ValueError(f"a row is shorter than its prefix + {num_thoughts} thoughts")
    if after.max() > rest:
      raise ValueError(f"rest_len={rest}: a row has {after.max()} tokens after its thoughts")


def _take_rows(x_BTX: jax.Array, index_BN: jax.Array) -> jax.Array:
  """``x[b, index[b, n]]`` for (B, T, ...) arrays."""
  index = index_BN.reshape(index_BN.shape + (1,) * (x_BTX.ndim - 2))
  return jnp.take_along_axis(x_BTX, index, axis=1)


def _thought_embeds(thoughts_BKD, positions_BN, latent_start_B):
  """(embeddings, mask): thought k at position latent_start + k, for any (B, N) block of positions."""
  num_thoughts = thoughts_BKD.shape[1]
  offset_BN = positions_BN - latent_start_B[:, None]
  mask_BN = (offset_BN >= 0) & (offset_BN < num_thoughts)
  return _take_rows(thoughts_BKD, jnp.clip(offset_BN, 0, num_thoughts - 1)), mask_BN


def cached_forward(model: nn.Transformer, tokens_BT, latent_start_B, *, num_thoughts: int,
                   prefix_len: int | None = None, rest_len: int | None = None) -> ThoughtOutput:
  """Prefill → one KV-cached forward per thought → the tokens after the thoughts (see module doc)."""
  batch, length = tokens_BT.shape
  prefix, rest = resolve_bounds(length, num_thoughts, prefix_len, rest_len)
  latent_start_B = jnp.asarray(latent_start_B, jnp.int32)
  positions_BT = nn.decoder.default_positions(batch, length)

  cache = nn.init_cache(model.cfg, batch, length)
  out = model(tokens_BT[:, :prefix], positions_BT=positions_BT[:, :prefix], cache=cache)
  # Columns past a row's first latent hold placeholder inputs: their logits and cache slots are
  # overwritten below, and a query never sees a slot after its own position.
  padding = ((0, 0), (0, length - prefix), (0, 0))
  logits_BTV = jnp.pad(out.logits_BTV, padding)
  hidden_BTD = jnp.pad(out.final_hidden_BTD, padding)
  first_BD = _take_rows(out.final_hidden_BTD, (latent_start_B - 1)[:, None])[:, 0]

  def think(carry, k):
    cache, thought_BD = carry
    step = model(None, positions_BT=(latent_start_B + k)[:, None], embeds_BTD=thought_BD[:, None], cache=cache)
    next_BD = step.final_hidden_BTD[:, 0]
    return (step.cache, next_BD), (thought_BD, step.logits_BTV[:, 0], next_BD)

  (cache, _), (thoughts_KBD, step_logits_KBV, step_hidden_KBD) = jax.lax.scan(
      think, (out.cache, first_BD), jnp.arange(num_thoughts, dtype=jnp.int32))
  thoughts_BKD = jnp.swapaxes(thoughts_KBD, 0, 1)
  thought_positions_BK = latent_start_B[:, None] + jnp.arange(num_thoughts, dtype=jnp.int32)
  logits_BTV = write_rows(logits_BTV, jnp.swapaxes(step_logits_KBV, 0, 1), thought_positions_BK)
  hidden_BTD = write_rows(hidden_BTD, jnp.swapaxes(step_hidden_KBD, 0, 1), thought_positions_BK)

  if rest > 0:
    start_B = jnp.minimum(latent_start_B + num_thoughts, length - rest)
    rest_positions_BR = start_B[:, None] + jnp.arange(rest, dtype=jnp.int32)
    embeds = (None, None) if num_thoughts == 0 else _thought_embeds(thoughts_BKD, rest_positions_BR, latent_start_B)
    out = model(_take_rows(tokens_BT, rest_positions_BR), positions_BT=rest_positions_BR,
                embeds_BTD=embeds[0], embeds_mask_BT=embeds[1], cache=cache)
    logits_BTV = write_rows(logits_BTV, out.logits_BTV, rest_positions_BR)
    hidden_BTD = write_rows(hidden_BTD, out.final_hidden_BTD, rest_positions_BR)
  return ThoughtOutput(logits_BTV=logits_BTV, thoughts_BKD=thoughts_BKD, final_hidden_BTD=hidden_BTD)


def reforward(model: nn.Transformer, tokens_BT, latent_start_B, *, num_thoughts: int, **unused_bounds) -> ThoughtOutput:
  """Reference: a full forward of the whole sequence per thought, then a final full forward.

  Thought k is read from the full forward in which thoughts 0..k-1 are in place (later latent slots
  hold zeros, which causality hides from every position that is read).
  """
  batch, length = tokens_BT.shape
  latent_start_B = jnp.asarray(latent_start_B, jnp.int32)
  positions_BT = nn.decoder.default_positions(batch, length)
  thoughts_BKD = jnp.zeros((batch, num_thoughts, model.cfg.d_model), model.cfg.compute_dtype)

  def full(thoughts_BKD):
    if num_thoughts == 0:
      return model(tokens_BT)
    embeds_BTD, mask_BT = _thought_embeds(thoughts_BKD, positions_BT, latent_start_B)
    return model(tokens_BT, embeds_BTD=embeds_BTD, embeds_mask_BT=mask_BT)

  for k in range(num_thoughts):
    hidden_BTD = full(thoughts_BKD).final_hidden_BTD
    thoughts_BKD = thoughts_BKD.at[:, k].set(_take_rows(hidden_BTD, (latent_start_B + k - 1)[:, None])[:, 0])
  out = full(thoughts_BKD)
  return ThoughtOutput(logits_BTV=out.logits_BTV, thoughts_BKD=thoughts_BKD, final_hidden_BTD=out.final_hidden_BTD)


METHODS = {"cached": cached_forward, "reforward": reforward}


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num_thoughts", "prefix_len", "rest_len", "method"))
def thought_forward(graphdef, state, tokens_BT, latent_start_B, *, num_thoughts: int, prefix_len: int | None = None,
                    rest_len: int | None = None, method: str = "cached") -> ThoughtOutput:
  """Jitted functional form over ``nnx.split(model)``; the whole thought loop runs inside the jit."""
  model = nnx.merge(graphdef, state)
  return METHODS[method](model, tokens_BT, latent_start_B, num_thoughts=num_thoughts, prefix_len=prefix_len,
                         rest_len=rest_len)


def forward_with_thoughts(model: nn.Transformer, tokens_BT, latent_start_B, num_thoughts: int, *,
                          prefix_len: int | None = None, rest_len: int | None = None, lengths_B=None,
                          method: str = "cached") -> ThoughtOutput:
  """Logits of the whole sequence and the thought vectors; checks concrete offsets first.

  ``method``: ``'cached'`` (KV cache, one position per thought) or ``'reforward'`` (the reference).
  ``lengths_B`` (optional, real tokens per row) is only used to check ``rest_len`` before compiling.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if not isinstance(latent_start_B, jax.core.Tracer):
    check_layout(tokens_BT.shape, latent_start_B, num_thoughts, prefix_len, rest_len, lengths_B)
  graphdef, state = nnx.split(model)
  return thought_forward(graphdef, state, tokens_BT, jnp.asarray(latent_start_B, jnp.int32),
                         num_thoughts=int(num_thoughts), prefix_len=prefix_len, rest_len=rest_len, method=method)
