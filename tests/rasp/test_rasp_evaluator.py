"""The reference evaluator's semantics (p2 §1.2), its input checks, and its causal variant."""

import numpy as np
import pytest

from superpose import rasp
from superpose.rasp import evaluator, graph

ALL = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)


def test_primitives_have_no_bos():
  xs = ["a", "b", "c"]
  assert rasp.tokens(xs) == xs and rasp.indices(xs) == [0, 1, 2] and rasp.length(xs) == [3, 3, 3]
  assert rasp.tokens("") == [] and rasp.indices([]) == []


def test_map_and_sequence_map_propagate_none():
  shifted = rasp.lib.shift_by(1, rasp.tokens)  # [None, x0, x1, ...]
  calls = []
  m = rasp.Map(lambda x: calls.append(x) or x * 2, shifted)
  assert m([1, 2, 3]) == [None, 2, 4] and calls == [1, 2]
  sm = rasp.SequenceMap(lambda x, y: x + y, shifted, rasp.indices)
  assert sm([5, 6, 7]) == [None, 6, 8]
  assert rasp.SequenceMap(lambda x, y: x + y, rasp.indices, shifted)([5, 6, 7]) == [None, 6, 8]


def test_select_is_query_by_key_with_predicate_of_key_then_query():
  sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)  # key < query
  assert sel("abc") == [[False, False, False], [True, False, False], [True, True, False]]
  asym = rasp.Select(rasp.tokens, rasp.indices, lambda k, q: (k, q) == (9, 0))
  assert asym([1, 9]) == [[False, True], [False, False]]


def test_selector_width_is_row_sums():
  sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
  assert rasp.SelectorWidth(sel)("abcd") == [1, 2, 3, 4]
  assert rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.FALSE))("ab") == [
    0,
    0,
  ]


def test_aggregate_mean_rules():
  prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
  none_sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.FALSE)
  assert rasp.Aggregate(none_sel, rasp.tokens, default="z")("ab") == ["z", "z"]
  assert rasp.Aggregate(none_sel, rasp.tokens)("ab") == [None, None]
  # Exactly one selected: that value, of whatever type (no float conversion).
  one = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ), rasp.tokens)
  assert one("ab") == ["a", "b"]
  got = one([3, True])
  assert got == [3, True] and type(got[0]) is int and type(got[1]) is bool
  # Several: the mean of numbers (ints, bools, floats mixed), an error otherwise.
  assert rasp.Aggregate(prevs, rasp.tokens)([1, True, 2.5, 0]) == [1, 1.0, 4.5 / 3, 4.5 / 4]
  with pytest.raises(ValueError, match="cannot average") as err:
    rasp.Aggregate(ALL, rasp.tokens)("ab")
  assert any("aggregate" in note for note in err.value.__notes__)
  with pytest.raises(ValueError, match="cannot average"):
    rasp.Aggregate(ALL, rasp.lib.shift_by(1, rasp.tokens))([1, 2, 3])  # a None among several values
  assert evaluator.mean([], 0) == 0 and evaluator.mean([None], 0) is None


def test_encoding_does_not_change_evaluation():
  prog = rasp.Aggregate(
    rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ), rasp.tokens == "x", default=0
  )
  xs = "xaxx"
  assert (
    rasp.numerical(prog)(xs) == rasp.categorical(prog)(xs) == prog(xs) == [True, 0.5, 2 / 3, 0.75]
  )


def test_causal_evaluator_masks_every_selector_to_the_lower_triangle():
  assert rasp.causal_evaluate(ALL, "abc") == [
    [True, False, False],
    [True, True, False],
    [True, True, True],
  ]
  assert rasp.causal_evaluate(rasp.SelectorWidth(ALL), "abcd") == [1, 2, 3, 4]
  assert rasp.evaluate(rasp.SelectorWidth(ALL), "abcd", causal=True) == [1, 2, 3, 4]
  # Composite selectors are masked too, after combining: ~ of a masked selector is masked again.
  composite = ~rasp.SelectorAnd(ALL, rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ))
  assert isinstance(composite, rasp.SelectorNot)
  assert rasp.causal_evaluate(composite, "abc") == [
    [False, False, False],
    [True, False, False],
    [True, True, False],
  ]
  assert rasp.evaluate(composite, "abc") == [
    [False, True, True],
    [True, False, True],
    [True, True, False],
  ]
  # tracr #19: reverse is not causal-safe; causally it reads the first token everywhere.
  assert rasp.causal_evaluate(rasp.lib.make_reverse(rasp.tokens), "abcd") == list("aaaa")


def test_constants_check_the_input_length():
  assert rasp.ConstantSOp([1, 2, 3])("abc") == [1, 2, 3]
  assert rasp.ConstantSOp([1, 2], check_length=False)("abc") == [1, 2]
  with pytest.raises(ValueError, match="ConstantSOp of length 2"):
    rasp.ConstantSOp([1, 2])("abc")
  assert rasp.ConstantSelector([[1, 0], [0, 1]])("ab") == [[True, False], [False, True]]
  with pytest.raises(ValueError, match="ConstantSelector"):
    rasp.ConstantSelector([[1, 0], [0, 1]])("abc")
  assert rasp.Full(7)("abc") == [7, 7, 7]


def test_input_checks():
  prog = rasp.lib.make_hist()
  assert rasp.evaluate(prog, "abca", vocab={"a", "b", "c"}, max_seq_len=4) == [2, 1, 1, 2]
  assert rasp.evaluate(prog, ("a", "b")) == rasp.evaluate(prog, np.array(["a", "b"])) == [1, 1]
  with pytest.raises(ValueError, match=r"token 'd' at position 2 is not in the vocab"):
    rasp.evaluate(prog, "abd", vocab={"a", "b", "c"})
  with pytest.raises(ValueError, match="more than max_seq_len=3"):
    rasp.evaluate(prog, "abca", max_seq_len=3)
  with pytest.raises(ValueError, match="without BOS"):
    rasp.evaluate(prog, ["BOS", "a"], bos="BOS")
  with pytest.raises(TypeError, match="not hashable"):
    rasp.evaluate(prog, [["a"]], vocab={"a"})
  for bad in (3, None, {"a", "b"}, {"a": 1}, (x for x in "ab")):
    with pytest.raises(TypeError, match="RASP input must be"):
      rasp.evaluate(prog, bad)
  with pytest.raises(ValueError, match="1-D"):
    rasp.evaluate(prog, np.zeros((2, 2)))
  with pytest.raises(TypeError, match="expected a RASP expression"):
    rasp.evaluate(lambda x: x, "ab")


def test_user_errors_keep_their_type_and_name_the_expression():
  bad = rasp.Map(lambda x: 1 / x, rasp.indices).named("inverse")
  with pytest.raises(ZeroDivisionError) as err:
    bad("ab")
  assert any(note.startswith("while evaluating inverse_") for note in err.value.__notes__)


def test_shared_subexpressions_are_evaluated_once():
  calls = []
  shared = rasp.SequenceMap(lambda x, i: calls.append(x) or x + i, rasp.tokens, rasp.indices)
  diamond = rasp.SequenceMap(lambda x, y: x + y, shared + 1, shared * 2)
  assert diamond([1, 2]) == [4, 10] and calls == [1, 2]
  values = rasp.evaluator.trace(diamond, [1, 2])
  assert set(map(id, values)) == set(map(id, graph.walk(diamond))) and values[shared] == [1, 3]


def test_deep_programs_do_not_recurse():
  prog = rasp.indices
  for _ in range(3000):
    prog = rasp.SequenceMap(lambda x, y: x + y, prog, rasp.indices)
  assert prog("abc") == [0, 3001, 6002]
