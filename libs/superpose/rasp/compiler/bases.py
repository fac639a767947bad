"""Labelled residual directions and the building blocks of a compiled model, before assembly.

A ``Dir`` is one residual dimension: ``Dir(name, value)`` is the one-hot direction of a categorical
S-Op taking ``value`` (label ``"name:value"``), ``Dir(name)`` the single direction of a numerical
S-Op or of a helper (``one``; label ``"name"``). Blocks hold their weights as sparse triples over
directions, so they can be written before the residual layout is known (p2 §2.1 "craft" level).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

ONE = "one"
SCALAR = None  # the value of a direction that carries a number rather than one value of a set


@dataclasses.dataclass(frozen=True)
class Dir:
  name: str
  value: Any = SCALAR

  @property
  def label(self) -> str:
    return self.name if self.value is SCALAR else f"{self.name}:{value_label(self.value)}"

  def __repr__(self):
    return f"Dir({self.label})"


def value_label(value) -> str:
  return value if isinstance(value, str) else repr(value)


def sort_key(value):
  """A total order over mixed token values: numbers (bools too), then strings, then the rest by
  repr."""
  if isinstance(value, (bool, int, float)):
    return (0, float(value), repr(value))
  if isinstance(value, str):
    return (1, 0.0, value)
  return (2, 0.0, repr(value))


def sorted_values(values: Iterable) -> list:
  return sorted(set(values), key=sort_key)


def categorical_dirs(name: str, values: Iterable) -> list[Dir]:
  return [Dir(name, v) for v in sorted_values(values)]


@dataclasses.dataclass
class MLPBlock:
  """``out = W_out · relu(W_in · x)``: ``w_in`` entries (in_dir, unit, weight), ``w_out`` (unit,
  out_dir, weight)."""

  node: str
  hidden: int
  w_in: list[tuple[Dir, int, float]]
  w_out: list[tuple[int, Dir, float]]
  kind: str = "mlp"

  @staticmethod
  def parallel(node: str, blocks: list["MLPBlock"]) -> "MLPBlock":
    w_in, w_out, offset = [], [], 0
    for b in blocks:
      w_in += [(d, h + offset, w) for d, h, w in b.w_in]
      w_out += [(h + offset, d, w) for h, d, w in b.w_out]
      offset += b.hidden
    return MLPBlock(node, offset, w_in, w_out)


@dataclasses.dataclass
class AttentionHead:
  """One head: logits ``q_res · W_QK · k_res`` and output ``Σ_s p_s · (v_res_s · W_OV)``.

  ``qk`` entries (query_dir, key_dir, weight), ``ov`` entries (value_dir, out_dir, weight). The
  model runs with attention scale 1, so weights are the logits themselves (coldness included).
  """

  node: str
  qk: list[tuple[Dir, Dir, float]]
  ov: list[tuple[Dir, Dir, float]]
  kind: str = "attention"


def dirs_of(block) -> set[Dir]:
  if isinstance(block, MLPBlock):
    return {d for d, _, _ in block.w_in} | {d for _, d, _ in block.w_out}
  return {d for q, k, _ in block.qk for d in (q, k)} | {d for v, o, _ in block.ov for d in (v, o)}
