"""The decoder-only Transformer: embed → blocks (looped or scanned, optional remat) → final norm →
logits.

Parameter paths: ``token_embedding`` (V_pad, D), ``position_embedding`` (max_seq_len, D) for learned
positions, ``blocks`` (an ``nnx.List`` of Blocks, or one Block whose params carry a leading
``layers`` axis with ``scan_layers``), ``final_norm``, ``unembedding`` (D, V_pad) when untied.

Every forward piece takes an optional ``delta`` (``superpose.nn.deltas.Delta``): per-token gated
parameter deltas, θ + Σ_k gate[b, t, k] · Δ_k, mirroring these paths; None computes exactly as
before.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from superpose.nn import cache as cache_lib
from superpose.nn import deltas, layers, sharding
from superpose.nn.block import RESIDUAL_AXES, Block, remat_policy
from superpose.nn.cache import KVCache
from superpose.nn.config import TransformerConfig
from superpose.nn.layers import Norm

VOCAB_PAD_LOGIT = -1e9  # exp() underflows to 0, yet squares (z-loss) stay finite in f32

Hook = Callable[[jax.Array | int, jax.Array], jax.Array]


@struct.dataclass
class Output:
  logits_BTV: jax.Array  # f32, padded vocab; padded ids hold VOCAB_PAD_LOGIT
  final_hidden_BTD: jax.Array  # after the final norm, before the unembedding
  hidden: jax.Array | None = (
    None  # (L+1, B, T, D) residual stream; [0] = embeddings, [L] = before final norm
  )
  attention: jax.Array | None = None  # (L, B, H, T, S) attention probabilities (f32)
  cache: KVCache | None = None


class Transformer(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init, pdt = nnx.initializers.normal(cfg.init_std), cfg.params_dtype
    self.token_embedding = sharding.param(
      rngs, init, (cfg.padded_vocab, cfg.d_model), ("vocab", "embed"), pdt
    )
    self.position_embedding = (
      sharding.param(rngs, init, (cfg.max_seq_len, cfg.d_model), (None, "embed"), pdt)
      if cfg.positions == "learned"
      else None
    )
    if cfg.scan_layers:

      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(block_rngs):
        return Block(cfg, rngs=block_rngs)

      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = Norm(cfg, rngs=rngs) if cfg.final_norm and cfg.norm != "none" else None
    self.unembedding = (
      None
      if cfg.tie_embeddings
      else sharding.param(rngs, init, (cfg.d_model, cfg.padded_vocab), ("embed", "vocab"), pdt)
    )

  # Pieces -----------------------------------------------------------------------------------------
  def embed(
    self,
    tokens_BT=None,
    positions_BT=None,
    embeds_BTD=None,
    embeds_mask_BT=None,
    delta: deltas.Delta | None = None,
  ) -> jax.Array:
    """Token embeddings (or given input embeddings where ``embeds_mask_BT``) plus absolute
    positions.

    delta: the token table's delta applies to looked-up tokens only (not to given embeddings); the
    learned position table's delta to every position.
    """
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    if tokens_BT is None:
      if embeds_BTD is None:
        raise ValueError("Transformer.embed: pass tokens_BT, embeds_BTD or both")
      x_BTD = embeds_BTD.astype(dtype)
    else:
      table_VD = sharding.for_lookup(self.token_embedding[...], ("vocab", "embed"))
      x_BTD = jnp.take(table_VD, tokens_BT, axis=0).astype(dtype)
      if (token_delta := deltas.entry(delta, "token_embedding")) is not None:
        x_BTD = x_BTD + deltas.lookup(tokens_BT, token_delta, delta.gate_BTE, dtype)
      if embeds_BTD is not None:
        if embeds_mask_BT is None:
          raise ValueError(
            "Transformer.embed: with both tokens_BT and embeds_BTD, embeds_mask_BT says "
            "which positions take the given embeddings"
          )
        x_BTD = jnp.where(embeds_mask_BT[..., None], embeds_BTD.astype(dtype), x_BTD)
    if positions_BT is None:
      positions_BT = self._default_positions(*x_BTD.shape[:2])
    if cfg.positions == "learned":
      table_TD = sharding.for_lookup(self.position_embedding[...], (None, "embed"))
      x_BTD = x_BTD + jnp.take(table_TD, positions_BT, axis=0).astype(dtype)
      if (position_delta := deltas.entry(delta, "position_embedding")) is not None:
        x_BTD = x_BTD + deltas.lookup(positions_BT, position_delta, delta.gate_BTE, dtype)
    elif cfg.positions == "sinusoidal":
      # position_dims < d_model keeps the table in its own subspace (hand-set constructions).
      dims = cfg.position_dims or cfg.d_model
      table_BTX = layers.sinusoidal(positions_BT, dims).astype(dtype)
      x_BTD = x_BTD.at[..., cfg.d_model - dims :].add(table_BTX)
    return sharding.constrain(x_BTD, RESIDUAL_AXES)

  def run_blocks(
    self,
    x_BTD,
    *,
    positions_BT,
    segment_ids_BT=None,
    cache: KVCache | None = None,
    return_hidden=False,
    return_attention=False,
    hook: Hook | None = None,
    delta: deltas.Delta | None = None,
  ):
    """All blocks, with the hook after each.

    delta: its ``blocks`` sub-dict gives each block its deltas; with ``scan_layers`` the stacked
    leaves (leading layer axis) are scanned over with the block params, the gate is shared.
    Returns (x_BTD, hidden (L+1, B, T, D) with [0] = the input x_BTD, or None; attention (L, B, H,
    T, S) or None; the updated cache or None).
    """
    cfg = self.cfg
    embedded_BTD = x_BTD
    batch, length = x_BTD.shape[:2]
    if cache is None:
      mask_BTS = cache_lib.self_mask(segment_ids_BT, length, cfg.causal)
    else:
      if not cfg.causal:
        raise ValueError(
          "a KV cache needs causal=True (a bidirectional model must re-read the whole sequence)"
        )
      query_segments_BT = (
        jnp.ones((batch, length), jnp.int32)
        if segment_ids_BT is None
        else segment_ids_BT.astype(jnp.int32)
      )
      cache = cache_lib.write_segments(cache, query_segments_BT, positions_BT)
      mask_BTS = cache_lib.cache_mask(cache, positions_BT, query_segments_BT)

    def apply_block(graphdef, block_state, x, kv, block_delta):
      block = nnx.merge(graphdef, block_state)
      return block(
        x,
        positions_BT=positions_BT,
        mask_BTS=mask_BTS,
        segment_ids_BT=segment_ids_BT,
        kv_cache=kv,
        return_probs=return_attention,
        delta=block_delta,
      )

    if cfg.remat != "none":
      apply_block = jax.checkpoint(
        apply_block,
        policy=remat_policy(cfg.remat),
        static_argnums=(0,),
        prevent_cse=not cfg.scan_layers,
      )
    kv_in = None if cache is None else (cache.k, cache.v)
    blocks_delta = deltas.sub(delta, "blocks")

    if cfg.scan_layers:
      graphdef, stacked_state = nnx.split(self.blocks)

      def body(x, xs):
        block_state, index, kv, layer_params = xs
        block_delta = (
          None if layer_params is None else deltas.Delta(blocks_delta.gate_BTE, layer_params)
        )
        x, kv, probs = apply_block(graphdef, block_state, x, kv, block_delta)
        if hook is not None:
          x = hook(index, x)
        return x, (kv, probs, x if return_hidden else None)

      x_BTD, (kv_out, attention, hidden) = jax.lax.scan(
        body,
        x_BTD,
        (
          stacked_state,
          jnp.arange(cfg.num_layers),
          kv_in,
          None if blocks_delta is None else blocks_delta.params,
        ),
      )
    else:
      kvs, probs_list, hidden_list = [], [], []
      for index, block in enumerate(self.blocks):
        graphdef, block_state = nnx.split(block)
        kv = None if kv_in is None else (kv_in[0][index], kv_in[1][index])
        x_BTD, kv, probs = apply_block(
          graphdef, block_state, x_BTD, kv, deltas.sub(blocks_delta, index)
        )
        if hook is not None:
          x_BTD = hook(index, x_BTD)
        kvs.append(kv)
        probs_list.append(probs)
        hidden_list.append(x_BTD)
      kv_out = None if kv_in is None else tuple(jnp.stack(parts) for parts in zip(*kvs))
      attention = jnp.stack(probs_list) if return_attention else None
      hidden = jnp.stack(hidden_list) if return_hidden else None

    if hidden is not None:
      hidden = jnp.concatenate([embedded_BTD[None], hidden], axis=0)
    if cache is not None:
      cache = cache.replace(k=kv_out[0], v=kv_out[1])
    return x_BTD, hidden, attention, cache

  def apply_final_norm(self, x_BTD: jax.Array, delta: deltas.Delta | None = None) -> jax.Array:
    return (
      x_BTD if self.final_norm is None else self.final_norm(x_BTD, deltas.sub(delta, "final_norm"))
    )

  def logits(self, h_BTD: jax.Array, delta: deltas.Delta | None = None) -> jax.Array:
    """Unembedding of final hidden states (no norm), f32, padded vocab ids masked.

    delta: the head's delta; with tied embeddings that is the token table's, transposed
    (h · (E + Σ_k g_k ΔE_k)ᵀ).
    """
    cfg = self.cfg
    h = h_BTD.astype(cfg.compute_dtype)
    if cfg.tie_embeddings:
      table = self.token_embedding[...].astype(cfg.compute_dtype)
      logits_BTV = layers.projection("btd,vd->btv", h, table)
      if (head_delta := deltas.entry(delta, "token_embedding")) is not None:
        head_delta = deltas.transpose(head_delta, 1)
    else:
      table = self.unembedding[...].astype(cfg.compute_dtype)
      logits_BTV = layers.projection("btd,dv->btv", h, table)
      head_delta = deltas.entry(delta, "unembedding")
    if head_delta is not None:
      logits_BTV = logits_BTV + deltas.linear(
        h, head_delta, delta.gate_BTE, 1, cfg.compute_dtype, jnp.float32
      )
    if cfg.padded_vocab > cfg.vocab_size:
      logits_BTV = jnp.where(
        jnp.arange(cfg.padded_vocab) < cfg.vocab_size, logits_BTV, VOCAB_PAD_LOGIT
      )
    return sharding.constrain(logits_BTV, ("batch", "length", "act_vocab"))

  def unembed(self, x_BTD: jax.Array, delta: deltas.Delta | None = None) -> jax.Array:
    """Final norm + unembedding + vocab mask: residual stream → logits."""
    return self.logits(self.apply_final_norm(x_BTD, delta), delta)

  def _default_positions(self, batch: int, length: int) -> jax.Array:
    if self.cfg.positions == "learned" and length > self.cfg.max_seq_len:
      raise ValueError(
        f"Transformer: {length} tokens exceed the learned position table "
        f"(max_seq_len={self.cfg.max_seq_len})"
      )
    return default_positions(batch, length)

  # Forward ----------------------------------------------------------------------------------------
  def __call__(
    self,
    tokens_BT=None,
    *,
    positions_BT=None,
    segment_ids_BT=None,
    embeds_BTD=None,
    embeds_mask_BT=None,
    cache: KVCache | None = None,
    return_hidden=False,
    return_attention=False,
    hook: Hook | None = None,
    delta: deltas.Delta | None = None,
  ) -> Output:
    """Forward pass.

    positions_BT: absolute positions (default ``arange(T)`` per row; required with a cache).
    segment_ids_BT: packed documents; attention never crosses segments (0 = padding).
    embeds_BTD / embeds_mask_BT: input embeddings in place of the token embeddings where the mask is
      True (Coconut's continuous thoughts); with ``tokens_BT=None`` embeds_BTD is the whole input.
      Position embeddings are added to them as to tokens.
    cache: a KVCache; new keys/values are written at each row's positions and the updated cache is
      returned in ``Output.cache``.
    hook(layer_index, x_BTD) -> x_BTD edits the residual stream after each block (the index is a
      traced int32 with scan_layers, a Python int otherwise).
    delta: per-token gated parameter deltas (superpose.nn.deltas); gate_BTE is (B, T, E) for the
      tokens of this call, so a cached decode step passes the gate of its new tokens. Checked
      against the model's parameters (paths, shapes) when traced.
    """
    if positions_BT is None:
      if cache is not None:
        raise ValueError(
          "Transformer: with a cache, pass positions_BT (each row's absolute positions)"
        )
      reference = tokens_BT if tokens_BT is not None else embeds_BTD
      if reference is None:
        raise ValueError("Transformer: pass tokens_BT, embeds_BTD or both")
      positions_BT = self._default_positions(*reference.shape[:2])
    if delta is not None:
      if tuple(delta.gate_BTE.shape[:-1]) != tuple(positions_BT.shape):
        raise ValueError(
          f"Transformer: delta.gate_BTE {tuple(delta.gate_BTE.shape)} does not match "
          f"the {tuple(positions_BT.shape)} tokens of this call"
        )
      deltas.validate(delta, nnx.state(self, nnx.Param))
    x_BTD = self.embed(tokens_BT, positions_BT, embeds_BTD, embeds_mask_BT, delta)
    x_out, hidden, attention, cache = self.run_blocks(
      x_BTD,
      positions_BT=positions_BT,
      segment_ids_BT=segment_ids_BT,
      cache=cache,
      return_hidden=return_hidden,
      return_attention=return_attention,
      hook=hook,
      delta=delta,
    )
    final_hidden_BTD = self.apply_final_norm(x_out, delta)
    return Output(
      logits_BTV=self.logits(final_hidden_BTD, delta),
      final_hidden_BTD=final_hidden_BTD,
      hidden=hidden,
      attention=attention,
      cache=cache,
    )


def default_positions(batch: int, length: int) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


# Layer layout conversion --------------------------------------------------------------------------
def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _stack(*leaves):
  if _is_variable(leaves[0]):
    axes = leaves[0].get_metadata().get("out_sharding")
    value = jnp.stack([leaf.get_value() for leaf in leaves])
    return leaves[0].copy(value, out_sharding=None if axes is None else ("layers",) + tuple(axes))
  return jnp.stack(leaves)


def stack_layers(state):
  """Param state of a looped model (``blocks/<i>/...``) → scanned layout (``blocks/...`` stacked on
  axis 0).

  Works on an ``nnx.State`` (Variables keep their metadata; ``'layers'`` is prepended to
  ``out_sharding``) and on the plain nested dict of ``nnx.to_pure_dict``.
  """
  blocks = state["blocks"]
  per_layer = [blocks[i] for i in sorted(blocks.keys(), key=int)]  # "10" after "9" for str keys
  stacked = jax.tree.map(_stack, *per_layer, is_leaf=_is_variable)
  return _with_blocks(state, stacked)


def unstack_layers(state):
  """Scanned param state → looped layout; the inverse of :func:`stack_layers`."""
  blocks = state["blocks"]
  num_layers = jax.tree.leaves(blocks, is_leaf=_is_variable)[0].shape[0]

  def take(leaf, i):
    if _is_variable(leaf):
      axes = leaf.get_metadata().get("out_sharding")
      return leaf.copy(leaf.get_value()[i], out_sharding=None if axes is None else tuple(axes)[1:])
    return leaf[i]

  per_layer = {
    i: jax.tree.map(lambda leaf: take(leaf, i), blocks, is_leaf=_is_variable)
    for i in range(num_layers)
  }
  if isinstance(state, nnx.State):
    layered = nnx.State({})
    for i, layer in per_layer.items():
      layered[i] = layer
    per_layer = layered
  return _with_blocks(state, per_layer)


def _with_blocks(state, blocks):
  if isinstance(state, nnx.State):
    out = nnx.State({})
    for (
      key,
      value,
    ) in state.items():  # State.__setitem__ stores nested States as plain dicts, as nnx.state does
      out[key] = blocks if key == "blocks" else value
    return out
  return {**state, "blocks": blocks}
