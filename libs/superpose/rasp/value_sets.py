"""The set of values each S-Op can take for a vocab and max_seq_len (p2 §2 stage 2).

Same rules as tracr's basis inference except for one fix: a numerical Aggregate of {0, 1} values
can produce any ``k/n`` with ``0 ≤ k ≤ n ≤ max_seq_len``, where tracr lists only ``1/n`` and 0 (its
TODO b/255936408), which makes numerical MLPs downstream of ``frac_prevs`` discretise on the wrong
grid. Map/SequenceMap skip inputs where ``f`` raises an ArithmeticError, and drop ``None`` results;
any other exception keeps its type and gains a note naming the expression and the argument.

``may_be_none`` says which S-Ops can hold ``None`` at run time (the compiler gives a Select a
``None`` row or column only where its queries or keys can be ``None``).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection

from superpose.rasp import graph
from superpose.rasp.expr import RASPExpr, is_numerical
from superpose.rasp.selectors import Aggregate, SelectorWidth
from superpose.rasp.sops import (
  ConstantSOp,
  Full,
  IndicesType,
  LengthType,
  Map,
  SequenceMap,
  SOp,
  TokensType,
)


def is_binary(values: Collection) -> bool:
  """Whether every value is 0 or 1 (bools included), the values a numerical Aggregate may
  average."""
  return all(isinstance(v, (int, float, bool)) and v in (0, 1) for v in values)


def mean_values(values: Collection, max_seq_len: int) -> frozenset:
  """Every mean of 1..max_seq_len values drawn from a binary set ``values``."""
  has0 = any(v == 0 for v in values)
  has1 = any(v == 1 for v in values)
  if has0 and has1:
    return frozenset(k / n for n in range(1, max_seq_len + 1) for k in range(n + 1))
  return frozenset(([0] if has0 else []) + ([1] if has1 else []))


def _apply(f, args_iter, label: str) -> frozenset:
  out = set()
  for args in args_iter:
    try:
      y = f(*args)
    except ArithmeticError:
      continue
    except Exception as e:
      shown = args[0] if len(args) == 1 else args
      e.add_note(f"while inferring the values of {label}: its function raised on {shown!r}")
      raise
    if y is None:
      continue
    try:
      out.add(y)
    except TypeError as e:
      raise TypeError(f"{label}: produced the unhashable value {y!r} from {args!r}") from e
  return frozenset(out)


def infer_value_sets(
  program: RASPExpr, vocab: Collection, max_seq_len: int
) -> dict[RASPExpr, frozenset]:
  """``expr -> frozenset of values`` for every S-Op of ``program`` (keyed by identity)."""
  if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
    raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
  vocab = frozenset(vocab)
  if not vocab:
    raise ValueError("vocab must not be empty")
  sets: dict[RASPExpr, frozenset] = {}
  for expr in graph.topological_order(program):
    if not isinstance(expr, SOp):
      continue
    if isinstance(expr, TokensType):
      out = vocab
    elif isinstance(expr, IndicesType):
      out = frozenset(range(max_seq_len))
    elif isinstance(expr, LengthType):
      out = frozenset(range(1, max_seq_len + 1))
    elif isinstance(expr, Full):
      out = frozenset([expr.fill])
    elif isinstance(expr, ConstantSOp):
      out = frozenset(expr.value)
    elif isinstance(expr, Map):
      out = _apply(expr.f, ((x,) for x in sets[expr.inner]), expr.label)
    elif isinstance(expr, SequenceMap):
      out = _apply(expr.f, itertools.product(sets[expr.fst], sets[expr.snd]), expr.label)
    elif isinstance(expr, SelectorWidth):
      out = frozenset(range(max_seq_len + 1))
    elif isinstance(expr, Aggregate):
      inner = sets[expr.sop]
      if is_numerical(expr) and is_binary(inner):
        out = mean_values(inner, max_seq_len)
      else:  # categorical, or a numerical aggregate the compiler refuses anyway
        out = inner
      if expr.default is not None:
        out = out | {expr.default}
    else:
      raise NotImplementedError(f"no value-set rule for {type(expr).__name__} ({expr.label})")
    sets[expr] = out
  return sets


def may_be_none(program: RASPExpr, sets: dict[RASPExpr, frozenset]) -> dict[RASPExpr, bool]:
  """``expr -> whether it can evaluate to None`` for every S-Op of ``program`` (``sets`` from
  ``infer_value_sets``). Conservative: a categorical Aggregate may always select nothing."""
  out: dict[RASPExpr, bool] = {}
  for expr in graph.topological_order(program):
    if not isinstance(expr, SOp):
      continue
    if isinstance(expr, (TokensType, ConstantSOp)):
      out[expr] = any(v is None for v in sets[expr])
    elif isinstance(expr, (IndicesType, LengthType, SelectorWidth)):
      out[expr] = False
    elif isinstance(expr, Full):
      out[expr] = expr.fill is None
    elif isinstance(expr, Map):
      out[expr] = out[expr.inner] or _returns_none(expr.f, ((x,) for x in sets[expr.inner]))
    elif isinstance(expr, SequenceMap):
      out[expr] = (
        out[expr.fst]
        or out[expr.snd]
        or _returns_none(expr.f, itertools.product(sets[expr.fst], sets[expr.snd]))
      )
    elif isinstance(expr, Aggregate):
      out[expr] = expr.default is None or out[expr.sop]
    else:
      raise NotImplementedError(f"no None rule for {type(expr).__name__} ({expr.label})")
  return out


def _returns_none(f, args_iter) -> bool:
  for args in args_iter:
    try:
      if f(*args) is None:
        return True
    except ArithmeticError:
      continue
  return False
