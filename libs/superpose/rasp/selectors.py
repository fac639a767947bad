"""Selectors (Select, Comparison, And/Or/Not with tracr's simplification) and the S-Ops that consume
them: SelectorWidth and Aggregate (p2 §1.1)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from superpose.rasp.expr import RASPExpr, SelectorValue, Value, check_fn
from superpose.rasp.sops import Full, SOp, check_sop


class Comparison(enum.Enum):
  """A predicate ``(key, query) -> bool`` for Select; it refuses ``None`` keys and queries."""

  EQ = "=="
  LT = "<"
  LEQ = "<="
  GT = ">"
  GEQ = ">="
  NEQ = "!="
  TRUE = "True"
  FALSE = "False"

  def __call__(self, key: Value, query: Value) -> bool:
    if key is None:
      raise ValueError(f"Comparison.{self.name}: key is None")
    if query is None:
      raise ValueError(f"Comparison.{self.name}: query is None")
    return _COMPARE[self](key, query)


_COMPARE = {
  Comparison.EQ: lambda k, q: k == q,
  Comparison.LT: lambda k, q: k < q,
  Comparison.LEQ: lambda k, q: k <= q,
  Comparison.GT: lambda k, q: k > q,
  Comparison.GEQ: lambda k, q: k >= q,
  Comparison.NEQ: lambda k, q: k != q,
  Comparison.TRUE: lambda k, q: True,
  Comparison.FALSE: lambda k, q: False,
}


class Selector(RASPExpr):
  """A boolean matrix ``[query][key]``, the attention pattern. ``& | ~`` combine selectors."""

  default_name = "selector"

  def __call__(self, xs: Sequence[Value]) -> SelectorValue:
    from superpose.rasp import evaluator  # the evaluator imports this module

    return evaluator.evaluate(self, xs)

  def __and__(self, other):
    return selector_and(self, other)

  def __rand__(self, other):
    return selector_and(other, self)

  def __or__(self, other):
    return selector_or(self, other)

  def __ror__(self, other):
    return selector_or(other, self)

  def __invert__(self):
    return selector_not(self)


class Select(Selector):
  """``out[q][k] = predicate(keys[k], queries[q])``."""

  default_name = "select"

  def __init__(
    self, keys: SOp, queries: SOp, predicate: Comparison | Callable[[Value, Value], bool]
  ):
    super().__init__()
    check_sop(keys, "Select: keys")
    check_sop(queries, "Select: queries")
    check_fn(predicate, "Select: predicate")
    self.keys = keys
    self.queries = queries
    self.predicate = predicate

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.keys, self.queries)


class ConstantSelector(Selector):
  """A fixed boolean matrix, for tests."""

  default_name = "constant_selector"

  def __init__(self, value: Sequence[Sequence[bool]], check_length: bool = True):
    super().__init__()
    self.value = tuple(tuple(bool(v) for v in row) for row in value)
    self.check_length = check_length

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return ()


def _check_selector(sel, what: str):
  if not isinstance(sel, Selector):
    raise TypeError(f"{what} must be a Selector, got {type(sel).__name__}: {sel!r}")


class _SelectorPair(Selector):
  def __init__(self, fst: Selector, snd: Selector):
    super().__init__()
    _check_selector(fst, f"{type(self).__name__}: fst")
    _check_selector(snd, f"{type(self).__name__}: snd")
    self.fst = fst
    self.snd = snd

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.fst, self.snd)


class SelectorAnd(_SelectorPair):
  """Elementwise AND of two selectors (does not compile unless it simplifies to one Select)."""

  default_name = "selector_and"


class SelectorOr(_SelectorPair):
  """Elementwise OR of two selectors (does not compile unless it simplifies to one Select)."""

  default_name = "selector_or"


class SelectorNot(Selector):
  """Elementwise NOT of a selector."""

  default_name = "selector_not"

  def __init__(self, inner: Selector):
    super().__init__()
    _check_selector(inner, "SelectorNot: inner")
    self.inner = inner

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.inner,)


def selector_not(inner: Selector, simplify: bool = True) -> Selector:
  """``~inner``: a Select with the negated predicate when ``inner`` is a Select."""
  _check_selector(inner, "selector_not")
  if simplify and isinstance(inner, Select):
    p = inner.predicate
    return Select(inner.keys, inner.queries, lambda k, q: not p(k, q))
  return SelectorNot(inner)


def selector_and(fst: Selector, snd: Selector, simplify: bool = True) -> Selector:
  """``fst & snd``: one Select when both are Selects over the same keys and queries."""
  merged = _merge_selects(fst, snd, lambda a, b: a and b) if simplify else None
  return merged if merged is not None else SelectorAnd(fst, snd)


def selector_or(fst: Selector, snd: Selector, simplify: bool = True) -> Selector:
  """``fst | snd``: one Select when both are Selects over the same keys and queries."""
  merged = _merge_selects(fst, snd, lambda a, b: a or b) if simplify else None
  return merged if merged is not None else SelectorOr(fst, snd)


def _merge_selects(fst, snd, combine) -> Select | None:
  """One Select computing ``combine(fst, snd)``, or None when their keys or queries differ.

  A ``Full`` in a key (query) slot is constant, so it matches any key (query) S-Op of the other
  Select: its fill value is baked into that side's predicate.
  """
  if not (isinstance(fst, Select) and isinstance(snd, Select)):
    return None

  def pick(a: SOp, b: SOp):
    if a is b:
      return a
    if isinstance(a, Full) and not isinstance(b, Full):
      return b
    if isinstance(b, Full) and not isinstance(a, Full):
      return a
    return None

  keys, queries = pick(fst.keys, snd.keys), pick(fst.queries, snd.queries)
  if keys is None or queries is None:
    return None

  def bake(sel: Select):
    """sel's predicate over (keys, queries), with a Full slot of sel replaced by its fill value."""
    p = sel.predicate
    key_fill = sel.keys is not keys  # then sel.keys is a Full
    query_fill = sel.queries is not queries
    kf = sel.keys.fill if key_fill else None
    qf = sel.queries.fill if query_fill else None
    return lambda k, q: p(kf if key_fill else k, qf if query_fill else q)

  p1, p2 = bake(fst), bake(snd)
  return Select(keys, queries, lambda k, q: combine(p1(k, q), p2(k, q)))


class SelectorWidth(SOp):
  """The number of selected keys in each query row."""

  default_name = "selector_width"

  def __init__(self, selector: Selector):
    super().__init__()
    _check_selector(selector, "SelectorWidth: selector")
    self.selector = selector

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.selector,)


class Aggregate(SOp):
  """The mean of the selected values of ``sop`` in each row, ``default`` where none is selected.

  Compiles categorically (``default`` None; at most one distinct value selected) or numerically
  (``default`` 0; ``sop`` values in {0, 1}).
  """

  default_name = "aggregate"

  def __init__(self, selector: Selector, sop: SOp, default: Value = None):
    super().__init__()
    _check_selector(selector, "Aggregate: selector")
    check_sop(sop, "Aggregate: sop")
    if default is not None and not isinstance(default, (str, int, float, bool)):
      raise TypeError(f"Aggregate: default must be None, str, int, float or bool, got {default!r}")
    self.selector = selector
    self.sop = sop
    self.default = default

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.selector, self.sop)
