"""The base of every RASP expression: immutability, annotations, lazy unique ids, labels, encodings.

Expressions are immutable: attributes cannot be reassigned after construction, and ``named`` /
``annotated`` / ``numerical`` / ``categorical`` return a shallow copy with a fresh id (p2 §1.1). Ids
come from one global counter and are drawn lazily, the first time ``unique_id`` (or ``label``) is
read, so the labels a compiler sees follow its own traversal order (``frac_prevs_1``, ``is_x_3``,
... as in tracr).
"""

from __future__ import annotations

import abc
import enum
import itertools
import types
from collections.abc import Mapping, Sequence
from typing import Any

Value = Any  # None, int, float, str, bool, or a tuple of those (n-ary sequence maps)
SelectorValue = list[list[bool]]

_ids = itertools.count(1)
NAME, ENCODING = "name", "encoding"


class Encoding(enum.Enum):
  """How an S-Op is stored in the residual stream: one-hot per value, or one scalar direction."""

  CATEGORICAL = "categorical"
  NUMERICAL = "numerical"


class _Frozen(abc.ABCMeta):
  """Freezes every expression once its (possibly layered) ``__init__`` has finished."""

  def __call__(cls, *args, **kwargs):
    obj = super().__call__(*args, **kwargs)
    object.__setattr__(obj, "_frozen", True)
    return obj


class RASPExpr(metaclass=_Frozen):
  """Base of every RASP expression: annotations, a lazy unique id, a label and its children.

  Subclasses set ``default_name`` (the ``name`` annotation unless ``named``) and ``encodable``
  (True for S-Ops, which carry an ``encoding`` annotation, categorical by default).
  """

  default_name = "expr"
  encodable = False
  _frozen = False

  def __init__(self):
    object.__setattr__(self, "_annotations", types.MappingProxyType({}))

  def __setattr__(self, key, value):
    if self._frozen:
      raise AttributeError(f"RASP expressions are immutable: cannot set {key!r} on {self.label}")
    object.__setattr__(self, key, value)

  def __delattr__(self, key):
    raise AttributeError(f"RASP expressions are immutable: cannot delete {key!r}")

  __hash__ = object.__hash__

  @abc.abstractmethod
  def __call__(self, xs: Sequence[Value]):
    """Evaluates the expression on ``xs`` (no BOS) with the default evaluator."""

  @property
  @abc.abstractmethod
  def children(self) -> tuple[RASPExpr, ...]:
    """Direct dependencies, in a fixed order."""

  @property
  def annotations(self) -> Mapping[str, Any]:
    """Explicit annotations over the defaults (``name``, and ``encoding`` for S-Ops)."""
    defaults = {NAME: self.default_name}
    if self.encodable:
      defaults[ENCODING] = Encoding.CATEGORICAL
    return types.MappingProxyType({**defaults, **self._annotations})

  @property
  def name(self) -> str:
    return self.annotations[NAME]

  @property
  def unique_id(self) -> int:
    uid = self.__dict__.get("_unique_id")
    if uid is None:
      uid = next(_ids)
      object.__setattr__(self, "_unique_id", uid)
    return uid

  @property
  def label(self) -> str:
    return f"{self.name}_{self.unique_id}"

  def named(self, name: str):
    """A copy with annotation ``name``; its label becomes ``{name}_{id}``."""
    if not isinstance(name, str):
      raise TypeError(f"named: name must be a str, got {type(name).__name__}")
    return annotate(self, name=name)

  def annotated(self, **annotations):
    """A copy with ``annotations`` added (overriding keys already present)."""
    return annotate(self, **annotations)

  def __repr__(self):
    return f"{type(self).__name__}({self.label})"


def annotate(expr: RASPExpr, **annotations):
  """A shallow copy of ``expr`` with ``annotations`` merged in and a fresh (lazy) id."""
  if not isinstance(expr, RASPExpr):
    raise TypeError(f"annotate: expected a RASP expression, got {type(expr).__name__}")
  if ENCODING in annotations:
    if not expr.encodable:
      raise TypeError(f"annotate: only S-Ops carry an encoding, not {type(expr).__name__}")
    if not isinstance(annotations[ENCODING], Encoding):
      raise TypeError(f"annotate: encoding must be an Encoding, got {annotations[ENCODING]!r}")
  new = object.__new__(type(expr))
  new.__dict__.update(
    {k: v for k, v in expr.__dict__.items() if k not in ("_unique_id", "_frozen")}
  )
  new.__dict__["_annotations"] = types.MappingProxyType({**expr._annotations, **annotations})
  new.__dict__["_frozen"] = True
  return new


def _check_encodable(sop, what: str):
  if not (isinstance(sop, RASPExpr) and sop.encodable):
    raise TypeError(f"{what}: expected an S-Op, got {type(sop).__name__}: {sop!r}")


def numerical(sop):
  """A copy of ``sop`` encoded as one scalar direction."""
  _check_encodable(sop, "numerical")
  return annotate(sop, encoding=Encoding.NUMERICAL)


def categorical(sop):
  """A copy of ``sop`` encoded one-hot (the default)."""
  _check_encodable(sop, "categorical")
  return annotate(sop, encoding=Encoding.CATEGORICAL)


def get_encoding(sop) -> Encoding:
  _check_encodable(sop, "get_encoding")
  return sop.annotations[ENCODING]


def is_numerical(sop) -> bool:
  return get_encoding(sop) is Encoding.NUMERICAL


def is_categorical(sop) -> bool:
  return get_encoding(sop) is Encoding.CATEGORICAL


def check_fn(f, what: str):
  if not callable(f) or isinstance(f, RASPExpr):
    raise TypeError(f"{what} must be a plain callable, got {type(f).__name__}")
