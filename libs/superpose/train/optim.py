"""Optimizer factory: AdamW with explicit weight decay, schedules, clipping, groups, frozen params.

Parameters are addressed by their path, e.g. ``blocks/0/attn/q``; ``groups`` and ``frozen`` match
paths with ``re.fullmatch``. Each group has its own learning rate, weight decay and clipping; frozen
parameters get no optimizer state and no update, and do not count towards the global gradient norm.
``reset_steps`` lists steps (1-based) before whose update the whole optimizer state is set back to
its initial value (Adam moments and bias-correction counts; the learning-rate schedule keeps the
step), e.g. at the stage changes of a curriculum.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_cosine", "wsd")


def schedule(
  kind: str,
  peak: float,
  total_steps: int,
  warmup_steps: int = 0,
  decay_fraction: float = 0.2,
  min_ratio: float = 0.0,
) -> optax.Schedule:
  """constant (after warmup) | warmup_cosine | wsd (warmup, stable, linear decay over the last
  fraction)."""
  warmup_steps = min(warmup_steps, total_steps)
  end = peak * min_ratio
  if kind == "constant":
    return (
      optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
        [warmup_steps],
      )
      if warmup_steps
      else optax.constant_schedule(peak)
    )
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), end
    )
  if kind == "wsd":
    decay = max(1, int(round(decay_fraction * total_steps)))
    stable = max(0, total_steps - warmup_steps - decay)
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, peak, warmup_steps),
        optax.constant_schedule(peak),
        optax.linear_schedule(peak, end, decay),
      ],
      [warmup_steps, warmup_steps + stable],
    )
  raise ValueError(f"optim.schedule: unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")


def param_paths(params) -> Any:
  """Pytree like ``params`` holding each leaf's path string ``a/b/c``."""

  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

  return jax.tree_util.tree_map_with_path(name, params)


def _decay_mask(params):
  # Weight decay on matrices only: norms, biases and scalars are not decayed.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _adamw(
  lr, cfg: Mapping, weight_decay: float, clip: float | None
) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(clip)] if clip else []
  parts.append(
    optax.adamw(
      lr,
      b1=cfg.get("b1", 0.9),
      b2=cfg.get("b2", 0.95),
      eps=cfg.get("eps", 1e-8),
      weight_decay=weight_decay,
      mask=_decay_mask,
    )
  )
  return optax.chain(*parts)


def make_optimizer(
  cfg: Mapping, params, total_steps: int
) -> tuple[optax.GradientTransformation, Callable]:
  """Returns ``(tx, lr_schedule)`` for ``params`` (a pytree, used only for its paths)."""
  known = {
    "name",
    "lr",
    "schedule",
    "warmup_steps",
    "decay_fraction",
    "min_lr_ratio",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "clip_norm",
    "groups",
    "frozen",
    "reset_steps",
  }
  unknown = set(cfg) - known
  if unknown:
    raise ValueError(
      f"optim: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})"
    )
  if cfg.get("name", "adamw") != "adamw":
    raise ValueError(f"optim.name: only 'adamw' is available, got {cfg['name']!r}")

  def sched(peak):
    return schedule(
      cfg.get("schedule", "warmup_cosine"),
      peak,
      total_steps,
      cfg.get("warmup_steps", 0),
      cfg.get("decay_fraction", 0.2),
      cfg.get("min_lr_ratio", 0.0),
    )

  paths = param_paths(params)
  groups: Sequence[Mapping] = list(cfg.get("groups") or ())
  frozen: Sequence[str] = list(cfg.get("frozen") or ())

  def label(path: str) -> str:
    if any(re.fullmatch(p, path) for p in frozen):
      return "frozen"
    for i, g in enumerate(groups):
      if re.fullmatch(g["pattern"], path):
        return f"group{i}"
    return "default"

  labels = jax.tree.map(label, paths)
  used = set(jax.tree.leaves(labels))
  for i, g in enumerate(groups):
    if f"group{i}" not in used:
      raise ValueError(f"optim.groups[{i}]: pattern {g['pattern']!r} matches no parameter")
  if used == {"frozen"}:
    raise ValueError("optim.frozen: every parameter is frozen; nothing to train")

  default_sched = sched(cfg["lr"])
  transforms = {
    "default": _adamw(default_sched, cfg, cfg.get("weight_decay", 0.0), None),
    "frozen": optax.set_to_zero(),
  }
  for i, g in enumerate(groups):
    transforms[f"group{i}"] = _adamw(
      sched(g.get("lr", cfg["lr"])),
      cfg,
      g.get("weight_decay", cfg.get("weight_decay", 0.0)),
      g.get("clip_norm"),
    )
  transforms = {k: v for k, v in transforms.items() if k in used}
  trainable = jax.tree.map(lambda l: l != "frozen", labels)
  parts = []
  if "frozen" in used:
    # Zero frozen gradients first so they do not enter the global norm.
    parts.append(optax.masked(optax.set_to_zero(), jax.tree.map(lambda t: not t, trainable)))
  if cfg.get("clip_norm"):
    parts.append(optax.clip_by_global_norm(cfg["clip_norm"]))
  parts.append(optax.multi_transform(transforms, labels))
  tx = optax.chain(*parts)
  reset = sorted({int(s) for s in cfg.get("reset_steps") or ()})
  return (reset_at(tx, reset) if reset else tx), default_sched


class ResetState(NamedTuple):
  inner: Any
  count: jax.Array  # updates made so far


def reset_at(
  inner: optax.GradientTransformation, steps: Sequence[int]
) -> optax.GradientTransformation:
  """``inner`` whose state is re-initialised before the update of each step in ``steps`` (1-based:
  the update that makes step s), inside the jitted update."""
  steps_arr = jnp.asarray(sorted(int(s) for s in steps), jnp.int32)

  def init(params):
    return ResetState(inner.init(params), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    step = state.count + 1
    like = params if params is not None else updates
    # a cond, not a select per leaf: steps without a reset make no pass over the state
    state_inner = jax.lax.cond(
      jnp.any(steps_arr == step), lambda s: inner.init(like), lambda s: s, state.inner
    )
    updates, new_inner = inner.update(updates, state_inner, params)
    return updates, ResetState(new_inner, step)

  return optax.GradientTransformation(init, update)


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
