"""The program DAG, value-set inference (with the k/n fix of p2 §2), and the validator's finer
rules."""

import pytest

from superpose import rasp
from superpose.rasp import graph, lib, validate, value_sets
from superpose.rasp.rasp import indices, tokens


def test_extract_graph_of_frac_prevs():
  is_x = rasp.numerical(tokens == "x").named("is_x")
  frac = lib.make_frac_prevs(is_x)
  g = graph.extract_graph(frac)
  # Ids are drawn breadth first from the tip: the sink first, as in tracr's residual labels.
  assert g.sink == frac.label and frac.label.startswith("frac_prevs_")
  select = frac.children[0]
  bools = frac.children[1]
  assert set(g.nodes) == {frac.label, select.label, bools.label, "indices", "tokens"}
  assert g.children[frac.label] == (select.label, bools.label)
  assert g.children[select.label] == ("indices",)  # keys and queries are the same S-Op: one edge
  assert g.parents["tokens"] == (bools.label,) and g.parents[frac.label] == ()
  assert set(g.sources) == {"tokens", "indices"}
  assert (bools.label, frac.label) in g.edges()
  order = g.topological_labels()
  assert order[-1] == frac.label and order.index("tokens") < order.index(bools.label)


def test_traversals_on_a_shared_subexpression():
  prog = lib.make_sort_freq(max_seq_len=5)
  nodes = graph.walk(prog)
  assert len({id(n) for n in nodes}) == len(nodes) and nodes[0] is prog
  order = graph.topological_order(prog)
  assert {id(n) for n in order} == {id(n) for n in nodes}
  position = {id(n): i for i, n in enumerate(order)}
  for n in order:
    assert all(position[id(c)] < position[id(n)] for c in n.children)
  parents = graph.parents(prog)
  assert parents[id(prog)] == []
  assert len(parents[id(indices)]) >= 2  # the key-uniquifier and the target-position select
  assert {type(s) for s in graph.sources(prog)} == {rasp.TokensType, rasp.IndicesType}
  with pytest.raises(TypeError):
    graph.walk("tokens")


def test_numerical_aggregate_value_set_has_every_fraction():
  frac = lib.make_frac_prevs(tokens == "x")
  sets = value_sets.infer_value_sets(frac, {"a", "x"}, 5)
  want = {k / n for n in range(1, 6) for k in range(n + 1)}
  assert sets[frac] == want and 2 / 5 in sets[frac] and 3 / 4 in sets[frac]
  assert sets[tokens] == {"a", "x"} and sets[frac.children[1]] == {True, False}


def test_value_sets_of_the_other_operations():
  shifted = lib.shift_by(1, tokens)
  width = rasp.SelectorWidth(rasp.Select(tokens, tokens, rasp.Comparison.EQ))
  inv = rasp.Map(lambda x: 1 / x, indices)  # 1/0 is skipped, not an error
  pair = rasp.SequenceMap(lambda x, y: None if x == y else (x, y), tokens, tokens == "a")
  prog = rasp.SequenceMap(
    lambda *a: 0,
    rasp.SequenceMap(lambda *a: 0, shifted, width),
    rasp.SequenceMap(lambda *a: 0, inv, pair),
  )
  sets = value_sets.infer_value_sets(prog, {"a", "b"}, 3)
  assert sets[indices] == {0, 1, 2} and sets[width] == {0, 1, 2, 3}
  assert sets[shifted] == {"a", "b"} and sets[inv] == {1, 0.5}
  assert sets[pair] == {("a", True), ("a", False), ("b", True), ("b", False)}
  with pytest.raises(ValueError, match="max_seq_len"):
    value_sets.infer_value_sets(prog, {"a"}, 0)


def test_frac_prevs_threshold_is_right_on_the_exact_grid():
  """p2 §2's silent failure: `frac_prevs > 0.5` on xxaxa is all True; the grid must contain 2/3,
  3/4, 3/5."""
  prog = rasp.Map(lambda v: v > 0.5, lib.make_frac_prevs(tokens == "x"))
  assert prog("xxaxa") == [True] * 5
  frac = prog.inner
  grid = value_sets.infer_value_sets(prog, {"a", "x"}, 5)[frac]
  assert {2 / 3, 3 / 4, 3 / 5} <= grid


def test_composite_selectors_and_constants_are_flagged():
  a = rasp.Select(tokens, tokens, rasp.Comparison.EQ)
  b = rasp.Select(indices, indices, rasp.Comparison.LEQ)
  issues = validate.static_issues(rasp.SelectorWidth(a & b))
  assert [type(i.expr) for i in issues] == [rasp.SelectorAnd] and "composite" in issues[0].message
  assert (
    validate.static_issues(rasp.SelectorWidth(a & rasp.Select(tokens, tokens, rasp.Comparison.LT)))
    == []
  )
  assert "Full" in str(validate.static_issues(rasp.Map(lambda x: x, rasp.Full(1)) + tokens)[0])
  assert "make_length" in str(validate.static_issues(rasp.length + tokens)[0])
  with pytest.raises(NotImplementedError, match="never reads `tokens`"):
    validate.check_compilable(indices + 1)


def test_dynamic_issues_catch_averaging_that_a_model_cannot_do():
  prevs = rasp.Select(indices, indices, rasp.Comparison.LEQ)
  cat = rasp.Aggregate(prevs, tokens)
  issues = validate.dynamic_issues(cat, [1, 1, 2])
  assert len(issues) == 1 and "query 2 selects several distinct values" in issues[0].message
  assert validate.dynamic_issues(cat, [1, 1, 1]) == []  # one distinct value is fine
  num = rasp.numerical(rasp.Aggregate(prevs, rasp.numerical(tokens + 0), default=0))
  assert "non-binary" in validate.dynamic_issues(num, [0, 2])[0].message
  assert validate.dynamic_issues(num, [0, 1, 1]) == []
  # The causal mask selects fewer keys but still two at position 1.
  assert "query 1" in validate.dynamic_issues(cat, [1, 2], causal=True)[0].message
