"""Gradient flow: trainable parameters that never receive a gradient, frozen ones that move anyway.

Why: a parameter cut off from the loss (a blend coefficient whose layer never reaches the output, a
head that a slice drops) trains at zero gradient without any error — the loss falls through the
other parameters and the run reports the initial value as learned. :func:`check_task` runs a task as
:func:`superpose.train.loop.train` does (the same split, optimizer and train step, real batches) and
takes the gradient after the first update: a zero-initialised output layer (LoRA B = 0, a router's
last layer) gives its input layer a zero gradient at step 0 only. :func:`check_loss` is the same
test for a plain ``loss_fn(params, batch)``. Leaves are named by their path ``a/b/c``
(:func:`superpose.train.optim.param_paths`).

A leaf is dead when its whole gradient is zero. Some leaves hold one independent parameter per
element — a blend weight per layer, a router bias per expert — where one element without a gradient
is already the bug; ``elementwise`` (regexes of paths; a spec may declare ``gradient_elementwise``)
makes every element of those leaves count (an embedding table is not such a leaf: rows of tokens
absent from the batch get none).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from superpose.train import config as config_lib, optim, state as state_lib, step as step_lib

__all__ = ["GradientReport", "check_task", "check_loss", "assert_gradients_flow"]
_SHOWN = 10


def _names(names: list[str]) -> str:
  if not names:
    return "none"
  more = f" … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
  return f"{len(names)} ({', '.join(names[:_SHOWN])}{more})"


@dataclasses.dataclass
class GradientReport:
  dead: list[str]  # trainable; gradient exactly zero in every element, or not finite
  moved_frozen: list[str]  # matched by optim.frozen, yet changed by the optimizer step(s)
  frozen_with_grad: list[
    str
  ]  # frozen with a non-zero gradient: backward compute thrown away (informational)
  trainable: int  # leaf counts
  frozen: int

  def __str__(self) -> str:
    return (
      f"gradient check of {self.trainable} trainable / {self.frozen} frozen leaves: dead "
      f"{_names(self.dead)}; "
      f"moved frozen {_names(self.moved_frozen)}; frozen with a gradient "
      f"{len(self.frozen_with_grad)}"
    )


def _flags(grads) -> Any:
  """Per leaf [some element non-zero, every element finite, every element non-zero], reduced where
  the gradient lives."""
  return jax.tree.map(
    lambda g: jnp.stack([jnp.any(g != 0), jnp.all(jnp.isfinite(g)), jnp.all(g != 0)]), grads
  )


def _differs(a, b) -> bool:
  """Not bit for bit equal (on the host; frozen leaves only)."""
  return np.asarray(jax.device_get(a)).tobytes() != np.asarray(jax.device_get(b)).tobytes()


def _probe(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` unchanged, plus the :func:`_flags` of the raw gradient of its last update kept in its
  state, so that one compiled train step both trains and reports the gradient."""

  def init(params):
    return tx.init(params), jax.tree.map(lambda p: jnp.zeros(3, bool), params)

  def update(grads, state, params=None):
    updates, inner = tx.update(grads, state[0], params)
    return updates, (inner, _flags(grads))

  return optax.GradientTransformation(init, update)


def _report(flags, trainable, paths, moved=None, elementwise=()) -> GradientReport:
  flags = np.asarray(jax.device_get(jax.tree.leaves(flags))).reshape(-1, 3)
  trainable, paths = jax.tree.leaves(trainable), jax.tree.leaves(paths)
  moved = jax.device_get(jax.tree.leaves(moved)) if moved is not None else [False] * len(paths)
  if not len(flags) == len(trainable) == len(paths) == len(moved):
    raise ValueError(
      f"gradcheck: {len(paths)} parameter leaves but {len(trainable)} trainable flags"
    )
  report = GradientReport([], [], [], 0, 0)
  for path, train, (nonzero, finite, every), mv in zip(paths, trainable, flags, moved):
    if train:
      report.trainable += 1
      if not (nonzero and finite):
        report.dead.append(path)
      elif not every and any(re.fullmatch(e, path) for e in elementwise):
        report.dead.append(f"{path} (some elements)")
    else:
      report.frozen += 1
      if mv:
        report.moved_frozen.append(path)
      if nonzero:
        report.frozen_with_grad.append(path)
  return report


def check_task(task, config, *, steps: int = 1, elementwise=None) -> GradientReport:
  """``steps`` real train steps of ``task`` (a :class:`superpose.train.task.Task`) from a random
  init, then the gradient of its train loss at the updated parameters on the next real batch.
  ``config``: a ConfigDict or the dict of :func:`superpose.train.config.to_dict`. One more step is
  run when the schedule's first learning rate is 0 (a warmup from 0): that update moves nothing. No
  mesh: the default device. The gradient comes out of the loop's own train step (the optimizer
  wrapped by :func:`_probe`): one compile. ``elementwise`` defaults to the spec's
  ``gradient_elementwise`` (module docstring)."""
  cfg = config_lib.to_dict(config)
  spec, data = task.spec, task.data
  elementwise = tuple(
    getattr(spec, "gradient_elementwise", ()) if elementwise is None else elementwise
  )

  def split():
    return nnx.split(spec.make_model(), nnx.Param, ...)

  graphdef, _, rest = jax.eval_shape(split)
  if jax.tree.leaves(rest):
    raise ValueError(
      "check_task: the model holds non-parameter state; the loop's train state carries nnx.Param "
      "only"
    )
  params = jax.jit(lambda: state_lib.pure_dict(split()[1]))()  # one compile, not one per PRNG shape
  paths = optim.param_paths(params)
  frozen = list(cfg["optim"].get("frozen") or ())
  trainable = jax.tree.map(lambda p: not any(re.fullmatch(f, p) for f in frozen), paths)
  tx, lr_schedule = optim.make_optimizer(cfg["optim"], params, cfg["train"]["steps"])
  tx = _probe(tx)
  train_step = jax.jit(
    step_lib.make_train_step(graphdef, spec.train_loss, tx, cfg["train"].get("accum_steps", 1))
  )
  state = {"params": params, "opt_state": jax.jit(tx.init)(params), "step": jnp.int32(0)}
  n = steps + int(steps > 0 and float(lr_schedule(0)) == 0.0)
  for step in range(1, n + 1):
    state, metrics = train_step(state, data.train_batch(step, 0, 1))
    if not int(metrics["finite"]):
      raise FloatingPointError(
        f"check_task: non-finite loss or gradient at step {step} (loss {float(metrics['loss'])})"
      )
  moved = jax.tree.map(lambda t, a, b: not t and _differs(a, b), trainable, params, state["params"])
  batch = data.train_batch(n + 1, 0, 1)
  probed, metrics = train_step(state, batch)  # step n + 1 only for the gradient it computes
  if int(metrics["finite"]):
    flags = probed["opt_state"][1]
  else:
    # the guarded step kept the old state: name the non-finite leaves with a gradient of our own

    def grad_flags(p):
      return _flags(jax.grad(lambda q: spec.train_loss(nnx.merge(graphdef, q), batch)[0])(p))

    flags = jax.jit(grad_flags)(state["params"])
  return _report(flags, trainable, paths, moved, elementwise)


def check_loss(loss_fn: Callable, params, batch, *, trainable, elementwise=()) -> GradientReport:
  """The gradient test for code that is not a loop Task: ``loss_fn(params, batch)`` returns a scalar
  or ``(scalar, aux)``; ``trainable`` is a pytree of bools like ``params`` or a function of the path
  ``a/b/c``. No optimizer step: pass parameters that are not at a degenerate point (e.g. an exact
  optimum)."""
  paths = optim.param_paths(params)
  mask = jax.tree.map(trainable, paths) if callable(trainable) else trainable

  def scalar(p):
    out = loss_fn(p, batch)
    return out[0] if isinstance(out, tuple) else out

  flags = jax.jit(lambda p: _flags(jax.grad(scalar)(p)))(params)
  return _report(flags, mask, paths, elementwise=tuple(elementwise))


def assert_gradients_flow(report: GradientReport) -> None:
  """AssertionError naming the dead and the moved frozen leaves (the first ten of each and a
  count)."""
  problems = []
  if report.dead:
    problems.append(
      f"trainable leaves without a gradient (exactly zero or not finite): {_names(report.dead)}"
    )
  if report.moved_frozen:
    problems.append(f"frozen leaves changed by the optimizer: {_names(report.moved_frozen)}")
  if problems:
    raise AssertionError("; ".join(problems))
