"""Per-token gated parameter deltas: the forward at token (b, t) uses θ + Σ_k gate[b, t, k] · Δ_k.

E experts fine-tuned from one trunk are held as the trunk plus E deltas per parameter: low-rank
(``LowRank``: Δ_k = a_k · b_k) for matrices, full (``Full``) for vectors (biases, norm scales). The
gate is per token, so every parameter's delta only adds a token-wise term to that parameter's
output, and it is computed as such — two small einsums through the rank axis, (B, T, E, r) — never
as a dense (B, T, in, out) matrix. That also makes the KV-cache path work unchanged: a token's keys
and values are computed once, with that token's gate.

A :class:`Delta` holds the gate and a nested dict mirroring the Transformer's pure param dict
(``token_embedding``, ``position_embedding``, ``blocks/<i>/attn/q`` …, ``final_norm/scale``,
``unembedding``) with a ``LowRank`` or ``Full`` leaf for every parameter that has a delta (any
subset). With ``scan_layers`` the ``blocks`` sub-dict is stacked like the params (``blocks/attn/q``
with a leading layer axis on every array; ``superpose.nn.stack_layers`` converts a looped dict).
Modules take ``delta=None`` (today's computation, unchanged) or the :func:`sub` Delta of their own
parameters.

"In" dims of a matrix (contracted with the module's input): q/k/v (d, h, dh) and wi/wg (d, f), wo
(f, d), unembedding (D, V): the first dim; o (h, dh, d): the first two; token_embedding (V, D) and
position_embedding (P, D): the row that the lookup picks (the tied head multiplies by the
transpose).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Leading "in" dims of each matrix parameter of the Transformer, by name (other matrices: 1).
MATRIX_IN_DIMS = {
  "q": 1,
  "k": 1,
  "v": 1,
  "o": 2,
  "wi": 1,
  "wg": 1,
  "wo": 1,
  "token_embedding": 1,
  "position_embedding": 1,
  "unembedding": 1,
}
LOOKUP_TABLES = ("token_embedding", "position_embedding")  # top-level tables read by row
_VECTOR_NAME = re.compile(r"(^|_)(bias|scale)$")


@struct.dataclass
class LowRank:
  """Δ_k = a_k · b_k. a: (E, *in, r), b: (E, r, *out); the number of in dims is ``a.ndim - 2``."""

  a: jax.Array
  b: jax.Array


@struct.dataclass
class Full:
  """Δ_k = d_k, d: (E, *param_shape)."""

  d: jax.Array


@struct.dataclass
class Delta:
  """The per-token weights of the E deltas and the deltas of (a sub-tree of) the parameters."""

  gate_BTE: jax.Array  # any real numbers: softmax, one-hot, … is the caller's choice
  params: Mapping[str, Any]


def is_vector(name: str) -> bool:
  """Biases and norm scales (``q_bias``, ``scale``, …) are added to an output, not multiplied with
  an input."""
  return bool(_VECTOR_NAME.search(name))


def in_dims(name: str, ndim: int) -> int:
  """How many leading dims of matrix parameter ``name`` the input contracts with (1 for unknown
  names)."""
  if ndim < 2 or is_vector(name):
    raise ValueError(f"deltas: {name!r} of rank {ndim} is not a matrix parameter")
  return MATRIX_IN_DIMS.get(name, 1)


def _child(tree, key):
  """``tree[key]`` for str or int keys of a layer index (pure dicts of an nnx.List use int keys)."""
  if key in tree:
    return tree[key]
  alt = (
    str(key)
    if isinstance(key, int)
    else int(key)
    if isinstance(key, str) and key.isdigit()
    else None
  )
  if alt is not None and alt in tree:
    return tree[alt]
  return None


def sub(delta: Delta | None, *keys) -> Delta | None:
  """The Delta of a sub-module (same gate, ``params[keys[0]][keys[1]]…``), or None when it has
  none."""
  if delta is None:
    return None
  params = delta.params
  for key in keys:
    params = _child(params, key) if isinstance(params, Mapping) else None
    if not params:
      return None
  return Delta(delta.gate_BTE, params)


def entry(delta: Delta | None, name: str) -> LowRank | Full | None:
  """The delta of parameter ``name`` of this module, or None."""
  return None if delta is None else delta.params.get(name)


def _einsum(equation: str, x, w, dtype, out_dtype=None):
  """layers.einsum (operands in the compute dtype, f32 accumulation), here to avoid a circular
  import."""
  out = jnp.einsum(equation, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  return out.astype(dtype if out_dtype is None else out_dtype)


def _letters(first: str, n: int) -> str:
  return "".join(chr(ord(first) + i) for i in range(n))


def linear(x, entry: LowRank | Full, gate_BTE, n_in: int, dtype, out_dtype=None) -> jax.Array:
  """Σ_k g_k · x · Δ_k for x (B, T, *in): (B, T, *out).

  LowRank goes through the rank: u = x · a_k (B, T, E, r), scaled by the gate, then · b_k. Full
  contracts x with every d_k (B, T, E, *out) and then sums over k with the gate.
  """
  ins = _letters("c", n_in)  # c… (never b, t, k, r: those are named)
  if isinstance(entry, LowRank):
    outs = _letters("u", entry.b.ndim - 2)
    u = _einsum(f"...{ins},k{ins}r->...kr", x, entry.a, dtype)
    u = u * gate_BTE[..., None].astype(dtype)
    return _einsum(f"...kr,kr{outs}->...{outs}", u, entry.b, dtype, out_dtype)
  outs = _letters("u", entry.d.ndim - 1 - n_in)
  per_k = _einsum(f"...{ins},k{ins}{outs}->...k{outs}", x, entry.d, dtype)
  return _einsum(f"...k{outs},...k->...{outs}", per_k, gate_BTE, dtype, out_dtype)


def vector(entry: Full, gate_BTE, dtype) -> jax.Array:
  """Σ_k g_k · d_k: (B, T, *param_shape).

  Written as E element-wise products (E is a handful of experts), not a dot: XLA fuses them into the
  add that consumes them, where a dot would write a (B, T, *shape) array of its own for every bias
  and norm."""
  if not isinstance(entry, Full):
    raise TypeError(f"deltas: a vector parameter takes a Full delta, got {type(entry).__name__}")
  d = entry.d.astype(jnp.float32)
  g = gate_BTE.astype(jnp.float32)
  extra = (1,) * (d.ndim - 1)
  out = sum(g[..., k].reshape(g.shape[:-1] + extra) * d[k] for k in range(d.shape[0]))
  return out.astype(dtype)


def lookup(ids_BT, entry: LowRank | Full, gate_BTE, dtype) -> jax.Array:
  """Σ_k g_k · Δ_k[ids]: the delta of an embedding-table lookup (rows of a, or of d, gathered)."""
  if isinstance(entry, LowRank):
    rows_BTER = jnp.moveaxis(jnp.take(entry.a, ids_BT, axis=1), 0, -2)
    u = rows_BTER.astype(dtype) * gate_BTE[..., None].astype(dtype)
    return _einsum("...kr,krd->...d", u, entry.b, dtype)
  rows_BTED = jnp.moveaxis(jnp.take(entry.d, ids_BT, axis=1), 0, -2)
  return _einsum("...kd,...k->...d", rows_BTED, gate_BTE, dtype)


def transpose(entry: LowRank | Full, n_in: int) -> LowRank | Full:
  """The delta of the transposed matrix (out dims first): the tied head's view of the token
  table."""
  if isinstance(entry, LowRank):
    return LowRank(a=jnp.moveaxis(entry.b, 1, -1), b=jnp.moveaxis(entry.a, -1, 1))
  n_out = entry.d.ndim - 1 - n_in
  order = (0, *range(1 + n_in, 1 + n_in + n_out), *range(1, 1 + n_in))
  return Full(d=jnp.transpose(entry.d, order))


def add_linear(y, x, delta: Delta | None, name: str, n_in: int, dtype):
  """``y`` plus the delta term of matrix ``name`` applied to ``x`` (``y`` itself when there is
  none)."""
  e = entry(delta, name)
  return y if e is None else y + linear(x, e, delta.gate_BTE, n_in, dtype).astype(y.dtype)


def add_vector(y, delta: Delta | None, name: str):
  """``y`` plus Σ_k g_k Δ_k of the added parameter ``name`` (``y`` itself when there is none)."""
  e = entry(delta, name)
  return y if e is None else y + vector(e, delta.gate_BTE, y.dtype)


# Checks -------------------------------------------------------------------------------------------
def _flatten(tree) -> dict[tuple[str, ...], Any]:
  """{path of str keys: leaf} with LowRank / Full (and shape-carrying objects) as leaves."""
  is_leaf = lambda x: isinstance(x, (LowRank, Full)) or hasattr(x, "shape")
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {
    tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): leaf
    for path, leaf in flat
  }


def scanned_layout(paths) -> bool:
  """Whether flattened param paths hold stacked blocks (``blocks/attn/q``, not
  ``blocks/0/attn/q``)."""
  return any(len(p) > 1 and p[0] == "blocks" and not p[1].isdigit() for p in paths)


def validate(delta: Delta, trunk_params) -> None:
  """Raise ValueError unless every delta matches a trunk parameter (path, shape, in dims, E).

  A delta at a path the model does not have (a bias delta with ``use_bias=False``, a looped
  ``blocks/0/…`` dict for a scanned model) would otherwise be ignored silently. ``trunk_params``:
  the model's params (an ``nnx.State`` or pure dict; only shapes are read).
  """
  trunk = {p: tuple(v.shape) for p, v in _flatten(trunk_params).items()}
  scanned = scanned_layout(trunk)
  k = delta.gate_BTE.shape[-1]
  problems = []
  for path, e in _flatten(delta.params).items():
    where = "/".join(path)
    if not isinstance(e, (LowRank, Full)):
      problems.append(f"{where}: a {type(e).__name__}, not a LowRank or Full delta")
      continue
    if path not in trunk:
      problems.append(f"{where}: the model has no such parameter")
      continue
    lead = 1 if scanned and path[0] == "blocks" else 0
    shape, name = trunk[path], path[-1]
    if isinstance(e, LowRank):
      if is_vector(name) or len(shape) < 2:
        problems.append(
          f"{where}: the parameter {shape} is added, it takes a Full delta, not LowRank"
        )
        continue
      n_in, want = e.a.ndim - 2 - lead, in_dims(name, len(shape))
      if n_in != want:
        problems.append(f"{where}: LowRank a has {n_in} in dims; the parameter {shape} has {want}")
        continue
      if e.a.shape[-1] != e.b.shape[lead + 1]:
        problems.append(f"{where}: a has rank {e.a.shape[-1]}, b has rank {e.b.shape[lead + 1]}")
      got_k = (e.a.shape[lead], e.b.shape[lead])
      got = e.a.shape[:lead] + e.a.shape[lead + 1 : -1] + e.b.shape[lead + 2 :]
    else:
      got_k = (e.d.shape[lead],)
      got = e.d.shape[:lead] + e.d.shape[lead + 1 :]
    if got != shape:
      problems.append(f"{where}: delta of shape {got} for a parameter of shape {shape}")
    if any(g != k for g in got_k):
      problems.append(f"{where}: {got_k[0]} deltas for a gate over {k}")
  if problems:
    raise ValueError("deltas do not fit the model:\n  " + "\n  ".join(problems))


# Construction and cost ----------------------------------------------------------------------------
def lowrank_from_difference(diff, rank: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
  """Balanced rank-r factors of ONE expert's difference θ_expert − θ_trunk (numpy, float64 SVD).

  diff (*in, *out) is read as a (prod(in), prod(out)) matrix; its truncated SVD U_r S_r V_rᵀ is the
  best rank-r approximation (Eckart–Young) and is split as a = U_r √S_r (*in, r), b = √S_r V_rᵀ
  (r, *out), so that both factors have the same scale. ``rank`` is capped at min(prod(in),
  prod(out)).
  """
  diff = np.asarray(diff)
  in_shape, out_shape = diff.shape[:n_in], diff.shape[n_in:]
  m, n = math.prod(in_shape), math.prod(out_shape)
  r = min(rank, m, n)
  u, s, vt = np.linalg.svd(diff.reshape(m, n).astype(np.float64), full_matrices=False)
  root = np.sqrt(s[:r])
  a = (u[:, :r] * root).reshape(*in_shape, r)
  b = (root[:, None] * vt[:r]).reshape(r, *out_shape)
  dtype = diff.dtype if np.issubdtype(diff.dtype, np.floating) else np.float64
  return a.astype(dtype), b.astype(dtype)


def flops_per_token(delta_params, *, tied_embeddings: bool) -> int:
  """Forward FLOPs per token of the delta paths: 2 per multiply-add (E, layers and ranks included).

  LowRank matrix: x·a_k and u·b_k, 2·(a.size + b.size) (the per-layer sizes summed over layers);
  embedding lookups gather rows of a, so only the b-matmul counts, 2·b.size; Full vector: Σ_k g_k
  d_k, 2·d.size; Full matrix: 2·d.size; Full lookup: 2·d.size / rows. With ``tied_embeddings`` the
  token table's delta also runs through the head (transposed): its matmuls count once more. The
  gate's scaling of u (E·r multiplies) and the adds into the trunk's outputs are not counted. Leaves
  only need ``.shape`` (ShapeDtypeStructs work).
  """
  total = 0
  for path, e in _flatten(delta_params).items():
    if isinstance(e, LowRank):
      a_size, b_size = math.prod(e.a.shape), math.prod(e.b.shape)
      if len(path) == 1 and path[0] in LOOKUP_TABLES:
        total += 2 * b_size
        if tied_embeddings and path[0] == "token_embedding":
          total += 2 * (a_size + b_size)
      else:
        total += 2 * (a_size + b_size)
    elif isinstance(e, Full):
      d_size = math.prod(e.d.shape)
      if len(path) == 1 and path[0] in LOOKUP_TABLES:
        total += 2 * d_size // e.d.shape[1]
        if tied_embeddings and path[0] == "token_embedding":
          total += 2 * d_size
      else:
        total += 2 * d_size
  return total
