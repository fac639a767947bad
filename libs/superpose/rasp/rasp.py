"""The RASP language in one namespace, shaped like ``tracr.rasp.rasp`` (p2 §1.1).

    from superpose.rasp import rasp
    is_x = rasp.numerical(rasp.tokens == "x").named("is_x")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    frac = rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac_prevs")
    frac("xaxb")  # [True, 0.5, 0.666..., 0.5]   (the reference evaluator; no BOS)

The definitions live in ``expr`` (base class, annotations, encodings), ``sops`` (S-Ops without
selectors) and ``selectors`` (selectors, SelectorWidth, Aggregate).
"""

from superpose.rasp.expr import (
  Encoding,
  RASPExpr,
  SelectorValue,
  Value,
  annotate,
  categorical,
  get_encoding,
  is_categorical,
  is_numerical,
  numerical,
)
from superpose.rasp.selectors import (
  Aggregate,
  Comparison,
  ConstantSelector,
  Select,
  Selector,
  SelectorAnd,
  SelectorNot,
  SelectorOr,
  SelectorWidth,
  selector_and,
  selector_not,
  selector_or,
)
from superpose.rasp.sops import (
  ConstantSOp,
  Full,
  IndicesType,
  LengthType,
  LinearSequenceMap,
  Map,
  SOp,
  SequenceMap,
  TokensType,
  indices,
  length,
  sop_not,
  tokens,
)

__all__ = [
  "Aggregate",
  "Comparison",
  "ConstantSOp",
  "ConstantSelector",
  "Encoding",
  "Full",
  "IndicesType",
  "LengthType",
  "LinearSequenceMap",
  "Map",
  "RASPExpr",
  "SOp",
  "Select",
  "Selector",
  "SelectorAnd",
  "SelectorNot",
  "SelectorOr",
  "SelectorValue",
  "SelectorWidth",
  "SequenceMap",
  "TokensType",
  "Value",
  "annotate",
  "categorical",
  "get_encoding",
  "indices",
  "is_categorical",
  "is_numerical",
  "length",
  "numerical",
  "selector_and",
  "selector_not",
  "selector_or",
  "sop_not",
  "tokens",
]
