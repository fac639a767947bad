"""Functional KV cache and the attention masks built from positions and segment ids.

Slot ``s`` of the cache holds the key/value of the token at absolute position ``s`` of its row, so
rows of one batch may sit at different positions. A query at position ``p`` sees the slots ``≤ p``
whose segment id equals its own; slots never written have segment 0 and a pad query (segment 0)
only ever sees other pad slots, whose outputs are garbage and must be ignored by the caller.
Writes at positions ``≥ max_len`` are dropped (jax scatter semantics), so size the cache for
prompt + generated tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding

from superpose.nn import sharding
from superpose.nn.config import TransformerConfig


@struct.dataclass
class KVCache:
  k: jax.Array  # (L, B, S, K, A), rotary-embedded keys when positions='rope'
  v: jax.Array  # (L, B, S, K, A)
  segment_ids: jax.Array  # (B, S) int32, 0 = empty slot or padding

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


KV_AXES = ("layers", "batch", "cache_length", "act_kv_heads", None)


def cache_shardings(cache: KVCache, mesh) -> KVCache:
  """NamedShardings for a (possibly abstract) cache from the logical-axis rules, for
  jit/device_put."""

  def named(axes, x):
    return NamedSharding(mesh, sharding.spec_for(axes, x.shape, mesh, what="kv_cache"))

  return KVCache(
    k=named(KV_AXES, cache.k),
    v=named(KV_AXES, cache.v),
    segment_ids=named(("batch", "cache_length"), cache.segment_ids),
  )


def init_cache(cfg: TransformerConfig, batch: int, max_len: int) -> KVCache:
  """An empty cache for ``batch`` rows of up to ``max_len`` positions, in the compute dtype."""
  shape = (cfg.num_layers, batch, max_len, cfg.kv_heads, cfg.head_size)
  zeros = sharding.constrain(jnp.zeros(shape, cfg.compute_dtype), KV_AXES)
  return KVCache(
    k=zeros,
    v=zeros,
    segment_ids=sharding.constrain(
      jnp.zeros((batch, max_len), jnp.int32), ("batch", "cache_length")
    ),
  )


def write_rows(cache_BS: jax.Array, new_BT: jax.Array, positions_BT: jax.Array) -> jax.Array:
  """``cache[b, positions[b, t]] = new[b, t]`` for every row and token (out-of-range writes
  dropped)."""
  rows_BT = jnp.broadcast_to(jnp.arange(new_BT.shape[0])[:, None], positions_BT.shape)
  return cache_BS.at[rows_BT, positions_BT].set(new_BT.astype(cache_BS.dtype), mode="drop")


def write_segments(cache: KVCache, segment_ids_BT: jax.Array, positions_BT: jax.Array) -> KVCache:
  segments = write_rows(cache.segment_ids, segment_ids_BT, positions_BT)
  return cache.replace(segment_ids=sharding.constrain(segments, ("batch", "cache_length")))


def self_mask(segment_ids_BT: jax.Array | None, length: int, causal: bool) -> jax.Array:
  """(B or 1, T, T) boolean mask for attention within one sequence: causal by index, same
  segment."""
  mask_TT = (
    jnp.tril(jnp.ones((length, length), bool)) if causal else jnp.ones((length, length), bool)
  )
  if segment_ids_BT is None:
    return mask_TT[None]
  return mask_TT[None] & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])


def cache_mask(cache: KVCache, positions_BT: jax.Array, segment_ids_BT: jax.Array) -> jax.Array:
  """(B, T, S) mask of a query block against the whole (already written) cache."""
  slots_S = jnp.arange(cache.max_len)
  visible = slots_S[None, None, :] <= positions_BT[:, :, None]
  return visible & (cache.segment_ids[:, None, :] == segment_ids_BT[:, :, None])
