"""Sharded train state: split the model once, create everything under ``jax.jit`` with
out-shardings.

The train state is a plain pytree ``{'params', 'opt_state', 'step'}``; ``params`` is the model's
pure dict of arrays (``nnx.to_pure_dict``), so the train step is a pure function that rebuilds the
model with ``nnx.merge(graphdef, params)`` inside the jit and never traverses NNX objects on the
host.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from superpose.nn import sharding as shd


def pure_dict(tree) -> Any:
  """nnx.State → nested dict with string keys (orbax and optax want plain containers)."""

  def convert(x):
    if isinstance(x, dict) or hasattr(x, "items"):
      return {str(k): convert(v) for k, v in x.items()}
    return x

  return convert(nnx.to_pure_dict(tree))


def split_model(make_model: Callable[[], nnx.Module], mesh, rules=None):
  """(graphdef, abstract params with shardings, param shardings) without allocating parameters."""
  # jax.eval_shape of the split (not nnx.eval_shape, which turns logical names into mesh shardings).
  graphdef, abs_state, rest = jax.eval_shape(lambda: nnx.split(make_model(), nnx.Param, ...))
  if jax.tree.leaves(rest):
    raise ValueError(
      f"model holds non-parameter state {jax.tree.map(lambda v: v.shape, rest)}; "
      "the train state only carries nnx.Param"
    )
  shardings = pure_dict(shd.state_shardings(abs_state, mesh, rules))
  abs_params = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), pure_dict(abs_state), shardings
  )
  return graphdef, abs_params, shardings


def merge(graphdef, params) -> nnx.Module:
  """The model for a params pytree (inside jit: cheap, purely structural)."""
  return nnx.merge(graphdef, params)


def frozen_view(module: nnx.Module) -> nnx.Module:
  """``module`` with its state under ``stop_gradient``: a frozen part of a model whose activations
  still carry gradients to what comes before it, but whose own weight gradients are never
  computed."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def init_params(make_model: Callable[[], nnx.Module], shardings) -> Any:
  """Materialise parameters directly in their shardings (no unsharded copy on any device)."""

  def init():
    _, params, _ = nnx.split(make_model(), nnx.Param, ...)
    return pure_dict(params)

  return jax.jit(init, out_shardings=shardings)()


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def opt_state_shardings(abs_opt_state, abs_params, param_shardings, mesh) -> Any:
  """Each optimizer leaf that mirrors a parameter (Adam moments...) takes that parameter's sharding,
  matched by the longest suffix of its path and equal shape; everything else is replicated."""
  by_path = {}
  for (path, a), s in zip(
    jax.tree_util.tree_flatten_with_path(abs_params)[0], jax.tree.leaves(param_shardings)
  ):
    by_path[_names(path)] = (a.shape, s)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    names = _names(path)
    for k in range(len(names)):
      hit = by_path.get(names[k:])
      if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abs_opt_state)


def abstract_state(tx: optax.GradientTransformation, abs_params, mesh) -> dict:
  """The train state as ShapeDtypeStructs carrying their shardings (a restore target)."""
  abs_opt = jax.eval_shape(tx.init, abs_params)
  opt_sh = opt_state_shardings(
    abs_opt, abs_params, jax.tree.map(lambda a: a.sharding, abs_params), mesh
  )
  return {
    "params": abs_params,
    "opt_state": jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_opt, opt_sh
    ),
    "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
  }


def create(
  make_model: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  abs_params,
  mesh,
  params=None,
) -> tuple[dict, dict]:
  """A fresh train state and its shardings. ``params`` (optional, already sharded) replaces the
  initial parameters (``init_from``)."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_state(tx, abs_params, mesh))
  if params is None:
    params = init_params(make_model, shardings["params"])
  state = {
    "params": params,
    "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params),
    "step": jax.device_put(jnp.int32(0), shardings["step"]),
  }
  return state, shardings
