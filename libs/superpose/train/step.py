"""The pure train and eval steps (jitted by the loop with shardings and donation)."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from superpose.train.optim import global_norm

# loss_fn(model, batch) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]


def _split_micro(batch: dict, n: int) -> dict:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} accumulation steps")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(split, batch)


def make_train_step(
  graphdef, loss_fn: LossFn, tx: optax.GradientTransformation, accum_steps: int = 1
):
  """``step(state, batch) -> (state, metrics)``. With ``accum_steps > 1`` the batch is split into
  equal microbatches whose gradients (and losses) are averaged. A step whose loss or gradient norm
  is not finite leaves the state unchanged and reports ``finite = 0``."""

  def loss_of(params, batch):
    return loss_fn(nnx.merge(graphdef, params), batch)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def step(state: dict, batch: dict):
    params = state["params"]
    if accum_steps == 1:
      (loss, aux), grads = grad_fn(params, batch)
    else:

      def body(carry, micro):
        (l, a), g = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (l, a, g)), None

      (l0, a0), g0 = jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], _split_micro(batch, accum_steps))
      )
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, a0, g0))
      (loss, aux, grads), _ = jax.lax.scan(body, zeros, _split_micro(batch, accum_steps))
      loss, aux, grads = jax.tree.map(lambda x: x / accum_steps, (loss, aux, grads))
    gnorm = global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new = {
      "params": optax.apply_updates(params, updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    # Skip a non-finite update entirely: the state stays the last good one.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "grad_norm": gnorm, "finite": finite.astype(jnp.int32), **aux}
    return new, metrics

  return step


def make_eval_step(graphdef, loss_fn: LossFn):
  def step(params, batch):
    loss, aux = loss_fn(nnx.merge(graphdef, params), batch)
    return {"loss": loss, **aux}

  return step


def jit_train_step(step_fn, state_shardings, batch_shardings):
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_shardings),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


def hash_batch(batch: dict[str, Any]) -> str:
  """A short content hash of a host batch (for determinism checks across restarts)."""
  h = hashlib.sha1()
  for k in sorted(batch):
    h.update(k.encode())
    h.update(jax.device_get(batch[k]).tobytes())
  return h.hexdigest()[:16]
