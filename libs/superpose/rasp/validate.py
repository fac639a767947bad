"""Which programs a tracr-style compiler can translate, and where a compiled model would be wrong.

- ``static_issues(program)``: the encoding rules of p2 §1.3 (numerical tokens/indices, Aggregate
  and SequenceMap encodings, numerical Select keys, composite selectors, non-compilable
  primitives, a program without ``tokens``, a program that is a selector rather than an S-Op).
- ``value_issues(program, vocab, max_seq_len)``: the above plus the rules that need value sets
  (a numerical Aggregate must average values in {0, 1}; a numerical Map must give a finite number
  for every value of its input, as one residual direction holds neither None nor NaN; no S-Op may
  take the value NaN, which equals no direction's value).
- ``dynamic_issues(program, xs)``: on one input, where the compiled form would differ from the
  evaluator: a categorical Aggregate selecting several distinct values (a model would mix their
  one-hots), a numerical Aggregate over a non-binary value, and a numerical S-Op that is None at
  some position (its input was None there; the model holds 0).
- ``check_compilable`` raises ``UnsupportedProgramError`` (a NotImplementedError) listing them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Collection

from superpose.rasp import evaluator, graph, value_sets
from superpose.rasp.expr import RASPExpr, is_categorical, is_numerical
from superpose.rasp.selectors import (
  Aggregate,
  ConstantSelector,
  Select,
  SelectorAnd,
  SelectorNot,
  SelectorOr,
)
from superpose.rasp.sops import (
  ConstantSOp,
  Full,
  IndicesType,
  LengthType,
  LinearSequenceMap,
  Map,
  SequenceMap,
  SOp,
  TokensType,
)


@dataclasses.dataclass(frozen=True)
class Issue:
  """One reason a program (or one input of it) does not compile faithfully."""

  expr: RASPExpr
  message: str

  def __str__(self):
    return f"{self.expr.label} ({type(self.expr).__name__}): {self.message}"


class UnsupportedProgramError(NotImplementedError):
  """The program uses RASP that the compiler cannot translate; ``issues`` says where."""

  def __init__(self, issues: list[Issue]):
    self.issues = list(issues)
    super().__init__("unsupported RASP program:\n" + "\n".join(f"  - {i}" for i in self.issues))


def _enc(sop) -> str:
  return "numerical" if is_numerical(sop) else "categorical"


def _static_issues_of(expr: RASPExpr) -> list[str]:
  if isinstance(expr, (TokensType, IndicesType)):
    return [f"{expr.label} must be categorical, not numerical"] if is_numerical(expr) else []
  if isinstance(expr, LengthType):
    return ["the `length` primitive does not compile; use lib.make_length()"]
  if isinstance(expr, (Full, ConstantSOp, ConstantSelector)):
    return [f"{type(expr).__name__} cannot be translated to a model component"]
  if isinstance(expr, (SelectorAnd, SelectorOr, SelectorNot)):
    return [
      "composite selectors do not compile unless they simplify to one Select "
      "(zip the S-Ops with a SequenceMap and use one Select with a compound predicate)"
    ]
  if isinstance(expr, Select):
    return [
      f"Select {slot} {sop.label} must be categorical, not numerical"
      for slot, sop in (("keys", expr.keys), ("queries", expr.queries))
      if is_numerical(sop)
    ]
  if isinstance(expr, LinearSequenceMap):
    bad = [s.label for s in (expr.fst, expr.snd, expr) if not is_numerical(s)]
    return (
      [f"LinearSequenceMap needs numerical inputs and output; categorical: {bad}"] if bad else []
    )
  if isinstance(expr, SequenceMap):
    bad = [s.label for s in (expr.fst, expr.snd, expr) if not is_categorical(s)]
    return (
      [f"a non-linear SequenceMap needs categorical inputs and output; numerical: {bad}"]
      if bad
      else []
    )
  if isinstance(expr, Aggregate):
    out = []
    if _enc(expr) != _enc(expr.sop):
      out.append(
        f"a {_enc(expr)} Aggregate of the {_enc(expr.sop)} S-Op {expr.sop.label}: encodings must "
        "match"
      )
    if is_categorical(expr) and expr.default is not None:
      out.append(f"a categorical Aggregate needs default None, got {expr.default!r}")
    if is_numerical(expr) and not (expr.default == 0 and not isinstance(expr.default, str)):
      out.append(f"a numerical Aggregate needs default 0, got {expr.default!r}")
    return out
  return []


def static_issues(program: RASPExpr) -> list[Issue]:
  """Every rule of p2 §1.3 that ``program`` breaks, without knowing the vocab."""
  nodes = graph.walk(program)
  issues = [Issue(e, m) for e in nodes for m in _static_issues_of(e)]
  if not any(isinstance(e, TokensType) for e in nodes):
    issues.append(Issue(program, "the program never reads `tokens`; a compiled model has no input"))
  if not isinstance(program, SOp):
    issues.append(
      Issue(
        program,
        f"a program must end in an S-Op, not a {type(program).__name__}: a compiled "
        "model reads out one value per position (wrap a selector in SelectorWidth or "
        "Aggregate)",
      )
    )
  return issues


def value_issues(program: RASPExpr, vocab: Collection, max_seq_len: int) -> list[Issue]:
  """``static_issues`` plus the rules that depend on the value sets for ``vocab`` and
  ``max_seq_len``."""
  issues = static_issues(program)
  sets = value_sets.infer_value_sets(program, vocab, max_seq_len)
  for expr in graph.walk(program):
    if (
      isinstance(expr, Aggregate)
      and is_numerical(expr)
      and not value_sets.is_binary(sets[expr.sop])
    ):
      shown = sorted(map(repr, sets[expr.sop]))[:8]
      issues.append(
        Issue(
          expr,
          f"a numerical Aggregate can only average values in {{0, 1}}; "
          f"{expr.sop.label} takes {shown}",
        )
      )
    if isinstance(expr, Map) and is_numerical(expr):
      bad = _non_numbers(expr.f, sets[expr.inner])
      if bad:
        shown = ", ".join(f"f({x!r}) = {y!r}" for x, y in bad[:4])
        issues.append(
          Issue(
            expr,
            f"a numerical Map must give a finite number for every value of its input "
            f"(one residual direction holds neither None nor NaN); {shown}",
          )
        )
    elif isinstance(expr, SOp) and any(_is_nan(v) for v in sets[expr]):
      issues.append(
        Issue(
          expr,
          "takes the value NaN, which equals no value (NaN != NaN), so no one-hot "
          "direction can hold it",
        )
      )
  return issues


def _is_nan(v) -> bool:
  return isinstance(v, numbers.Real) and math.isnan(v)


def _non_numbers(f, inputs) -> list[tuple]:
  """(x, f(x)) for the inputs where f gives None, a non-number or a non-finite number."""
  bad = []
  for x in sorted(inputs, key=repr):
    try:
      y = f(x)
    except ArithmeticError:  # skipped, as value-set inference does
      continue
    if not isinstance(y, numbers.Real) or not math.isfinite(y):
      bad.append((x, y))
  return bad


def check_compilable(
  program: RASPExpr, vocab: Collection | None = None, max_seq_len: int | None = None
):
  """Raises ``UnsupportedProgramError`` if the program breaks a rule (value rules need vocab and
  length)."""
  if vocab is not None and max_seq_len is not None:
    issues = value_issues(program, vocab, max_seq_len)
  else:
    issues = static_issues(program)
  if issues:
    raise UnsupportedProgramError(issues)


def dynamic_issues(program: RASPExpr, xs, *, causal: bool = False, **input_checks) -> list[Issue]:
  """The S-Ops whose compiled output would differ from the evaluator's on ``xs``."""
  values = evaluator.trace(program, xs, causal=causal, **input_checks)
  issues = []
  for expr in graph.walk(program):
    if isinstance(expr, SOp) and is_numerical(expr) and any(v is None for v in values[expr]):
      position = [v is None for v in values[expr]].index(True)
      issues.append(
        Issue(
          expr,
          f"position {position} is None (its input is None there); a numerical S-Op "
          f"holds a number, and the compiled model gives 0 there",
        )
      )
      continue
    if not isinstance(expr, Aggregate):
      continue
    sop_values = values[expr.sop]
    for q, row in enumerate(values[expr.selector]):
      selected = [v for s, v in zip(row, sop_values) if s]
      if is_numerical(expr) and not value_sets.is_binary(selected):
        issues.append(Issue(expr, f"query {q} averages non-binary values {selected}"))
        break
      if is_categorical(expr) and len(set(map(repr, selected))) > 1:
        issues.append(
          Issue(
            expr,
            f"query {q} selects several distinct values {selected}; "
            f"a categorical Aggregate must select at most one",
          )
        )
        break
  return issues
