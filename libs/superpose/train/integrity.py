"""Content checksums of train-state arrays, to tell a checkpoint that reads back changed from a good
one.

A checksum is a function of an array's global contents only (not of how it is sharded), computed
where the array lives in one jitted pass: every 32-bit word ``w`` at flat position ``i`` is hashed
together with its position, ``e = fmix32(w ^ (i·φ + c))`` (murmur3's finaliser), and the job keeps
two sums mod 2³², ``Σ e`` and ``Σ e·(2i + 1)``. Integer sums are exact in any order, so every mesh,
every number of processes and every device kind give the same 64 bits; a change of any word changes
``e`` at random and shows with probability 1 − 2⁻⁶⁴. The check is not cryptographic (no protection
from someone who wants a collision), only from disks, copies and bugs.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_GOLDEN, _OFFSET = np.uint32(0x9E3779B1), np.uint32(0x7F4A7C15)


def _fmix32(h):
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bits of ``x`` as uint32 words: 8-byte types as two words per element, 1- and 2-byte types
  packed 4 or 2 to a word along the last axis when it divides (half or a quarter of the work: a bf16
  state costs half a pass of an f32 one), else one per word."""
  if jnp.issubdtype(x.dtype, jax.dtypes.extended):  # typed PRNG keys
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size in (4, 8):
    return lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words
  if size in (1, 2):
    narrow = lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size])
    per_word = 4 // size
    if x.ndim and x.shape[-1] % per_word == 0:
      return lax.bitcast_convert_type(
        narrow.reshape(x.shape[:-1] + (x.shape[-1] // per_word, per_word)), jnp.uint32
      )
    return narrow.astype(jnp.uint32)
  raise TypeError(f"no checksum for dtype {x.dtype}")


def _one(x: jax.Array) -> jax.Array:
  w = _words(x)
  index = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(w.ndim)):
    index = index + lax.broadcasted_iota(jnp.uint32, w.shape, d) * np.uint32(stride & 0xFFFFFFFF)
    stride *= w.shape[d]
  e = _fmix32(w ^ (index * _GOLDEN + _OFFSET))
  return jnp.stack(
    [
      jnp.sum(e, dtype=jnp.uint32),
      jnp.sum(e * (index * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32),
    ]
  )


_sums = jax.jit(lambda tree: jax.tree.map(_one, tree))


def _host(x) -> np.ndarray:
  # Replicated result: any process's first shard holds it (works for arrays spanning processes).
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_shards[0].data
  return np.asarray(x)


def _paths(tree) -> list[tuple[str, Any]]:
  return [
    (jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def _devices(leaf) -> tuple:
  sharding = getattr(leaf, "sharding", None)
  return tuple(sorted(d.id for d in sharding.device_set)) if sharding is not None else ()


def _hex_sums(leaves: list) -> list[str]:
  # One jitted computation per set of devices (a jit cannot mix arrays committed to different ones).
  groups: dict[tuple, list[int]] = {}
  for i, leaf in enumerate(leaves):
    groups.setdefault(_devices(leaf), []).append(i)
  out = [""] * len(leaves)
  for indices in groups.values():
    for i, s in zip(indices, _sums([leaves[i] for i in indices])):
      out[i] = "%08x%08x" % tuple(int(v) for v in _host(s))
  return out


def checksums(tree: Any) -> dict[str, dict]:
  """``{path: {"sum": 16 hex digits, "shape": [...], "dtype": name}}`` for every array leaf of
  ``tree``. Every process of a multi-process job must call it with the same tree (one jitted
  computation)."""
  leaves = _paths(tree)
  sums = _hex_sums([leaf for _, leaf in leaves])
  return {
    path: {"sum": s, "shape": list(np.shape(leaf)), "dtype": str(leaf.dtype)}
    for (path, leaf), s in zip(leaves, sums)
  }


def shape_mismatches(target: Any, saved: Mapping[str, dict]) -> list[str]:
  """Leaves of ``target`` (arrays or ShapeDtypeStructs) whose shape differs from the saved one."""
  out = []
  for path, leaf in _paths(target):
    if path in saved and list(leaf.shape) != list(saved[path]["shape"]):
      out.append(f"{path} saved {tuple(saved[path]['shape'])}, wanted {tuple(leaf.shape)}")
  return out


def mismatches(tree: Any, saved: Mapping[str, dict]) -> list[str]:
  """Leaves of ``tree`` (as read back) whose content differs from the saved checksum. Leaves that
  the checksums do not cover (another version's checkpoint) or that were cast to another dtype on
  reading are not compared."""
  leaves = [
    (p, leaf) for p, leaf in _paths(tree) if p in saved and str(leaf.dtype) == saved[p]["dtype"]
  ]
  got = _hex_sums([leaf for _, leaf in leaves])
  return [p for (p, _), s in zip(leaves, got) if s != saved[p]["sum"]]
