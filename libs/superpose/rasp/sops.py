"""S-Ops that need no selector: the primitives, Map, SequenceMap, LinearSequenceMap, Full,
ConstantSOp.

``SOp.__eq__`` builds a ``Map`` (``tokens == "x"``), so test whether two expressions are the same
object with ``is``; S-Ops hash by identity and refuse ``bool()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from superpose.rasp.expr import RASPExpr, Value, check_fn

_log = logging.getLogger(__name__)


def check_sop(value, what: str):
  if not isinstance(value, SOp):
    raise TypeError(f"{what} must be an S-Op, got {type(value).__name__}: {value!r}")


class SOp(RASPExpr):
  """A sequence operation: a function from the input sequence to a sequence of the same length.

  Operators build new S-Ops: with a constant, ``< <= == != > >= + - * / & |`` and ``~`` build a
  ``Map``; with another S-Op they build a ``SequenceMap``.
  """

  default_name = "sop"
  encodable = True

  def __call__(self, xs: Sequence[Value]) -> list[Value]:
    from superpose.rasp import evaluator  # the evaluator imports this module

    return evaluator.evaluate(self, xs)

  def _binary(self, other, op, reflected=False):
    if isinstance(other, SOp):
      return SequenceMap(op, other, self) if reflected else SequenceMap(op, self, other)
    if reflected:
      return Map(lambda x: op(other, x), self)
    return Map(lambda x: op(x, other), self)

  def __lt__(self, other):
    return self._binary(other, lambda x, y: x < y)

  def __le__(self, other):
    return self._binary(other, lambda x, y: x <= y)

  def __eq__(self, other):
    return self._binary(other, lambda x, y: x == y)

  def __ne__(self, other):
    return self._binary(other, lambda x, y: x != y)

  def __gt__(self, other):
    return self._binary(other, lambda x, y: x > y)

  def __ge__(self, other):
    return self._binary(other, lambda x, y: x >= y)

  def __add__(self, other):
    return self._binary(other, lambda x, y: x + y)

  def __radd__(self, other):
    return self._binary(other, lambda x, y: x + y, reflected=True)

  def __sub__(self, other):
    return self._binary(other, lambda x, y: x - y)

  def __rsub__(self, other):
    return self._binary(other, lambda x, y: x - y, reflected=True)

  def __mul__(self, other):
    return self._binary(other, lambda x, y: x * y)

  def __rmul__(self, other):
    return self._binary(other, lambda x, y: x * y, reflected=True)

  def __truediv__(self, other):
    return self._binary(other, lambda x, y: x / y)

  def __rtruediv__(self, other):
    return self._binary(other, lambda x, y: x / y, reflected=True)

  def __and__(self, other):
    return self._binary(other, lambda x, y: x and y)

  def __rand__(self, other):
    return self._binary(other, lambda x, y: x and y, reflected=True)

  def __or__(self, other):
    return self._binary(other, lambda x, y: x or y)

  def __ror__(self, other):
    return self._binary(other, lambda x, y: x or y, reflected=True)

  def __invert__(self):
    return Map(lambda x: not x, self)

  __hash__ = RASPExpr.__hash__

  def __bool__(self):
    raise TypeError(
      "an S-Op has no truth value (did `sop == x` build a Map where a bool was meant?)"
    )


class _Primitive(SOp):
  """tokens / indices / length: no children, and a fixed label without an id."""

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return ()

  @property
  def label(self) -> str:
    return self.default_name

  def __repr__(self):
    return self.default_name


class TokensType(_Primitive):
  """The input tokens."""

  default_name = "tokens"


class IndicesType(_Primitive):
  """The position of each token, 0..n-1 (there is no BOS in RASP)."""

  default_name = "indices"


class LengthType(_Primitive):
  """The input length at every position. Not compilable: use ``lib.make_length()``."""

  default_name = "length"


tokens = TokensType()
indices = IndicesType()
length = LengthType()


class Map(SOp):
  """``f`` applied elementwise to ``inner``. A Map of a Map fuses into one Map when ``simplify``."""

  default_name = "map"

  def __init__(self, f: Callable[[Value], Value], inner: SOp, simplify: bool = True):
    super().__init__()
    check_fn(f, "Map: f")
    check_sop(inner, "Map: inner")
    if simplify and isinstance(inner, Map):
      inner_f, outer_f = inner.f, f
      f = lambda x: outer_f(inner_f(x))  # noqa: E731
      inner = inner.inner
    self.f = f
    self.inner = inner

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.inner,)


class SequenceMap(SOp):
  """``f(x, y)`` applied elementwise to two S-Ops."""

  default_name = "sequence_map"

  def __init__(self, f: Callable[[Value, Value], Value], fst: SOp, snd: SOp):
    super().__init__()
    check_fn(f, f"{type(self).__name__}: f")
    check_sop(fst, f"{type(self).__name__}: fst")
    check_sop(snd, f"{type(self).__name__}: snd")
    if fst is snd:
      _log.warning("SequenceMap with the same S-Op as both inputs; a Map would be smaller")
    self.f = f
    self.fst = fst
    self.snd = snd

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return (self.fst, self.snd)


class LinearSequenceMap(SequenceMap):
  """``fst_fac * x + snd_fac * y`` elementwise; compiles (numerically) to a 4-unit MLP."""

  default_name = "linear_sequence_map"

  def __init__(self, fst: SOp, snd: SOp, fst_fac: float, snd_fac: float):
    for fac, what in ((fst_fac, "fst_fac"), (snd_fac, "snd_fac")):
      if isinstance(fac, bool) or not isinstance(fac, (int, float)):
        raise TypeError(f"LinearSequenceMap: {what} must be a number, got {fac!r}")
    super().__init__(lambda x, y: fst_fac * x + snd_fac * y, fst, snd)
    self.fst_fac = fst_fac
    self.snd_fac = snd_fac


class Full(SOp):
  """The constant ``[fill] * n``. Only useful inside Selects that ``&``/``|`` simplify away."""

  default_name = "full"

  def __init__(self, fill: Value):
    super().__init__()
    self.fill = fill

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return ()


class ConstantSOp(SOp):
  """A fixed sequence, for tests. ``check_length`` makes evaluation reject inputs of another
  length."""

  default_name = "constant_sop"

  def __init__(self, value: Sequence[Value], check_length: bool = True):
    super().__init__()
    self.value = tuple(value)
    self.check_length = check_length

  @property
  def children(self) -> tuple[RASPExpr, ...]:
    return ()


def sop_not(sop: SOp) -> SOp:
  return ~sop
