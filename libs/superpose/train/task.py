"""What a project gives the shared loop: a data-free :class:`Spec` and its :class:`Data`.

A trainer module (``config.trainer``) exposes::

    make_spec(cfg) -> Spec     # no file is read: the planner (launch.plan) compiles the step from
                               it alone
    make_task(cfg) -> Task     # Task(spec, data): what launch.train runs
    run(config, workdir)       # make_task + superpose.train.loop.train + the trainer's summary line

The spec says everything about shapes and compute — the model, the train loss and the eval loss as
separate functions, the batch it takes (:class:`Field`: global shape, dtype, logical axes), tokens
and FLOPs per step, and the config the run records (a trainer may resolve defaults there, e.g.
freeze its experts) — so the train step compiles without data. The data holds the host batches, a
pure function of the step, and the evaluation set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import jax
import numpy as np
from flax import nnx

__all__ = ["Field", "Spec", "Data", "Task", "abstract_batch", "check_batch", "rows_fields"]


@dataclasses.dataclass(frozen=True)
class Field:
  """One entry of a train batch: the global shape (rows over all processes first; the widest batch
  where widths vary by step), the dtype and the logical axes (None: ``("batch", None, ...)``)."""

  shape: tuple[int, ...]
  dtype: str
  axes: tuple[str | None, ...] | None = None

  def logical_axes(self) -> tuple[str | None, ...]:
    return self.axes if self.axes is not None else ("batch",) + (None,) * (len(self.shape) - 1)


class Spec(Protocol):
  """The data-free half of a task (module docstring). Optional: ``initial_params(abs_params)`` — the
  parameters of a fresh run (e.g. frozen experts read from other runs), sharded like ``abs_params``;
  ``gradient_elementwise`` — regexes of leaves whose every element must get a gradient (gradcheck);
  ``tokenizer()`` — the run's tokenizer, for a model with an LM head (launch.sample)."""

  config: Mapping[str, Any]  # the config the run trains with and records (config.json)
  tokens_per_step: int  # for tokens/s
  flops_per_step: float  # model FLOPs of one optimizer step (for MFU)

  def make_model(self) -> nnx.Module: ...
  def train_loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict]: ...
  def eval_loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict]: ...
  def batch_spec(self) -> Mapping[str, Field]: ...


class EvalSet(Protocol):
  num_batches: int

  def batch(
    self, i: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]: ...


class Data(Protocol):
  """The data half: host batches as a pure function of the (1-based) step, and the evaluation set
  (``None``, or no ``eval_set`` attribute at all: nothing to evaluate)."""

  eval_set: EvalSet | None

  def train_batch(
    self, step: int, process_index: int, process_count: int
  ) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class Task:
  spec: Spec
  data: Data


def rows_fields(
  batch_size: int,
  width: int,
  keys=("tokens", "targets", "weights"),
  *,
  axes=None,
  dtypes: Mapping[str, str] | None = None,
) -> dict[str, Field]:
  """``(batch_size, width)`` fields, int32 unless ``dtypes`` says otherwise (``weights``
  float32)."""
  dtypes = {"weights": "float32", **(dtypes or {})}
  return {k: Field((batch_size, width), dtypes.get(k, "int32"), axes) for k in keys}


def abstract_batch(fields: Mapping[str, Field], shardings: Mapping[str, Any] | None = None) -> dict:
  """``jax.ShapeDtypeStruct`` per field (with its sharding when given): what the planner compiles
  on."""
  return {
    k: jax.ShapeDtypeStruct(f.shape, f.dtype, sharding=(shardings or {}).get(k))
    for k, f in fields.items()
  }


def check_batch(
  host: Mapping[str, np.ndarray],
  fields: Mapping[str, Field],
  process_count: int = 1,
  what: str = "train batch",
) -> None:
  """A host batch against its spec: the same keys, dtypes and ranks, this process's share of the
  rows, no dimension wider than the spec's. ValueError naming the first difference (a trainer
  bug)."""
  if set(host) != set(fields):
    missing, extra = sorted(set(fields) - set(host)), sorted(set(host) - set(fields))
    raise ValueError(
      f"{what}: keys differ from the task's batch_spec (missing {missing}, unexpected {extra})"
    )
  for k, f in fields.items():
    x = host[k]
    if str(x.dtype) != f.dtype or x.ndim != len(f.shape):
      raise ValueError(
        f"{what}[{k!r}]: {x.dtype}{list(x.shape)} but batch_spec says {f.dtype}{list(f.shape)}"
      )
    rows = f.shape[0] // process_count
    if x.shape[0] != rows or any(a > b for a, b in zip(x.shape[1:], f.shape[1:])):
      raise ValueError(
        f"{what}[{k!r}]: shape {list(x.shape)} on one of {process_count} processes; batch_spec "
        f"says {list(f.shape)} globally ({rows} rows per process, no dimension wider)"
      )
