"""tracr's conformance cases (``tracr/compiler/test_cases.py``, p2 §3.1 and §5) as data.

- ``UNIVERSAL_CASES`` (10): correct under causal and non-causal evaluation.
- ``CASES`` (43): UNIVERSAL + 33 non-causal ones; evaluated (and compiled) without a causal mask.
- ``CAUSAL_CASES`` (11): UNIVERSAL + selector width, evaluated (and compiled) with ``causal=True``.
- ``PADDING_CASES`` (10): reverse ×4, length categorical ×3 and numerical ×3 at max_seq_len 5, for
  right-padded inputs (tracr's padding integration test).
- ``UNSUPPORTED_CASES`` (9): programs a compiler must refuse with ``NotImplementedError``.

Programs are built by ``case.program()`` each time, so each test gets fresh expressions (and ids).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from superpose.rasp import lib
from superpose.rasp.rasp import (
  Aggregate,
  Comparison,
  LinearSequenceMap,
  Map,
  Select,
  SelectorWidth,
  SOp,
  SequenceMap,
  Value,
  categorical,
  indices,
  numerical,
  tokens,
)


@dataclasses.dataclass(frozen=True)
class Case:
  """One program, vocab and max_seq_len, with an input (no BOS) and the expected output."""

  name: str
  make_program: Callable[[], SOp]
  vocab: frozenset
  max_seq_len: int
  input: tuple
  expected: tuple
  causal: bool = False

  def program(self) -> SOp:
    return self.make_program()

  @property
  def numeric(self) -> bool:
    """Whether outputs compare with a tolerance (tracr: when the first expected value is a
    number)."""
    return isinstance(self.expected[0], (int, float))


@dataclasses.dataclass(frozen=True)
class UnsupportedCase:
  """A program a compiler must refuse (NotImplementedError); ``reason`` says which rule it
  breaks."""

  name: str
  make_program: Callable[[], SOp]
  vocab: frozenset
  max_seq_len: int
  reason: str

  def program(self) -> SOp:
    return self.make_program()


def outputs_match(
  got: Sequence[Value],
  expected: Sequence[Value],
  *,
  ignore_none: bool = False,
  rtol: float = 0.005,
  atol: float = 1e-7,
) -> bool:
  """Elementwise equality with tracr's tolerance for numbers (bools count as numbers).

  ``ignore_none`` skips positions where ``None`` is expected, as tracr does for compiled models
  (a categorical None decodes to some value there).
  """
  if len(got) != len(expected):
    return False
  for g, e in zip(got, expected):
    if e is None:
      if not ignore_none and g is not None:
        return False
    elif isinstance(e, (int, float)) and isinstance(g, (int, float)):
      if not abs(g - e) <= atol + rtol * abs(e):
        return False
    elif g != e:
      return False
  return True


def _case(name, make_program, vocab, inp, expected, max_seq_len, causal=False) -> Case:
  return Case(
    name, make_program, frozenset(vocab), max_seq_len, tuple(inp), tuple(expected), causal
  )


_PARENS = {"a", "b", "c", "(", ")"}
_ABCD = {"a", "b", "c", "d"}
_DYCK2 = {"(", ")", "{", "}"}
_DYCK3 = {"(", ")", "{", "}", "[", "]"}

UNIVERSAL_CASES: tuple[Case, ...] = (
  _case(
    "frac_prevs_1",
    lambda: lib.make_frac_prevs(tokens == "l"),
    {"h", "e", "l", "o"},
    "hello",
    [0.0, 0.0, 1 / 3, 1 / 2, 2 / 5],
    5,
  ),
  _case(
    "frac_prevs_2",
    lambda: lib.make_frac_prevs(tokens == "("),
    _PARENS,
    "a()b(c))",
    [0.0, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 2 / 6, 2 / 7, 2 / 8],
    10,
  ),
  _case(
    "frac_prevs_3",
    lambda: lib.make_frac_prevs(tokens == ")"),
    _PARENS,
    "a()b(c))",
    [0.0, 0.0, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 2 / 7, 3 / 8],
    10,
  ),
  _case("shift_by_one", lambda: lib.shift_by(1, tokens), _ABCD, "abcd", [None, "a", "b", "c"], 5),
  _case("shift_by_two", lambda: lib.shift_by(2, tokens), _ABCD, "abcd", [None, None, "a", "b"], 5),
  _case(
    "detect_pattern_a",
    lambda: lib.detect_pattern(tokens, "a"),
    _ABCD,
    "bacd",
    [False, True, False, False],
    5,
  ),
  _case(
    "detect_pattern_ab",
    lambda: lib.detect_pattern(tokens, "ab"),
    {"a", "b"},
    "aaba",
    [None, False, True, False],
    5,
  ),
  _case(
    "detect_pattern_ab_2",
    lambda: lib.detect_pattern(tokens, "ab"),
    {"a", "b"},
    "abaa",
    [None, True, False, False],
    5,
  ),
  _case(
    "detect_pattern_ab_3",
    lambda: lib.detect_pattern(tokens, "ab"),
    {"a", "b"},
    "aaaa",
    [None, False, False, False],
    5,
  ),
  _case(
    "detect_pattern_abc",
    lambda: lib.detect_pattern(tokens, "abc"),
    {"a", "b", "c"},
    "abcabc",
    [None, None, True, False, False, True],
    6,
  ),
)

_NON_CAUSAL_CASES: tuple[Case, ...] = (
  _case("reverse_1", lambda: lib.make_reverse(tokens), _ABCD, "abcd", "dcba", 5),
  _case("reverse_2", lambda: lib.make_reverse(tokens), _ABCD, "abc", "cba", 5),
  _case("reverse_3", lambda: lib.make_reverse(tokens), _ABCD, "ad", "da", 5),
  _case("reverse_4", lambda: lib.make_reverse(tokens), _ABCD, "c", "c", 5),
  _case("length_categorical_1", lambda: categorical(lib.make_length()), _ABCD, "abc", [3, 3, 3], 3),
  _case("length_categorical_2", lambda: categorical(lib.make_length()), _ABCD, "ad", [2, 2], 3),
  _case("length_categorical_3", lambda: categorical(lib.make_length()), _ABCD, "c", [1], 3),
  _case("length_numerical_1", lambda: numerical(lib.make_length()), _ABCD, "abc", [3, 3, 3], 3),
  _case("length_numerical_2", lambda: numerical(lib.make_length()), _ABCD, "ad", [2, 2], 3),
  _case("length_numerical_3", lambda: numerical(lib.make_length()), _ABCD, "c", [1], 3),
  _case(
    "pair_balance_1",
    lambda: lib.make_pair_balance(tokens, "(", ")"),
    _PARENS,
    "a()b(c))",
    [0.0, 1 / 2, 0.0, 0.0, 1 / 5, 1 / 6, 0.0, -1 / 8],
    10,
  ),
  _case(
    "shuffle_dyck2_1", lambda: lib.make_shuffle_dyck(["()", "{}"]), _DYCK2, "({)}", [1, 1, 1, 1], 5
  ),
  _case(
    "shuffle_dyck2_2", lambda: lib.make_shuffle_dyck(["()", "{}"]), _DYCK2, "(){)}", [0] * 5, 5
  ),
  _case("shuffle_dyck2_3", lambda: lib.make_shuffle_dyck(["()", "{}"]), _DYCK2, "{}(", [0] * 3, 5),
  _case(
    "shuffle_dyck3_1",
    lambda: lib.make_shuffle_dyck(["()", "{}", "[]"]),
    _DYCK3,
    "({)[}]",
    [1] * 6,
    6,
  ),
  _case(
    "shuffle_dyck3_2",
    lambda: lib.make_shuffle_dyck(["()", "{}", "[]"]),
    _DYCK3,
    "(){)}",
    [0] * 5,
    6,
  ),
  _case(
    "shuffle_dyck3_3",
    lambda: lib.make_shuffle_dyck(["()", "{}", "[]"]),
    _DYCK3,
    "{}[(]",
    [0] * 5,
    6,
  ),
  _case("hist", lib.make_hist, _ABCD, "abac", [2, 1, 2, 1], 5),
  _case(
    "sort_unique_1",
    lambda: lib.make_sort_unique(vals=tokens, keys=tokens),
    {1, 2, 3, 4},
    [2, 4, 3, 1],
    [1, 2, 3, 4],
    5,
  ),
  _case(
    "sort_unique_2",
    lambda: lib.make_sort_unique(vals=tokens, keys=1 - indices),
    _ABCD,
    "abcd",
    ["d", "c", "b", "a"],
    5,
  ),
  _case(
    "sort_1",
    lambda: lib.make_sort(vals=tokens, keys=tokens, max_seq_len=5, min_key=1),
    {1, 2, 3, 4},
    [2, 4, 3, 1],
    [1, 2, 3, 4],
    5,
  ),
  _case(
    "sort_2",
    lambda: lib.make_sort(vals=tokens, keys=1 - indices, max_seq_len=5, min_key=1),
    _ABCD,
    "abcd",
    ["d", "c", "b", "a"],
    5,
  ),
  _case(
    "sort_3",
    lambda: lib.make_sort(vals=tokens, keys=tokens, max_seq_len=5, min_key=1),
    {1, 2, 3, 4},
    [2, 4, 1, 2],
    [1, 2, 2, 4],
    5,
  ),
  _case(
    "sort_freq",
    lambda: lib.make_sort_freq(max_seq_len=5),
    {1, 2, 3, 4},
    [2, 4, 2, 1],
    [2, 2, 4, 1],
    5,
  ),
  _case(
    "make_count_less_freq_categorical_1",
    lambda: lib.make_count_less_freq(n=2),
    _ABCD,
    "aaabbc",
    [3] * 6,
    6,
  ),
  _case(
    "make_count_less_freq_categorical_2",
    lambda: lib.make_count_less_freq(n=2),
    _ABCD,
    "aacbbc",
    [6] * 6,
    6,
  ),
  _case(
    "make_count_less_freq_numerical_1",
    lambda: numerical(lib.make_count_less_freq(n=2)),
    _ABCD,
    "aaabbc",
    [3] * 6,
    6,
  ),
  _case(
    "make_count_less_freq_numerical_2",
    lambda: numerical(lib.make_count_less_freq(n=2)),
    _ABCD,
    "aacbbc",
    [6] * 6,
    6,
  ),
  _case("make_count_1", lambda: lib.make_count(tokens, "a"), {"a", "b", "c"}, "aaabbc", [3] * 6, 8),
  _case("make_count_2", lambda: lib.make_count(tokens, "a"), {"a", "b", "c"}, "cabc", [1] * 4, 8),
  _case("make_count_3", lambda: lib.make_count(tokens, "a"), {"a", "b", "c"}, "bbc", [0] * 3, 8),
  _case(
    "make_nary_sequencemap_1",
    lambda: lib.make_nary_sequencemap(lambda x, y, z: x + y - z, tokens, tokens, indices),
    {1, 2, 3},
    [1, 2, 3],
    [2, 3, 4],
    5,
  ),
  _case(
    "make_nary_sequencemap_2",
    lambda: lib.make_nary_sequencemap(lambda x, y, z: x * y / z, indices, indices, tokens),
    {1, 2, 3},
    [1, 2, 3],
    [0, 1 / 2, 4 / 3],
    3,
  ),
)

CASES: tuple[Case, ...] = UNIVERSAL_CASES + _NON_CAUSAL_CASES

CAUSAL_CASES: tuple[Case, ...] = tuple(
  dataclasses.replace(c, causal=True) for c in UNIVERSAL_CASES
) + (
  _case(
    "selector_width",
    lambda: SelectorWidth(Select(tokens, tokens, Comparison.TRUE)),
    _ABCD,
    "abcd",
    [1, 2, 3, 4],
    5,
    causal=True,
  ),
)

PADDING_CASES: tuple[Case, ...] = tuple(
  dataclasses.replace(c, max_seq_len=5) for c in CASES if c.name.startswith(("reverse_", "length_"))
)


def _identity_map(sop: SOp) -> SOp:
  return Map(lambda x: x, sop)


_TRUE_ON_TOKENS = lambda: Select(tokens, tokens, Comparison.TRUE)  # noqa: E731

UNSUPPORTED_CASES: tuple[UnsupportedCase, ...] = (
  UnsupportedCase(
    "numerical_categorical_aggregate",
    lambda: Aggregate(_TRUE_ON_TOKENS(), numerical(_identity_map(tokens))),
    frozenset({1, 2, 3}),
    5,
    "categorical Aggregate of a numerical S-Op",
  ),
  UnsupportedCase(
    "categorical_numerical_aggregate",
    lambda: numerical(Aggregate(_TRUE_ON_TOKENS(), tokens)),
    frozenset({1, 2, 3}),
    5,
    "numerical Aggregate of a categorical S-Op",
  ),
  UnsupportedCase(
    "numerical_numerical_aggregate",
    lambda: numerical(Aggregate(_TRUE_ON_TOKENS(), numerical(_identity_map(tokens)), default=0)),
    frozenset({1, 2, 3}),
    5,
    "numerical Aggregate of values outside {0, 1}",
  ),
  UnsupportedCase(
    "aggregate_with_not_None_default",
    lambda: numerical(Aggregate(Select(indices, indices, Comparison.EQ), tokens, default=1)),
    frozenset({1, 2, 3}),
    5,
    "numerical Aggregate with default != 0",
  ),
  UnsupportedCase(
    "numerical_selector",
    lambda: SelectorWidth(
      Select(numerical(_identity_map(tokens)), numerical(_identity_map(tokens)), Comparison.LT)
    ),
    frozenset({1, 2, 3}),
    5,
    "Select with numerical keys or queries",
  ),
  UnsupportedCase(
    "numerical_SequenceMap",
    lambda: numerical(
      SequenceMap(
        lambda x, y: x + y, numerical(_identity_map(indices)), numerical(_identity_map(tokens))
      )
    ),
    frozenset({1, 2, 3}),
    5,
    "non-linear SequenceMap with numerical inputs or output",
  ),
  UnsupportedCase(
    "categorical_LinearSequenceMap",
    lambda: categorical(LinearSequenceMap(categorical(indices), categorical(tokens), 1, 1)),
    frozenset({1, 2, 3}),
    5,
    "LinearSequenceMap with categorical inputs or output",
  ),
  UnsupportedCase(
    "numerical_tokens", lambda: numerical(tokens), frozenset({1, 2, 3}), 5, "numerical tokens"
  ),
  UnsupportedCase(
    "numerical_indices", lambda: numerical(indices), frozenset({1, 2, 3}), 5, "numerical indices"
  ),
)
