"""Continuous thoughts (Coconut): the model sizes and the forward pass that feeds thoughts back.

At each latent slot the input embedding is the last-layer, post-final-norm hidden state of the
previous position (spec §2.3): the vector the tied LM head reads. Two implementations, same maths:

* :func:`cached_forward`: prefill the prefix once, then one single-position forward per thought
  against the KV cache, then the tokens after the thoughts (``[A]``, the target) in one short pass.
  The one thought forward of the package: evaluation, analysis, and the ``padded`` training path of
  ``train.py``.
* :func:`reforward`: the reference; one full forward of the whole sequence per thought, then a final
  full forward. Costs ``num_thoughts + 1`` full forwards.

Both take a static number of thought slots U (``num_thoughts``) and, optionally, a per-row count
``num_thoughts_B[b] ≤ U`` (default U for every row): row b has thoughts in its first
``num_thoughts_B[b]`` slots and its own tokens in the others (a row with fewer thoughts goes on with
its tokens there). Both are traceable functions of an NNX model (call them inside your own
``jax.jit`` / ``jax.grad``, gradients flow through the thoughts as in Coconut);
:func:`forward_with_thoughts` is the jitted functional entry point over ``nnx.split(model)``.
:func:`compact_forward` is the bucketed training path's forward: the same numbers at the columns a
loss can read, computing only what they depend on.

Layout (right-padded, per-row offsets). ``tokens_BT[b]`` is ``prefix | U latent slots | rest | pad``
with the first latent slot at column ``latent_start_B[b]``; row b's tokens sit at their natural
absolute positions (column = position), so rows of different prefix lengths share one fixed shape
and need no mask beyond causality: padding only ever follows the real tokens. (Coconut's collator
left-pads instead so that the first latent shares one column; right-padding keeps positions equal to
columns and cache slots, as in ``superpose.nn.decode``.) The token ids in a row's thought slots are
ignored. Static bounds keep the shapes fixed:

* ``prefix_len`` ≥ max ``latent_start_B`` (default ``T - U``): width of the prefill;
* ``rest_len`` ≥ max over rows of (tokens after the U slots) (default ``T - U - 1``, always enough):
  width of the last pass. Its window starts at ``latent_start + U``, clamped to ``T - rest_len``; a
  clamped window recomputes some earlier positions (thoughts fed back in place) with equal results.

Logits at columns past a row's ``latent_start + U + rest_len`` (its padding) are unspecified, and
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
from superpose.nn import layers
from superpose.nn.attention import MASK_VALUE
from superpose.nn.cache import write_rows

# The Reasoning-by-Superposition model is GPT-2 from scratch with 2 layers, 8 heads, d 768 (spec
# §2.1); the smaller ones keep the depth and change the width, for CPU runs and tests.
SIZES = {
  "paper": dict(d_model=768, num_layers=2, num_heads=8),
  "medium": dict(d_model=384, num_layers=2, num_heads=8),
  "small": dict(d_model=256, num_layers=2, num_heads=8),
  "d128": dict(d_model=128, num_layers=2, num_heads=4),
  "tiny": dict(d_model=64, num_layers=2, num_heads=4),
}


def model_config(
  size: str = "paper", *, vocab_size: int = 40, max_seq_len: int = 256, **overrides
) -> nn.TransformerConfig:
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
  logits_BTV: jax.Array  # f32, the whole sequence (teacher forcing), padded vocab
  thoughts_BUD: (
    jax.Array
  )  # thought k = the input embedding at column latent_start + k; 0 where k ≥ the count
  final_hidden_BTD: jax.Array  # post-final-norm hidden states of the whole sequence


def resolve_bounds(length: int, num_thoughts: int, prefix_len: int | None, rest_len: int | None):
  """(prefix_len, rest_len) with the defaults filled in, checked against the sequence length."""
  if num_thoughts < 0:
    raise ValueError(f"num_thoughts={num_thoughts}: must be >= 0")
  prefix = length - num_thoughts if prefix_len is None else int(prefix_len)
  rest = max(length - num_thoughts - 1, 0) if rest_len is None else int(rest_len)
  if not 1 <= prefix <= length - num_thoughts:
    raise ValueError(
      f"prefix_len={prefix}: must be in [1, T - num_thoughts = {length - num_thoughts}]"
    )
  if not 0 <= rest <= length:
    raise ValueError(f"rest_len={rest}: must be in [0, T = {length}]")
  return prefix, rest


def layout_bounds(latent_start_B, lengths_B, num_thoughts: int) -> tuple[int, int]:
  """The tightest (prefix_len, rest_len) for rows whose real tokens end at ``lengths_B``."""
  latent_start_B, lengths_B = np.asarray(latent_start_B), np.asarray(lengths_B)
  return int(latent_start_B.max()), int(max((lengths_B - latent_start_B - num_thoughts).max(), 0))


def check_layout(
  shape,
  latent_start_B,
  num_thoughts: int,
  prefix_len: int | None = None,
  rest_len: int | None = None,
  lengths_B=None,
  *,
  num_thoughts_B=None,
) -> None:
  """Eager check of concrete offsets (and per-row thought counts) against the bounds; one-line
  ValueError."""
  batch, length = shape
  prefix, rest = resolve_bounds(length, num_thoughts, prefix_len, rest_len)
  starts = np.asarray(latent_start_B)
  if starts.shape != (batch,):
    raise ValueError(f"latent_start_B has shape {starts.shape}; expected ({batch},)")
  if starts.min() < 1 or starts.max() > prefix:
    raise ValueError(
      f"latent_start_B in [{starts.min()}, {starts.max()}]: must lie in [1, prefix_len={prefix}] "
      "(a thought is the hidden state of the position before it)"
    )
  counts = np.full(batch, num_thoughts) if num_thoughts_B is None else np.asarray(num_thoughts_B)
  if counts.shape != (batch,) or counts.min() < 0 or counts.max() > num_thoughts:
    raise ValueError(
      f"num_thoughts_B={counts.tolist()}: must be {batch} counts in [0, "
      f"num_thoughts={num_thoughts}]"
    )
  if lengths_B is not None:
    after = np.asarray(lengths_B) - starts - num_thoughts
    if (after + num_thoughts - counts).min() < 0:
      raise ValueError("a row is shorter than its prefix + its thoughts")
    if after.max() > rest:
      raise ValueError(f"rest_len={rest}: a row has {after.max()} tokens after its thoughts")


def take_rows(x_BTX: jax.Array, index_BN: jax.Array) -> jax.Array:
  """``x[b, index[b, n]]`` for (B, T, ...) arrays."""
  index = index_BN.reshape(index_BN.shape + (1,) * (x_BTX.ndim - 2))
  return jnp.take_along_axis(x_BTX, index, axis=1)


def _thought_counts(batch: int, num_thoughts: int, num_thoughts_B) -> jax.Array:
  """Per-row thought counts (B,) int32: ``num_thoughts_B``, or ``num_thoughts`` for every row."""
  if num_thoughts_B is None:
    return jnp.full((batch,), num_thoughts, jnp.int32)
  return jnp.asarray(num_thoughts_B, jnp.int32)


def _thought_embeds(thoughts_BUD, positions_BN, latent_start_B, num_thoughts_B=None):
  """(embeddings, mask): thought k at position latent_start + k for k < the row's count (default all
  U slots), for any (B, N) block of positions."""
  batch, num_thoughts = thoughts_BUD.shape[:2]
  count_B = _thought_counts(batch, num_thoughts, num_thoughts_B)
  offset_BN = positions_BN - latent_start_B[:, None]
  mask_BN = (offset_BN >= 0) & (offset_BN < count_B[:, None])
  return take_rows(thoughts_BUD, jnp.clip(offset_BN, 0, num_thoughts - 1)), mask_BN


def cached_forward(
  model: nn.Transformer,
  tokens_BT,
  latent_start_B,
  *,
  num_thoughts: int,
  num_thoughts_B=None,
  prefix_len: int | None = None,
  rest_len: int | None = None,
) -> ThoughtOutput:
  """Prefill → U = ``num_thoughts`` KV-cached single-position steps → the tokens after them (module
  doc).

  Step k of row b feeds the previous post-norm hidden state where k < ``num_thoughts_B[b]`` (default
  U) and the row's own token at that column otherwise."""
  batch, length = tokens_BT.shape
  prefix, rest = resolve_bounds(length, num_thoughts, prefix_len, rest_len)
  latent_start_B = jnp.asarray(latent_start_B, jnp.int32)
  count_B = _thought_counts(batch, num_thoughts, num_thoughts_B)
  positions_BT = nn.decoder.default_positions(batch, length)

  cache = nn.init_cache(model.cfg, batch, length)
  out = model(tokens_BT[:, :prefix], positions_BT=positions_BT[:, :prefix], cache=cache)
  # Columns past a row's first latent hold placeholder inputs: their logits and cache slots are
  # overwritten below, and a query never sees a slot after its own position.
  padding = ((0, 0), (0, length - prefix), (0, 0))
  logits_BTV = jnp.pad(out.logits_BTV, padding)
  hidden_BTD = jnp.pad(out.final_hidden_BTD, padding)
  first_BD = take_rows(out.final_hidden_BTD, (latent_start_B - 1)[:, None])[:, 0]

  def think(carry, k):
    cache, prev_BD = carry
    positions_B1 = (latent_start_B + k)[:, None]
    is_thought_B1 = (k < count_B)[:, None]
    step = model(
      take_rows(tokens_BT, positions_B1),
      positions_BT=positions_B1,
      embeds_BTD=prev_BD[:, None],
      embeds_mask_BT=is_thought_B1,
      cache=cache,
    )
    next_BD = step.final_hidden_BTD[:, 0]
    thought_BD = jnp.where(is_thought_B1, prev_BD, jnp.zeros_like(prev_BD))
    return (step.cache, next_BD), (thought_BD, step.logits_BTV[:, 0], next_BD)

  (cache, _), (thoughts_UBD, step_logits_UBV, step_hidden_UBD) = jax.lax.scan(
    think, (out.cache, first_BD), jnp.arange(num_thoughts, dtype=jnp.int32)
  )
  thoughts_BUD = jnp.swapaxes(thoughts_UBD, 0, 1)
  thought_positions_BU = latent_start_B[:, None] + jnp.arange(num_thoughts, dtype=jnp.int32)
  logits_BTV = write_rows(logits_BTV, jnp.swapaxes(step_logits_UBV, 0, 1), thought_positions_BU)
  hidden_BTD = write_rows(hidden_BTD, jnp.swapaxes(step_hidden_UBD, 0, 1), thought_positions_BU)

  if rest > 0:
    start_B = jnp.minimum(latent_start_B + num_thoughts, length - rest)
    rest_positions_BN = start_B[:, None] + jnp.arange(rest, dtype=jnp.int32)
    embeds = (
      (None, None)
      if num_thoughts == 0
      else _thought_embeds(thoughts_BUD, rest_positions_BN, latent_start_B, count_B)
    )
    out = model(
      take_rows(tokens_BT, rest_positions_BN),
      positions_BT=rest_positions_BN,
      embeds_BTD=embeds[0],
      embeds_mask_BT=embeds[1],
      cache=cache,
    )
    logits_BTV = write_rows(logits_BTV, out.logits_BTV, rest_positions_BN)
    hidden_BTD = write_rows(hidden_BTD, out.final_hidden_BTD, rest_positions_BN)
  return ThoughtOutput(
    logits_BTV=logits_BTV, thoughts_BUD=thoughts_BUD, final_hidden_BTD=hidden_BTD
  )


def reforward(
  model: nn.Transformer,
  tokens_BT,
  latent_start_B,
  *,
  num_thoughts: int,
  num_thoughts_B=None,
  **unused_bounds,
) -> ThoughtOutput:
  """Reference: a full forward of the whole sequence per thought slot, then a final full forward.

  Thought k is read from the full forward in which thoughts 0..k-1 are in place (later latent slots
  hold zeros, which causality hides from every position that is read); a row's slots from its count
  ``num_thoughts_B[b]`` (default U) on hold its tokens.
  """
  batch, length = tokens_BT.shape
  latent_start_B = jnp.asarray(latent_start_B, jnp.int32)
  count_B = _thought_counts(batch, num_thoughts, num_thoughts_B)
  positions_BT = nn.decoder.default_positions(batch, length)
  thoughts_BUD = jnp.zeros((batch, num_thoughts, model.cfg.d_model), model.cfg.compute_dtype)

  def full(thoughts_BUD):
    if num_thoughts == 0:
      return model(tokens_BT)
    embeds_BTD, mask_BT = _thought_embeds(thoughts_BUD, positions_BT, latent_start_B, count_B)
    return model(tokens_BT, embeds_BTD=embeds_BTD, embeds_mask_BT=mask_BT)

  for k in range(num_thoughts):
    hidden_BTD = full(thoughts_BUD).final_hidden_BTD
    thought_BD = take_rows(hidden_BTD, (latent_start_B + k - 1)[:, None])[:, 0]
    thoughts_BUD = thoughts_BUD.at[:, k].set(jnp.where((k < count_B)[:, None], thought_BD, 0))
  out = full(thoughts_BUD)
  return ThoughtOutput(
    logits_BTV=out.logits_BTV, thoughts_BUD=thoughts_BUD, final_hidden_BTD=out.final_hidden_BTD
  )


METHODS = {"cached": cached_forward, "reforward": reforward}


@functools.partial(
  jax.jit, static_argnums=0, static_argnames=("num_thoughts", "prefix_len", "rest_len", "method")
)
def thought_forward(
  graphdef,
  state,
  tokens_BT,
  latent_start_B,
  *,
  num_thoughts: int,
  num_thoughts_B=None,
  prefix_len: int | None = None,
  rest_len: int | None = None,
  method: str = "cached",
) -> ThoughtOutput:
  """Jitted functional form over ``nnx.split(model)``; the whole thought loop runs inside the
  jit."""
  model = nnx.merge(graphdef, state)
  return METHODS[method](
    model,
    tokens_BT,
    latent_start_B,
    num_thoughts=num_thoughts,
    num_thoughts_B=num_thoughts_B,
    prefix_len=prefix_len,
    rest_len=rest_len,
  )


def forward_with_thoughts(
  model: nn.Transformer,
  tokens_BT,
  latent_start_B,
  num_thoughts: int,
  *,
  num_thoughts_B=None,
  prefix_len: int | None = None,
  rest_len: int | None = None,
  lengths_B=None,
  method: str = "cached",
) -> ThoughtOutput:
  """Logits of the whole sequence and the thought vectors; checks concrete offsets first.

  ``num_thoughts``: the thought slots U; ``num_thoughts_B`` (optional): per-row counts ≤ U.
  ``method``: ``'cached'`` (KV cache, one position per thought) or ``'reforward'`` (the reference).
  ``lengths_B`` (optional, real tokens per row) is only used to check ``rest_len`` before compiling.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if not isinstance(latent_start_B, jax.core.Tracer) and not isinstance(
    num_thoughts_B, jax.core.Tracer
  ):
    check_layout(
      tokens_BT.shape,
      latent_start_B,
      num_thoughts,
      prefix_len,
      rest_len,
      lengths_B,
      num_thoughts_B=num_thoughts_B,
    )
  graphdef, state = nnx.split(model)
  counts = None if num_thoughts_B is None else jnp.asarray(num_thoughts_B, jnp.int32)
  return thought_forward(
    graphdef,
    state,
    tokens_BT,
    jnp.asarray(latent_start_B, jnp.int32),
    num_thoughts=int(num_thoughts),
    num_thoughts_B=counts,
    prefix_len=prefix_len,
    rest_len=rest_len,
    method=method,
  )


# The training forward: logits only where a loss can be --------------------------------------------
#
# The pieces below apply a superpose.nn Block in parts (its projections, the attention over several
# key blocks, then the output projection, residuals, norms and MLP), with the same operations as
# superpose.nn.block.Block and superpose.nn.attention (xla); tests hold them equal to the model's
# forward.


def _attn_input(block, x_BTD):
  return (
    block.attn_norm(x_BTD)
    if block.attn_norm is not None and block.cfg.attn_norm == "pre"
    else x_BTD
  )


def _project(block, h_BTD, which: str, positions_BT):
  """The block's q, k or v of its (normed) input, RoPE applied to q and k when the model uses it."""
  attn, cfg = block.attn, block.cfg
  kernel, bias, axis = {
    "q": (attn.q, attn.q_bias, "act_heads"),
    "k": (attn.k, attn.k_bias, "act_kv_heads"),
    "v": (attn.v, attn.v_bias, "act_kv_heads"),
  }[which]
  y = attn._project(h_BTD, kernel, bias, axis, None, which)
  if which != "v" and cfg.positions == "rope":
    y = layers.rope(y, positions_BT, cfg.rope_theta)
  return y


def _attend(q_BTHA, parts, scale: float):
  """Softmax attention of the queries over the union of key blocks ``parts = [(k_BSKA, v_BSKA,
  mask_BTS)]``: one f32 softmax over all blocks' logits, GQA without repeated K/V —
  ``superpose.nn.attention.xla_attention`` over the concatenated blocks, without concatenating them.
  Heads-major layout and masks as an additive −1e30 (exact: x + 0 = x; x − 1e30 rounds to −1e30) are
  ~1.4× faster than the model's on CPU."""
  b, t, h, d = q_BTHA.shape
  kv = parts[0][0].shape[2]
  q_BKGTA = jnp.moveaxis((q_BTHA * scale).reshape(b, t, kv, h // kv, d), 1, 3)
  logits, sizes = [], []
  for k_BSKA, _, mask_BTS in parts:
    part = jnp.einsum(
      "bkgtd,bksd->bkgts", q_BKGTA, jnp.swapaxes(k_BSKA, 1, 2), preferred_element_type=jnp.float32
    )
    logits.append(part + jnp.where(mask_BTS, 0.0, MASK_VALUE)[:, None, None])
    sizes.append(k_BSKA.shape[1])
  probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
  out, start = 0.0, 0
  for (_, v_BSKA, _), size in zip(parts, sizes):
    p = probs[..., start : start + size].astype(v_BSKA.dtype)
    out = out + jnp.einsum(
      "bkgts,bksd->bkgtd", p, jnp.swapaxes(v_BSKA, 1, 2), preferred_element_type=jnp.float32
    )
    start += size
  return jnp.moveaxis(out, 3, 1).astype(q_BTHA.dtype).reshape(b, t, h, d)


def _finish(block, x_BTD, attn_BTHA):
  """The block after its attention: output projection, residual, norms, MLP."""
  cfg, attn = block.cfg, block.attn
  y = layers.einsum("bthk,hkd->btd", attn_BTHA, attn.o[...], cfg.compute_dtype)
  if attn.o_bias is not None:
    y = y + attn.o_bias[...].astype(y.dtype)
  x = x_BTD + y
  if block.attn_norm is not None and cfg.attn_norm == "post":
    x = block.attn_norm(x)
  h = block.mlp(block.mlp_norm(x) if block.mlp_norm is not None and cfg.mlp_norm == "pre" else x)
  x = x + h if cfg.mlp_residual else h
  if block.mlp_norm is not None and cfg.mlp_norm == "post":
    x = block.mlp_norm(x)
  return x


def compact_columns(latent_start_B, num_thoughts_B, *, max_thoughts: int, rest_len: int):
  """(columns (B, N), valid (B, N)) of the N = 1 + U + J logits of :func:`compact_forward`: the last
  prompt column ``latent_start − 1``, the U thought columns ``latent_start + k`` (valid where k <
  the row's count) and the J columns after the row's own thoughts, ``latent_start + count + j``."""
  ls = jnp.asarray(latent_start_B, jnp.int32)[:, None]
  count = jnp.asarray(num_thoughts_B, jnp.int32)[:, None]
  k = jnp.arange(max_thoughts, dtype=jnp.int32)[None]
  j = jnp.arange(rest_len, dtype=jnp.int32)[None]
  columns = jnp.concatenate([ls - 1, ls + k + 0 * count, ls + count + j], axis=1)
  valid = jnp.concatenate([jnp.ones_like(ls, bool), k < count, jnp.ones_like(ls + j, bool)], axis=1)
  return columns, valid


def compact_forward(
  model: nn.Transformer,
  tokens_BT,
  latent_start_B,
  num_thoughts_B,
  *,
  max_thoughts: int,
  prefix_len: int,
  rest_len: int,
):
  """Logits (B, 1 + U + J, V) at the :func:`compact_columns` of right-padded rows with a per-row
  number of thoughts ``num_thoughts_B[b] ≤ U = max_thoughts``: the numbers of :func:`cached_forward`
  (same counts, ``num_thoughts=U``) at those columns, computing only what they depend on. The
  bucketed training forward of ``train.py``; it runs the blocks in parts (below), which the model's
  own cached call cannot.

  Row b is ``prompt (latent_start_B[b] ≤ prefix_len columns) | count thoughts | J tokens``. A loss
  on these columns needs the last layer's output only there, while every column needs every layer's
  keys and values. So:

  1. prefix (``prefix_len`` columns): every block but the last in full; the last block's keys and
     values only, and its query, attention and MLP at the one column ``latent_start − 1`` (the first
     thought's input; the stage-0 / first CoT label). For 2 layers this skips ~40 % of the prefix
     matmuls and half its attention.
  2. U single-position thought steps, 3. the J tokens from ``latent_start + count`` in one pass.
     These attend to the prefix keys (those before ``latent_start``) and to a small per-layer
     *suffix* cache whose slot i holds position ``latent_start + i`` — no scatter into, or copy of,
     a full-length cache. A row with fewer thoughts computes steps nobody reads: their slots are
     overwritten by its rest tokens or lie after them.

  Needs ``scan_layers=False`` and a causal model (deltas are not supported).
  """
  cfg = model.cfg
  if cfg.scan_layers or not cfg.causal:
    raise ValueError(
      "compact_forward reads the blocks one by one: needs scan_layers=False and causal=True"
    )
  batch = tokens_BT.shape[0]
  U, J, P = int(max_thoughts), int(rest_len), int(prefix_len)
  ls = jnp.asarray(latent_start_B, jnp.int32)
  count = jnp.asarray(num_thoughts_B, jnp.int32)
  blocks = list(model.blocks)

  # 1. The prefix.
  positions_BP = nn.decoder.default_positions(batch, P)
  x = model.embed(tokens_BT[:, :P], positions_BP)
  causal_1PP = jnp.tril(jnp.ones((P, P), bool))[None]
  prefix = []
  for index, block in enumerate(blocks):
    h = _attn_input(block, x)
    k, v = _project(block, h, "k", positions_BP), _project(block, h, "v", positions_BP)
    prefix.append((k, v))
    if index < len(blocks) - 1:
      x = _finish(
        block, x, _attend(_project(block, h, "q", positions_BP), [(k, v, causal_1PP)], cfg.scale)
      )
    else:
      at_B1 = (ls - 1)[:, None]
      q = _project(block, take_rows(h, at_B1), "q", at_B1)
      mask_B1P = jnp.arange(P)[None, None, :] <= at_B1[:, :, None]
      x = _finish(block, take_rows(x, at_B1), _attend(q, [(k, v, mask_B1P)], cfg.scale))
  prev_B1D = model.apply_final_norm(x)
  logits = [model.logits(prev_B1D)]

  # 2.-3. Thoughts and the rest, against the prefix and the suffix cache.
  slots = U + J
  prompt_B1P = (jnp.arange(P)[None, :] < ls[:, None])[:, None, :]
  empty = jnp.zeros((batch, slots, cfg.kv_heads, cfg.head_size), cfg.compute_dtype)
  suffix = [(empty, empty) for _ in blocks]

  def run(x, positions_BT, slot, suffix):
    """Every block on new tokens at ``positions_BT`` whose suffix slots are ``slot`` (a scalar: the
    same for every row, one token per row; or (B, T) per-row slots). Returns (final hidden, updated
    suffix)."""
    out = []
    for block, (pk, pv), (ks, vs) in zip(blocks, prefix, suffix):
      h = _attn_input(block, x)
      q = _project(block, h, "q", positions_BT)
      k, v = _project(block, h, "k", positions_BT), _project(block, h, "v", positions_BT)
      if jnp.ndim(slot) == 0:
        ks = jax.lax.dynamic_update_slice_in_dim(ks, k, slot, axis=1)
        vs = jax.lax.dynamic_update_slice_in_dim(vs, v, slot, axis=1)
        mask_BTS = (jnp.arange(slots) <= slot)[None, None, :]
      else:
        ks, vs = write_rows(ks, k, slot), write_rows(vs, v, slot)
        mask_BTS = jnp.arange(slots)[None, None, :] <= slot[:, :, None]
      out.append((ks, vs))
      x = _finish(block, x, _attend(q, [(pk, pv, prompt_B1P), (ks, vs, mask_BTS)], cfg.scale))
    return model.apply_final_norm(x), out

  def think(carry, k_index):
    prev_B1D, suffix = carry
    positions_B1 = (ls + k_index)[:, None]
    hidden_B1D, suffix = run(
      model.embed(None, positions_B1, prev_B1D), positions_B1, k_index, suffix
    )
    return (hidden_B1D, suffix), model.logits(hidden_B1D)[:, 0]

  if U:
    (prev_B1D, suffix), step_logits_UBV = jax.lax.scan(
      think, (prev_B1D, suffix), jnp.arange(U, dtype=jnp.int32)
    )
    logits.append(jnp.swapaxes(step_logits_UBV, 0, 1))
  if J:
    slots_BN = count[:, None] + jnp.arange(J, dtype=jnp.int32)
    positions_BN = ls[:, None] + slots_BN
    hidden_BND, _ = run(
      model.embed(take_rows(tokens_BT, positions_BN), positions_BN), positions_BN, slots_BN, suffix
    )
    logits.append(model.logits(hidden_BND))
  return jnp.concatenate(logits, axis=1)
