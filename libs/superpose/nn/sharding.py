"""Logical axis names → mesh axes: one rules table for parameters and activations.

Every parameter carries a tuple of logical axis names in its ``out_sharding`` metadata and every key
activation is constrained with :func:`constrain`. :func:`spec_for` turns logical names into a
``PartitionSpec`` for a concrete shape: a mesh axis that does not divide its dimension is dropped
(that dimension is replicated) and the fact is logged once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Parameters: FSDP over `fsdp` on the model dimension, Megatron tensor parallelism over `tensor`.
# Activations use `act_*` names so that the model dimension of activations is not FSDP-sharded.
DEFAULT_RULES: Rules = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("norm", None),
  ("bottleneck", "tensor"),  # autoencoder bottleneck (superposed experts)
  ("control", None),  # spline control points
  ("experts", None),  # stacked experts / blend weights per expert
  ("layers", None),
  ("cache_length", None),
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
  "superpose_axis_rules", default=DEFAULT_RULES
)
_LOGGED: set[tuple] = set()


@contextlib.contextmanager
def axis_rules(rules: Rules | Sequence[Sequence[Any]] | None):
  """Use ``rules`` (logical name → mesh axes) inside the block; ``None`` keeps the current rules."""
  if rules is None:
    yield current_rules()
    return
  rules = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)
  token = _RULES.set(rules)
  try:
    yield rules
  finally:
    _RULES.reset(token)


def current_rules() -> Rules:
  return _RULES.get()


def _mesh_shape(mesh) -> dict[str, int]:
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return {}
  return dict(mesh.shape)


def _lookup(name: str | None, rules: Rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for key, axes in rules:
    if key == name:
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  raise KeyError(f"logical axis {name!r} has no entry in the sharding rules table")


def spec_for(
  axes: Sequence[str | None],
  shape: Sequence[int] | None = None,
  mesh=None,
  rules: Rules | None = None,
  what: str = "",
) -> P:
  """PartitionSpec for a tensor with logical ``axes`` (and ``shape``) on ``mesh`` (default:
  current)."""
  rules = current_rules() if rules is None else rules
  sizes = _mesh_shape(mesh)
  used: set[str] = set()
  out = []
  for dim, name in enumerate(axes):
    mesh_axes = [a for a in _lookup(name, rules) if a in sizes and sizes[a] > 1 and a not in used]
    if shape is not None and mesh_axes:
      n = math.prod(sizes[a] for a in mesh_axes)
      if shape[dim] % n:
        # Keep the longest prefix of mesh axes that divides; replicate the rest.
        kept = []
        for a in mesh_axes:
          if shape[dim] % (math.prod(sizes[b] for b in kept) * sizes[a]) == 0:
            kept.append(a)
        key = (what, tuple(shape), dim, tuple(mesh_axes))
        if key not in _LOGGED:
          _LOGGED.add(key)
          log.info(
            "sharding: %s dim %d (%s, size %d) does not divide mesh axes %s; using %s",
            what or "tensor",
            dim,
            name,
            shape[dim],
            mesh_axes,
            kept or "replicated",
          )
        mesh_axes = kept
    used.update(mesh_axes)
    out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op when no mesh is set (``jax.set_mesh``)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  if len(axes) != x.ndim:
    raise ValueError(
      f"constrain: {len(axes)} logical axes {tuple(axes)} for an array of rank {x.ndim}"
    )
  return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh))


def for_lookup(
  table: jax.Array, axes: Sequence[str | None], index_axis: str = "batch"
) -> jax.Array:
  """``table`` (logical ``axes``) ready for a gather by indices sharded like ``index_axis``.

  When the indices are sharded over mesh axes that also shard the table's non-gathered dims AND over
  further axes (data × fsdp batches against an fsdp-sharded embedding), XLA's SPMD partitioner
  cannot reshard the gather's output and falls back to an involuntary full rematerialization; the
  shared axes are then all-gathered first (what FSDP does for every weight). Otherwise — one batch
  axis, or no overlap — the table is returned as it is: XLA partitions that gather well, with less
  memory.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return table
  axes_for_gather = lookup_axes(axes, dict(mesh.shape), index_axis=index_axis)
  return table if axes_for_gather is None else constrain(table, axes_for_gather)


def lookup_axes(
  axes: Sequence[str | None],
  sizes: dict[str, int],
  rules: Rules | None = None,
  index_axis: str = "batch",
) -> tuple[str | None, ...] | None:
  """The logical axes :func:`for_lookup` constrains a table to on a mesh of ``sizes`` (None: leave
  it)."""
  rules = current_rules() if rules is None else rules
  index_mesh = {a for a in _lookup(index_axis, rules) if sizes.get(a, 1) > 1}
  table_mesh = {a for name in axes[1:] for a in _lookup(name, rules) if sizes.get(a, 1) > 1}
  shared = index_mesh & table_mesh
  if not shared or index_mesh == shared:
    return None
  return (
    axes[0],
    *(None if name is None or set(_lookup(name, rules)) & shared else name for name in axes[1:]),
  )


def param(
  rngs: nnx.Rngs,
  init: Callable,
  shape: Sequence[int],
  axes: Sequence[str | None],
  dtype=jnp.float32,
) -> nnx.Param:
  """A parameter with logical axis names; sharded later from the abstract state, never eagerly."""
  if len(axes) != len(shape):
    raise ValueError(f"param: axes {tuple(axes)} do not match shape {tuple(shape)}")
  value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def logical_axes(state) -> Any:
  """Pytree (like ``state``) of logical-axis tuples read from each Variable's metadata."""

  def axes_of(v):
    names = v.get_metadata().get("out_sharding")
    return tuple(names) if names is not None else (None,) * len(v.shape)

  return jax.tree.map(axes_of, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def state_shardings(state, mesh, rules: Rules | None = None) -> Any:
  """NamedShardings for every Variable of an (abstract) NNX state, from its logical axes."""

  def sharding_of(path, v):
    names = v.get_metadata().get("out_sharding") or (None,) * len(v.shape)
    what = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return NamedSharding(mesh, spec_for(names, v.shape, mesh, rules, what=what))

  return jax.tree_util.tree_map_with_path(
    sharding_of, state, is_leaf=lambda v: isinstance(v, nnx.Variable)
  )


def shard_count(sharding: NamedSharding) -> int:
  """How many distinct pieces a NamedSharding cuts an array into."""
  sizes = dict(sharding.mesh.shape)
  n = 1
  for entry in sharding.spec:
    for a in (entry,) if isinstance(entry, str) else (entry or ()):
      n *= sizes[a]
  return n


def describe(shardings: Any, limit: int | None = None) -> Iterable[str]:
  """Lines `path  spec` for logging a sharding pytree."""
  flat = jax.tree_util.tree_flatten_with_path(
    shardings, is_leaf=lambda s: isinstance(s, NamedSharding)
  )[0]
  for i, (path, s) in enumerate(flat):
    if limit is not None and i >= limit:
      break
    yield f"{jax.tree_util.keystr(path)}  {s.spec}"
