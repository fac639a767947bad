"""E experts as one trunk plus per-expert parameter deltas: the learnable side of
``superpose.nn.deltas``.

``ExpertDeltas`` holds, for every trunk parameter that gets one, the E deltas as ``nnx.Param``
leaves at the trunk parameter's own path (``blocks/0/attn/q/{a,b}``, ``final_norm/scale/d``), so its
pure dict reads like the trunk's and shards like it. ``__call__(gate_BTE)`` returns the
``superpose.nn.deltas.Delta`` that the Transformer's forward takes.

Which delta each parameter gets (by name, not only by rank: a (h, dh) ``q_bias`` is added, not
multiplied):
  * matrices (q, k, v, o, wi, wg, wo, …): ``LowRank`` a (E, *in, r), b (E, r, *out), with
    r = min(rank, prod(in), prod(out)) — a rank at or above every dimension is exact;
  * biases and norm scales: ``Full`` d (E, *shape) when ``vector_mode='full'``, none for ``'none'``;
  * the vocabulary and position tables (``token_embedding``, ``position_embedding``,
    ``unembedding``): ``embedding_mode`` 'lowrank' | 'full' | 'none';
  * paths matching any regex of ``skip`` (searched in ``"blocks/0/attn/q"``): none.
A scanned trunk (``blocks/attn/q`` with a leading layer axis) gives stacked deltas, (L, E, …).

Initialisation: a ~ N(0, σ²) with σ = 1/√prod(in) (σ = 1 for lookup tables, whose input is one-hot),
b = 0, d = 0. Every Δ is then exactly zero — a fresh module reproduces the trunk — yet it trains:
∂L/∂b = aᵀ (…) is non-zero from the first step (a zero a AND zero b would be a saddle that never
moves). The gate's gradient is zero until b moves. To start from the experts,
:func:`values_from_experts` and :meth:`ExpertDeltas.load`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn import deltas, sharding
from superpose.nn.deltas import Delta, Full, LowRank

TABLES = ("token_embedding", "position_embedding", "unembedding")
VECTOR_MODES = ("full", "none")
EMBEDDING_MODES = ("lowrank", "full", "none")


@dataclasses.dataclass(frozen=True)
class Entry:
  """The delta of one trunk parameter."""

  path: tuple[str | int, ...]  # the trunk's keys (int layer indices in a looped trunk)
  kind: str  # 'lowrank' | 'full'
  shape: tuple[int, ...]  # the trunk parameter's shape (with the layer axis when stacked)
  dtype: Any
  lead: int  # 1 for stacked blocks (leading layer axis), else 0
  n_in: int  # in dims of a LowRank (0 for Full)
  rank: int  # r of a LowRank (0 for Full)
  axes: tuple  # the trunk parameter's logical axes

  @property
  def name(self) -> str:
    return "/".join(map(str, self.path))

  def delta_shapes(self, num_deltas: int) -> dict[str, tuple[int, ...]]:
    lead, core = self.shape[: self.lead], self.shape[self.lead :]
    if self.kind == "full":
      return {"d": (*lead, num_deltas, *core)}
    return {
      "a": (*lead, num_deltas, *core[: self.n_in], self.rank),
      "b": (*lead, num_deltas, self.rank, *core[self.n_in :]),
    }

  def delta_axes(self) -> dict[str, tuple]:
    lead, core = self.axes[: self.lead], self.axes[self.lead :]
    if self.kind == "full":
      return {"d": (*lead, "experts", *core)}
    return {
      "a": (*lead, "experts", *core[: self.n_in], None),
      "b": (*lead, "experts", None, *core[self.n_in :]),
    }


def _key(k):
  return getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))


def _flat(tree, is_leaf) -> dict[tuple, Any]:
  return {
    tuple(_key(k) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  }


def plan(
  abs_params,
  rank: int,
  *,
  vector_mode: str = "full",
  embedding_mode: str = "lowrank",
  skip: Sequence[str] = (),
  axes=None,
) -> tuple[Entry, ...]:
  """Which delta every trunk parameter gets (see the module docstring); the one rule for shapes and
  values.

  abs_params: the trunk's params — an ``nnx.State`` of Variables (logical axes read from their
  metadata) or a pure dict of arrays / ``jax.ShapeDtypeStruct`` (axes from ``axes``, a pytree of
  tuples of the same structure, e.g. ``sharding.logical_axes(state)``; unnamed without it).
  """
  if vector_mode not in VECTOR_MODES:
    raise ValueError(
      f"ExpertDeltas: vector_mode={vector_mode!r}: must be one of {', '.join(VECTOR_MODES)}"
    )
  if embedding_mode not in EMBEDDING_MODES:
    raise ValueError(
      f"ExpertDeltas: embedding_mode={embedding_mode!r}: must be one of "
      f"{', '.join(EMBEDDING_MODES)}"
    )
  if rank < 1:
    raise ValueError(f"ExpertDeltas: rank={rank} must be >= 1")
  leaves = _flat(abs_params, lambda x: isinstance(x, nnx.Variable) or hasattr(x, "shape"))
  named = _flat(axes, lambda x: isinstance(x, tuple)) if axes is not None else {}
  scanned = deltas.scanned_layout([tuple(map(str, p)) for p in leaves])
  patterns = [re.compile(p) for p in skip]
  entries = []
  for path, leaf in leaves.items():
    name, where = str(path[-1]), "/".join(map(str, path))
    if any(p.search(where) for p in patterns):
      continue
    shape = tuple(leaf.shape)
    lead = 1 if scanned and path[0] == "blocks" else 0
    ndim = len(shape) - lead
    if isinstance(leaf, nnx.Variable) and leaf.get_metadata().get("out_sharding") is not None:
      leaf_axes = tuple(leaf.get_metadata()["out_sharding"])
    else:
      leaf_axes = tuple(named.get(path, (None,) * len(shape)))
    if len(path) == 1 and name in TABLES:
      kind = embedding_mode
    elif deltas.is_vector(name) or ndim < 2:
      kind = vector_mode
    else:
      kind = "lowrank"
    if kind == "none":
      continue
    n_in = deltas.in_dims(name, ndim) if kind == "lowrank" else 0
    core = shape[lead:]
    r = min(rank, math.prod(core[:n_in]), math.prod(core[n_in:])) if kind == "lowrank" else 0
    dtype = leaf.get_value().dtype if isinstance(leaf, nnx.Variable) else leaf.dtype
    entries.append(Entry(path, kind, shape, dtype, lead, n_in, r, leaf_axes))
  return tuple(entries)


def _is_lookup(entry: Entry) -> bool:
  return len(entry.path) == 1 and entry.path[0] in deltas.LOOKUP_TABLES


def _init_a(entry: Entry):
  fan_in = 1 if _is_lookup(entry) else math.prod(entry.shape[entry.lead :][: entry.n_in])
  return nnx.initializers.normal(1.0 / math.sqrt(fan_in))


class ExpertDeltas(nnx.Module):
  """E per-expert deltas of a trunk's parameters; ``__call__(gate_BTE)`` →
  ``superpose.nn.deltas.Delta``.

  The trunk is read for shapes, dtypes, logical axes and layout only (see :func:`plan`). Delta
  leaves shard like their trunk parameter, with the E axis ('experts') and the rank axis unsharded.
  """

  def __init__(
    self,
    abs_params,
    num_deltas: int,
    rank: int,
    *,
    vector_mode: str = "full",
    embedding_mode: str = "lowrank",
    skip: Sequence[str] = (),
    axes=None,
    rngs: nnx.Rngs,
  ):
    entries = plan(
      abs_params, rank, vector_mode=vector_mode, embedding_mode=embedding_mode, skip=skip, axes=axes
    )
    top = {
      p[0] for p in _flat(abs_params, lambda x: isinstance(x, nnx.Variable) or hasattr(x, "shape"))
    }
    self.num_deltas, self.rank = int(num_deltas), int(rank)
    self.tied_embeddings = "token_embedding" in top and "unembedding" not in top
    self.entries = entries
    tree: dict = {}
    for e in entries:
      node = tree
      for key in e.path:
        node = node.setdefault(key, {})
      shapes, leaf_axes = e.delta_shapes(self.num_deltas), e.delta_axes()
      for part, shape in shapes.items():
        init = _init_a(e) if part == "a" else nnx.initializers.zeros
        node[part] = sharding.param(rngs, init, shape, leaf_axes[part], e.dtype)
    for key, sub in tree.items():
      if hasattr(self, key):
        raise ValueError(f"ExpertDeltas: a trunk parameter named {key!r} clashes with an attribute")
      setattr(self, key, _container(sub))

  @classmethod
  def for_config(
    cls, cfg, num_deltas: int, rank: int, *, rngs: nnx.Rngs, **kwargs
  ) -> "ExpertDeltas":
    """Deltas for a ``superpose.nn.Transformer`` of config ``cfg`` (its abstract params, axes
    included)."""
    from superpose.nn.decoder import Transformer

    abstract = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    return cls(abstract, num_deltas, rank, rngs=rngs, **kwargs)

  def _leaf(self, e: Entry) -> dict[str, nnx.Param]:
    node = getattr(self, e.path[0])
    for key in e.path[1:]:
      node = node[key]
    return node

  def delta_params(self) -> dict:
    """The nested dict of LowRank / Full values that ``Delta.params`` takes (the trunk's keys)."""
    out: dict = {}
    for e in self.entries:
      node = out
      for key in e.path[:-1]:
        node = node.setdefault(key, {})
      leaf = self._leaf(e)
      value = {
        part: param.get_value() for part, param in leaf.items()
      }  # get_value: abstract modules too
      node[e.path[-1]] = Full(value["d"]) if e.kind == "full" else LowRank(value["a"], value["b"])
    return out

  def __call__(self, gate_BTE: jax.Array) -> Delta:
    if gate_BTE.shape[-1] != self.num_deltas:
      raise ValueError(
        f"ExpertDeltas: a gate over {gate_BTE.shape[-1]} for {self.num_deltas} deltas"
      )
    return Delta(gate_BTE, self.delta_params())

  def load(self, values) -> None:
    """Set every delta from a pure dict like :func:`values_from_experts` returns (missing entries
    raise).

    Eager: a concrete sharded parameter keeps its sharding; an abstract one (``nnx.eval_shape``)
    becomes the given array.
    """
    for e in self.entries:
      node, leaf = values, self._leaf(e)
      for key in e.path:
        node = node[key]
      for part, param in leaf.items():
        target = param.get_value()
        value = jnp.asarray(node[part], target.dtype)
        if value.shape != target.shape:
          raise ValueError(
            f"ExpertDeltas.load: {e.name}/{part} has shape {value.shape}, expected {target.shape}"
          )
        if isinstance(target, jax.Array) and not isinstance(target, jax.core.Tracer):
          value = jax.device_put(value, target.sharding)
        param.set_value(value)

  def flops_per_token(self) -> int:
    """Forward FLOPs per token of every delta path (``superpose.nn.deltas.flops_per_token``)."""
    return deltas.flops_per_token(self.delta_params(), tied_embeddings=self.tied_embeddings)

  def num_params(self) -> int:
    return sum(
      math.prod(shape) for e in self.entries for shape in e.delta_shapes(self.num_deltas).values()
    )


def _container(tree: dict):
  """nnx.Dict of str keys; an nnx.List for layer indices (empty nnx.Dicts where a layer has no
  delta)."""
  if not isinstance(tree, dict):
    return tree
  if tree and all(isinstance(k, int) for k in tree):
    return nnx.List(
      [_container(tree[i]) if i in tree else nnx.Dict() for i in range(max(tree) + 1)]
    )
  return nnx.Dict({str(k): _container(v) for k, v in tree.items()})


def values_from_experts(
  trunk_params,
  expert_params: Sequence,
  rank: int,
  *,
  vector_mode: str = "full",
  embedding_mode: str = "lowrank",
  skip: Sequence[str] = (),
) -> dict:
  """The pure dict of delta values (``{path: {'a', 'b'} | {'d'}}``) of E experts against the trunk.

  Matrices: the balanced truncated SVD of θ_k − θ_trunk (``deltas.lowrank_from_difference``,
  float64, per layer for stacked blocks); Full entries: the exact differences. Params may be pure
  dicts or ``nnx.State``s of the same layout; the result loads with :meth:`ExpertDeltas.load` for
  the same ``rank`` and modes.
  """

  def pure(p):
    return nnx.to_pure_dict(p) if isinstance(p, nnx.State) else p

  trunk = _flat(pure(trunk_params), lambda x: hasattr(x, "shape"))
  experts = [_flat(pure(p), lambda x: hasattr(x, "shape")) for p in expert_params]
  out: dict = {}
  for e in plan(
    pure(trunk_params), rank, vector_mode=vector_mode, embedding_mode=embedding_mode, skip=skip
  ):
    theta = np.asarray(trunk[e.path], np.float64)
    diffs = [np.asarray(x[e.path], np.float64) - theta for x in experts]
    if e.kind == "full":
      parts = {"d": np.stack(diffs, axis=e.lead)}
    else:
      layers = [
        [d[i] for i in range(d.shape[0])] if e.lead else [d] for d in diffs
      ]  # [expert][layer]
      pairs = [
        [deltas.lowrank_from_difference(m, e.rank, e.n_in) for m in per_layer]
        for per_layer in layers
      ]
      # (E, …) per layer, then the layer axis in front for stacked blocks.
      a, b = (
        [np.stack([pairs[k][i][j] for k in range(len(diffs))]) for i in range(len(layers[0]))]
        for j in (0, 1)
      )
      parts = {"a": np.stack(a) if e.lead else a[0], "b": np.stack(b) if e.lead else b[0]}
    node = out
    for key in e.path:
      node = node.setdefault(key, {})
    node.update({name: jnp.asarray(value, e.dtype) for name, value in parts.items()})
  return out


ExpertDeltas.values_from_experts = staticmethod(values_from_experts)
