"""Conformance (p2 §5): tracr's 43 cases, the causal cases, the padded cases and the 9 programs that
must raise, compiled to superpose.nn weights and run through the usual forward pass."""

import pytest

from superpose import rasp
from superpose.rasp import cases
from superpose.rasp.compiler import compile_rasp

# Residual widths and layer counts of tracr-pypi 1.0.0 at each case (p2 §3.2). Widths are equal;
# our allocation is one layer shorter on shuffle_dyck (earliest-slot scheduling, see allocate.py).
TRACR_SIZES = {  # name prefix: (layers, d_model)
  "frac_prevs_1": (2, 14),
  "frac_prevs_2": (2, 20),
  "frac_prevs_3": (2, 20),
  "shift_by": (1, 16),
  "detect_pattern_a": (1, 13),
  "detect_pattern_ab": (2, 18),
  "detect_pattern_abc": (3, 26),
  "reverse": (4, 43),
  "length_categorical": (1, 15),
  "length_numerical": (1, 12),
  "pair_balance": (2, 23),
  "shuffle_dyck2": (8, 55),
  "shuffle_dyck3": (9, 73),
  "hist": (1, 19),
  "sort_unique_1": (2, 23),
  "sort_unique_2": (3, 28),
  "sort_1": (3, 43),
  "sort_3": (3, 43),
  "sort_2": (4, 53),
  "sort_freq": (5, 66),
  "make_count_less_freq_categorical": (2, 29),
  "make_count_less_freq_numerical": (2, 23),
  "make_count_": (1, 24),
  "make_nary_sequencemap_1": (3, 74),
  "make_nary_sequencemap_2": (3, 53),
}
FEWER_LAYERS_THAN_TRACR = {"shuffle_dyck2": 7, "shuffle_dyck3": 8}


def tracr_size(name):
  best = max((p for p in TRACR_SIZES if name.startswith(p)), key=len)
  return TRACR_SIZES[best]


def _run(case):
  compiled = compile_rasp(case.program(), case.vocab, case.max_seq_len, causal=case.causal)
  return compiled, compiled.apply(list(case.input), check=False)


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_case_equals_expected_and_evaluator(case):
  compiled, got = _run(case)
  assert cases.outputs_match(got, case.expected), (got, case.expected)
  reference = rasp.evaluate(case.program(), list(case.input))
  assert cases.outputs_match(got, reference), (got, reference)
  layers, width = tracr_size(case.name)
  assert compiled.d_model == width
  expected_layers = next(
    (v for k, v in FEWER_LAYERS_THAN_TRACR.items() if case.name.startswith(k)), layers
  )
  assert compiled.num_layers == expected_layers


def test_there_are_43_cases_and_11_causal_ones():
  assert (
    len(cases.CASES) == 43 and len(cases.CAUSAL_CASES) == 11 and len(cases.UNSUPPORTED_CASES) == 9
  )


@pytest.mark.parametrize("case", cases.CAUSAL_CASES, ids=lambda c: c.name)
def test_causal_case_equals_causal_evaluator(case):
  compiled, got = _run(case)
  assert compiled.config.causal
  assert cases.outputs_match(got, case.expected), (got, case.expected)
  assert cases.outputs_match(got, rasp.causal_evaluate(case.program(), list(case.input)))


def test_causal_reverse_agrees_with_the_causal_evaluator_not_the_default_one():
  program = rasp.lib.make_reverse(rasp.tokens)
  compiled = compile_rasp(program, {"a", "b", "c"}, 4, causal=True)
  got = compiled.apply("abc", check=False)
  assert got == rasp.causal_evaluate(program, "abc") != rasp.evaluate(program, "abc")


@pytest.mark.parametrize("case", cases.UNSUPPORTED_CASES, ids=lambda c: c.name)
def test_unsupported_program_raises_naming_the_operation(case):
  program = case.program()
  with pytest.raises(NotImplementedError) as err:
    compile_rasp(program, case.vocab, case.max_seq_len)
  assert isinstance(err.value, rasp.UnsupportedProgramError)
  labels = {e.label for e in rasp.graph.walk(program)}
  assert any(issue.expr.label in labels for issue in err.value.issues)
  assert any(label in str(err.value) for label in labels)


def test_padded_batches_equal_expected():
  """tracr's padding test (reverse ×4, length ×6 at max_seq_len 5), as one right-padded batch
  each."""
  groups = {}
  for case in cases.PADDING_CASES:
    groups.setdefault(case.name.rsplit("_", 1)[0], []).append(case)
  for group in groups.values():
    compiled = compile_rasp(group[0].program(), group[0].vocab, group[0].max_seq_len)
    ids, segments = compiled.encode([list(c.input) for c in group], length=compiled.max_seq_len + 1)
    assert (
      ids[0, 0] == compiled.tokens.index("BOS")
      and (ids[segments == 0] == compiled.tokens.index("PAD")).all()
    )
    got = compiled.apply_batch([list(c.input) for c in group], length=compiled.max_seq_len + 1)
    for g, case in zip(got, group):
      assert cases.outputs_match(g, case.expected), (case.name, g, case.expected)


def test_bos_and_pad_must_be_outside_the_vocab():
  with pytest.raises(ValueError, match="compiler_bos"):
    compile_rasp(rasp.lib.make_hist(), {"a", "BOS"}, 4)
  with pytest.raises(ValueError, match="compiler_pad"):
    compile_rasp(rasp.lib.make_hist(), {"a", "b"}, 4, compiler_pad="a")


def test_program_without_tokens_and_composite_selectors_are_refused():
  with pytest.raises(rasp.UnsupportedProgramError, match="tokens"):
    compile_rasp(rasp.Map(lambda i: i + 1, rasp.indices), {"a"}, 3)
  both = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ) & rasp.Select(
    rasp.indices, rasp.indices, rasp.Comparison.LEQ
  )
  with pytest.raises(rasp.UnsupportedProgramError, match="composite selectors"):
    compile_rasp(rasp.SelectorWidth(both), {"a", "b"}, 3)
  with pytest.raises(rasp.UnsupportedProgramError, match="length"):
    compile_rasp(rasp.Map(lambda n: n + 1, rasp.length) + rasp.tokens, {1, 2}, 3)
