"""The RASP language objects: immutability, labels and ids, encodings, operator sugar, selector
algebra."""

import logging

import pytest

from superpose import rasp
from superpose.rasp import graph


def test_primitives_have_fixed_labels_and_no_children():
  assert (rasp.tokens.label, rasp.indices.label, rasp.length.label) == (
    "tokens",
    "indices",
    "length",
  )
  assert rasp.tokens.children == () and rasp.indices.children == ()
  # An annotated copy of a primitive keeps its label (tracr: annotated tokens/indices are allowed).
  num_tokens = rasp.numerical(rasp.tokens)
  assert num_tokens is not rasp.tokens and num_tokens.label == "tokens"
  assert isinstance(num_tokens, rasp.TokensType)


def test_labels_are_name_and_lazy_global_id():
  a = rasp.Map(lambda x: x + 1, rasp.tokens)
  b = rasp.Map(lambda x: x + 2, rasp.tokens)
  assert a.name == "map"
  first = b.unique_id  # b is read first, so it draws the smaller id
  assert a.unique_id == first + 1
  assert a.label == f"map_{first + 1}" and a.unique_id == a.unique_id


def test_named_returns_a_copy_with_a_new_id_and_keeps_the_original():
  m = rasp.Map(lambda x: x, rasp.tokens)
  m_id = m.unique_id
  n = m.named("is_x")
  assert n is not m and n.name == "is_x" and m.name == "map"
  assert n.unique_id != m_id and n.label == f"is_x_{n.unique_id}"
  assert n.inner is m.inner and n.f is m.f  # shallow copy
  with pytest.raises(TypeError, match="name must be a str"):
    m.named(3)


def test_expressions_are_immutable():
  m = rasp.Map(lambda x: x, rasp.tokens)
  with pytest.raises(AttributeError, match="immutable"):
    m.f = lambda x: 0
  with pytest.raises(AttributeError, match="immutable"):
    del m.inner
  with pytest.raises(TypeError):
    m.annotations["name"] = "x"
  sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
  with pytest.raises(AttributeError, match="immutable"):
    sel.predicate = rasp.Comparison.LT


def test_encodings_default_categorical_and_annotate_copies():
  m = rasp.Map(lambda x: x, rasp.tokens)
  assert rasp.is_categorical(m) and not rasp.is_numerical(m)
  assert rasp.get_encoding(m) is rasp.Encoding.CATEGORICAL
  n = rasp.numerical(m)
  assert rasp.is_numerical(n) and rasp.is_categorical(m)
  assert rasp.is_categorical(rasp.categorical(n))
  assert (
    rasp.numerical(m).named("x").annotations["encoding"] is rasp.Encoding.NUMERICAL
  )  # named keeps it
  assert dict(m.annotated(foo=1).annotations) == {
    "name": "map",
    "encoding": rasp.Encoding.CATEGORICAL,
    "foo": 1,
  }
  sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
  assert "encoding" not in sel.annotations
  with pytest.raises(TypeError, match="S-Op"):
    rasp.numerical(sel)
  with pytest.raises(TypeError, match="Encoding"):
    m.annotated(encoding="numerical")


@pytest.mark.parametrize(
  "cls, name",
  [
    (lambda: rasp.SequenceMap(lambda x, y: x, rasp.tokens, rasp.indices), "sequence_map"),
    (lambda: rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 1, 2), "linear_sequence_map"),
    (lambda: rasp.Full(1), "full"),
    (lambda: rasp.ConstantSOp([1, 2]), "constant_sop"),
    (
      lambda: rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)),
      "selector_width",
    ),
    (
      lambda: rasp.Aggregate(
        rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), rasp.tokens
      ),
      "aggregate",
    ),
    (lambda: rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), "select"),
    (lambda: rasp.ConstantSelector([[True]]), "constant_selector"),
  ],
)
def test_default_names(cls, name):
  assert cls().name == name


def test_constant_operands_build_maps_and_sop_operands_build_sequence_maps():
  xs = [1, 2, 3]
  cases = {
    rasp.tokens + 1: [2, 3, 4],
    1 + rasp.tokens: [2, 3, 4],
    rasp.tokens - 1: [0, 1, 2],
    10 - rasp.tokens: [9, 8, 7],
    rasp.tokens * 2: [2, 4, 6],
    2 * rasp.tokens: [2, 4, 6],
    rasp.tokens / 2: [0.5, 1, 1.5],
    6 / rasp.tokens: [6, 3, 2],
    rasp.tokens < 2: [True, False, False],
    rasp.tokens <= 2: [True, True, False],
    rasp.tokens > 2: [False, False, True],
    rasp.tokens >= 2: [False, True, True],
    rasp.tokens == 2: [False, True, False],
    rasp.tokens != 2: [True, False, True],
    ~(rasp.tokens == 2): [True, False, True],
    (rasp.tokens > 1) & True: [False, True, True],
    (rasp.tokens > 2) | False: [False, False, True],
  }
  for sop, want in cases.items():
    assert isinstance(sop, rasp.Map)
    assert sop(xs) == want
  pairs = {
    rasp.tokens + rasp.indices: [1, 3, 5],
    rasp.tokens - rasp.indices: [1, 1, 1],
    rasp.indices - rasp.tokens: [-1, -1, -1],
    rasp.tokens * rasp.indices: [0, 2, 6],
    rasp.indices / rasp.tokens: [0, 0.5, 2 / 3],
    (rasp.tokens > 1) & (rasp.indices < 2): [False, True, False],
    (rasp.tokens > 2) | (rasp.indices < 1): [True, False, True],
  }
  for sop, want in pairs.items():
    assert isinstance(sop, rasp.SequenceMap) and not isinstance(sop, rasp.LinearSequenceMap)
    assert sop(xs) == pytest.approx(want)


def test_sop_has_no_truth_value():
  with pytest.raises(TypeError, match="no truth value"):
    bool(rasp.tokens == "x")
  with pytest.raises(TypeError, match="no truth value"):
    _ = rasp.indices in [rasp.tokens]


def test_map_of_map_fuses_unless_simplify_is_false():
  inner = rasp.Map(lambda x: x + 1, rasp.tokens)
  fused = rasp.Map(lambda x: x * 10, inner)
  assert fused.inner is rasp.tokens and fused([1, 2]) == [20, 30]
  kept = rasp.Map(lambda x: x * 10, inner, simplify=False)
  assert kept.inner is inner and kept([1, 2]) == [20, 30]
  assert graph.topological_order(kept) == [rasp.tokens, inner, kept]


def test_sequence_map_on_one_sop_twice_logs_a_warning(caplog):
  with caplog.at_level(logging.WARNING, logger="superpose.rasp.sops"):
    sm = rasp.SequenceMap(lambda x, y: x + y, rasp.tokens, rasp.tokens)
  assert "same S-Op" in caplog.text and sm([1, 2]) == [2, 4]


def test_linear_sequence_map_computes_the_linear_form():
  lsm = rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 2, -0.5)
  assert (lsm.fst_fac, lsm.snd_fac) == (2, -0.5)
  assert lsm([1, 2, 4]) == [2.0, 3.5, 7.0]
  with pytest.raises(TypeError, match="fst_fac"):
    rasp.LinearSequenceMap(rasp.tokens, rasp.indices, "2", 1)


def test_constructors_reject_wrong_types():
  sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
  with pytest.raises(TypeError, match="Map: inner"):
    rasp.Map(lambda x: x, [1, 2])
  with pytest.raises(TypeError, match="Map: f"):
    rasp.Map(rasp.tokens, rasp.tokens)
  with pytest.raises(TypeError, match="SequenceMap: snd"):
    rasp.SequenceMap(lambda x, y: x, rasp.tokens, 3)
  with pytest.raises(TypeError, match="Select: keys"):
    rasp.Select(sel, rasp.tokens, rasp.Comparison.EQ)
  with pytest.raises(TypeError, match="Select: predicate"):
    rasp.Select(rasp.tokens, rasp.tokens, "==")
  with pytest.raises(TypeError, match="Aggregate: selector"):
    rasp.Aggregate(rasp.tokens, rasp.tokens)
  with pytest.raises(TypeError, match="Aggregate: sop"):
    rasp.Aggregate(sel, sel)
  with pytest.raises(TypeError, match="default"):
    rasp.Aggregate(sel, rasp.tokens, default=[0])
  with pytest.raises(TypeError, match="SelectorWidth"):
    rasp.SelectorWidth(rasp.tokens)
  with pytest.raises(TypeError, match="SelectorAnd"):
    rasp.SelectorAnd(sel, rasp.tokens)


@pytest.mark.parametrize(
  "comparison, want",
  [
    (rasp.Comparison.EQ, [False, True, False]),
    (rasp.Comparison.LT, [True, False, False]),
    (rasp.Comparison.LEQ, [True, True, False]),
    (rasp.Comparison.GT, [False, False, True]),
    (rasp.Comparison.GEQ, [False, True, True]),
    (rasp.Comparison.NEQ, [True, False, True]),
    (rasp.Comparison.TRUE, [True] * 3),
    (rasp.Comparison.FALSE, [False] * 3),
  ],
)
def test_comparison_is_called_as_key_then_query(comparison, want):
  assert [comparison(key, 1) for key in (0, 1, 2)] == want


def test_comparison_refuses_none():
  with pytest.raises(ValueError, match="key is None"):
    rasp.Comparison.TRUE(None, 1)
  with pytest.raises(ValueError, match="query is None"):
    rasp.Comparison.EQ(1, None)


def test_selector_algebra_simplifies_matching_selects():
  lt = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)
  eq = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ)
  xs = "abc"
  for combined, want in (
    (lt | eq, rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)),
    (lt & eq, rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.FALSE)),
    (~lt, rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.GEQ)),
  ):
    assert isinstance(combined, rasp.Select)
    assert combined.keys is rasp.indices and combined.queries is rasp.indices
    assert combined(xs) == want(xs)


def test_selector_algebra_bakes_full_into_the_predicate():
  on_token_b = rasp.Select(rasp.tokens, rasp.Full("b"), rasp.Comparison.EQ)  # keys equal to "b"
  before = rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.TRUE)
  merged = on_token_b & before
  assert (
    isinstance(merged, rasp.Select)
    and merged.queries is rasp.indices
    and merged.keys is rasp.tokens
  )
  assert merged("abcb") == [[False, True, False, True]] * 4
  assert merged("abcb") == rasp.SelectorAnd(on_token_b, before)("abcb")


def test_selector_algebra_keeps_composites_when_sops_differ():
  a = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
  b = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
  assert isinstance(a & b, rasp.SelectorAnd) and isinstance(a | b, rasp.SelectorOr)
  assert isinstance(~(a & b), rasp.SelectorNot)
  assert isinstance(rasp.selector_and(a, a, simplify=False), rasp.SelectorAnd)
  xs = "abab"
  and_ = (a & b)(xs)
  assert and_ == [[a(xs)[q][k] and b(xs)[q][k] for k in range(4)] for q in range(4)]
  assert (~(a & b))(xs) == [[not v for v in row] for row in and_]


def test_public_api_resolves_and_imports_no_jax():
  import subprocess
  import sys
  import superpose.rasp as pkg

  for name in pkg.__all__:
    assert getattr(pkg, name) is not None, name
  code = (
    "import sys, superpose.rasp\n"
    "assert not any(m.split('.')[0] in ('jax', 'flax') for m in sys.modules)"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
