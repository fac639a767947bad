"""The reference evaluator: RASP semantics a compiled model must match (p2 §1.2).

- The input has no BOS: ``indices(xs) = [0..n-1]``, ``length(xs) = [n]*n``.
- ``Map``/``SequenceMap`` propagate ``None``: any ``None`` input gives ``None``.
- ``Select`` gives ``out[q][k] = bool(predicate(key_k, query_q))``; ``SelectorWidth`` the row sums.
- ``Aggregate`` takes, per query row, the selected values: none → ``default``; exactly one → that
  value, whatever its type; several → their mean if all are int/bool/float, else their common value
  if all are equal (of one type), else ``ValueError``. The equal-values rule departs from tracr's
  evaluator, which raises: a compiled categorical Aggregate averages equal one-hots to that value
  (``Aggregate(Select(tokens, tokens, EQ), tokens)`` on "aab" is ``["a", "a", "b"]``).
  The encoding (categorical/numerical) does not change evaluation; it only matters to the compiler
  (``validate`` says where a compiled model would disagree).
- The causal evaluator ANDs every selector with the lower triangle (key position ≤ query position),
  the semantics of a model compiled with ``causal=True``.

Each sub-expression is evaluated once per call (the program is a DAG). An exception raised inside
a user function keeps its type and gains a note naming the expression.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from superpose.rasp import graph
from superpose.rasp.expr import RASPExpr, Value
from superpose.rasp.selectors import (
  Aggregate,
  ConstantSelector,
  Select,
  Selector,
  SelectorAnd,
  SelectorNot,
  SelectorOr,
  SelectorWidth,
)
from superpose.rasp.sops import (
  ConstantSOp,
  Full,
  IndicesType,
  LengthType,
  Map,
  SequenceMap,
  TokensType,
)


def check_input(
  xs, *, vocab: Collection | None = None, max_seq_len: int | None = None, bos: Value = None
) -> list[Value]:
  """``xs`` as a list, after checking its type and, when given, the vocab, length and absence of
  BOS."""
  if isinstance(xs, np.ndarray):
    if xs.ndim != 1:
      raise ValueError(f"RASP input must be 1-D, got an array of shape {xs.shape}")
    xs = xs.tolist()
  if isinstance(xs, (str, bytes)):
    xs = list(xs)
  if not isinstance(xs, (list, tuple)):
    raise TypeError(
      f"RASP input must be a list, tuple, str or 1-D array of tokens, got {type(xs).__name__}"
    )
  xs = list(xs)
  if max_seq_len is not None and len(xs) > max_seq_len:
    raise ValueError(f"RASP input has {len(xs)} tokens, more than max_seq_len={max_seq_len}")
  if bos is not None and xs and _same(xs[0], bos):
    raise ValueError(
      f"RASP input starts with the BOS token {bos!r}; the evaluator takes inputs without BOS"
    )
  if vocab is not None:
    for i, x in enumerate(xs):
      try:
        known = x in vocab
      except TypeError as e:
        raise TypeError(f"RASP input token {x!r} at position {i} is not hashable") from e
      if not known:
        raise ValueError(
          f"RASP input token {x!r} at position {i} is not in the vocab {sorted(map(repr, vocab))}"
        )
  return xs


def _same(a, b) -> bool:
  try:
    return bool(a == b) and type(a) is type(b)
  except Exception:  # noqa: BLE001 - exotic tokens: not the BOS
    return False


def mean(values: Sequence[Value], default: Value) -> Value:
  """What Aggregate returns for one query row's selected ``values``."""
  if not values:
    return default
  if len(values) == 1:
    return values[0]
  if all(isinstance(v, (int, float, bool)) for v in values):
    return sum(values) / len(values)
  if all(_same(v, values[0]) for v in values[1:]):
    return values[0]
  raise ValueError(
    f"Aggregate: cannot average several selected values unless all are numbers or all are "
    f"equal, got {list(values)}"
  )


class Evaluator:
  """Evaluates RASP expressions; ``causal=True`` masks every selector with the lower triangle."""

  def __init__(self, causal: bool = False):
    self.causal = causal

  def evaluate(self, expr: RASPExpr, xs, **input_checks):
    """The value of ``expr`` on ``xs``: a list for an S-Op, a list of rows for a Selector.

    ``input_checks`` (``vocab``, ``max_seq_len``, ``bos``) are passed to ``check_input``.
    """
    return self.trace(expr, xs, **input_checks)[expr]

  def trace(self, expr: RASPExpr, xs, **input_checks) -> dict[RASPExpr, list]:
    """The value of every sub-expression of ``expr`` on ``xs``, keyed by expression (identity)."""
    if not isinstance(expr, RASPExpr):
      raise TypeError(f"expected a RASP expression, got {type(expr).__name__}: {expr!r}")
    xs = check_input(xs, **input_checks)
    values: dict[RASPExpr, list] = {}
    for node in graph.topological_order(expr):
      try:
        values[node] = self._eval_node(node, xs, values)
      except Exception as e:
        e.add_note(f"while evaluating {node.label} ({type(node).__name__}) on input {xs!r}")
        raise
    return values

  def _eval_node(self, node: RASPExpr, xs: list, values: dict):
    n = len(xs)
    if isinstance(node, TokensType):
      return list(xs)
    if isinstance(node, IndicesType):
      return list(range(n))
    if isinstance(node, LengthType):
      return [n] * n
    if isinstance(node, Map):
      return [None if x is None else node.f(x) for x in values[node.inner]]
    if isinstance(node, SequenceMap):  # LinearSequenceMap included
      return [
        None if x is None or y is None else node.f(x, y)
        for x, y in zip(values[node.fst], values[node.snd], strict=True)
      ]
    if isinstance(node, Full):
      return [node.fill] * n
    if isinstance(node, ConstantSOp):
      if node.check_length and len(node.value) != n:
        raise ValueError(
          f"ConstantSOp of length {len(node.value)} evaluated on an input of length {n}"
        )
      return list(node.value)
    if isinstance(node, SelectorWidth):
      return [sum(row) for row in values[node.selector]]
    if isinstance(node, Aggregate):
      sop_values = values[node.sop]
      return [
        mean([v for s, v in zip(row, sop_values, strict=True) if s], node.default)
        for row in values[node.selector]
      ]
    if isinstance(node, Selector):
      return self._mask(self._eval_selector(node, xs, values))
    raise NotImplementedError(f"the evaluator does not know {type(node).__name__} ({node.label})")

  def _eval_selector(self, node: Selector, xs: list, values: dict) -> list[list[bool]]:
    n = len(xs)
    if isinstance(node, Select):
      keys, queries = values[node.keys], values[node.queries]
      return [[bool(node.predicate(k, q)) for k in keys] for q in queries]
    if isinstance(node, ConstantSelector):
      if node.check_length and (len(node.value) != n or any(len(r) != n for r in node.value)):
        raise ValueError(
          f"ConstantSelector with {len(node.value)} rows evaluated on an input of length {n}"
        )
      return [list(r) for r in node.value]
    if isinstance(node, SelectorAnd):
      return (
        np.array(values[node.fst], bool).reshape(n, n)
        & np.array(values[node.snd], bool).reshape(n, n)
      ).tolist()
    if isinstance(node, SelectorOr):
      return (
        np.array(values[node.fst], bool).reshape(n, n)
        | np.array(values[node.snd], bool).reshape(n, n)
      ).tolist()
    if isinstance(node, SelectorNot):
      return (~np.array(values[node.inner], bool).reshape(n, n)).tolist()
    raise NotImplementedError(f"the evaluator does not know {type(node).__name__} ({node.label})")

  def _mask(self, rows: list[list[bool]]) -> list[list[bool]]:
    if not self.causal:
      return rows
    return [[bool(v) and k <= q for k, v in enumerate(row)] for q, row in enumerate(rows)]


DefaultRASPEvaluator = Evaluator
_DEFAULT, _CAUSAL = Evaluator(causal=False), Evaluator(causal=True)


def evaluate(expr: RASPExpr, xs, *, causal: bool = False, **input_checks):
  """``expr`` on ``xs`` (no BOS). ``input_checks``: ``vocab``, ``max_seq_len``, ``bos`` (see
  ``check_input``)."""
  return (_CAUSAL if causal else _DEFAULT).evaluate(expr, xs, **input_checks)


def causal_evaluate(expr: RASPExpr, xs, **input_checks):
  """``expr`` on ``xs`` with every selector masked to keys at or before the query (tracr's
  causal_eval)."""
  return _CAUSAL.evaluate(expr, xs, **input_checks)


def trace(expr: RASPExpr, xs, *, causal: bool = False, **input_checks) -> dict[RASPExpr, list]:
  """The value of every sub-expression of ``expr`` on ``xs``."""
  return (_CAUSAL if causal else _DEFAULT).trace(expr, xs, **input_checks)
