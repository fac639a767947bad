"""tracr's conformance cases (p2 §3.1, §5) through the evaluator, and the validator on the
unsupported ones."""

import pytest

from superpose import rasp
from superpose.rasp import cases, validate

EXACT = dict(rtol=1e-12, atol=1e-12)


def test_case_tables_have_tracrs_sizes():
  assert len(cases.UNIVERSAL_CASES) == 10 and len(cases.CASES) == 43
  assert (
    len(cases.CAUSAL_CASES) == 11
    and len(cases.UNSUPPORTED_CASES) == 9
    and len(cases.PADDING_CASES) == 10
  )
  assert cases.CASES[:10] == cases.UNIVERSAL_CASES
  for table in (cases.CASES, cases.CAUSAL_CASES, cases.UNSUPPORTED_CASES):
    assert len({c.name for c in table}) == len(table)
  assert all(c.causal for c in cases.CAUSAL_CASES) and not any(c.causal for c in cases.CASES)
  assert all(c.max_seq_len == 5 for c in cases.PADDING_CASES)
  for c in cases.CASES + cases.CAUSAL_CASES:
    assert len(c.input) == len(c.expected) <= c.max_seq_len and set(c.input) <= c.vocab


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_evaluator_reproduces_expected_output(case):
  got = rasp.evaluate(case.program(), case.input, vocab=case.vocab, max_seq_len=case.max_seq_len)
  assert cases.outputs_match(got, case.expected, **EXACT), (got, case.expected)


@pytest.mark.parametrize("case", cases.CAUSAL_CASES, ids=lambda c: c.name)
def test_causal_evaluator_reproduces_expected_output(case):
  got = rasp.causal_evaluate(
    case.program(), case.input, vocab=case.vocab, max_seq_len=case.max_seq_len
  )
  assert cases.outputs_match(got, case.expected, **EXACT), (got, case.expected)


def test_selector_width_case_needs_the_causal_mask():
  case = cases.CAUSAL_CASES[-1]
  assert rasp.evaluate(case.program(), case.input) == [4, 4, 4, 4] != list(case.expected)


@pytest.mark.parametrize("case", cases.PADDING_CASES, ids=lambda c: c.name)
def test_padding_cases_evaluate_at_max_seq_len_5(case):
  assert cases.outputs_match(
    rasp.evaluate(case.program(), case.input, max_seq_len=5), case.expected, **EXACT
  )


@pytest.mark.parametrize(
  "case", cases.CASES + cases.CAUSAL_CASES, ids=lambda c: f"{c.name}-causal{c.causal}"
)
def test_supported_cases_pass_validation(case):
  prog = case.program()
  assert validate.value_issues(prog, case.vocab, case.max_seq_len) == []
  assert validate.dynamic_issues(prog, case.input, causal=case.causal) == []
  validate.check_compilable(prog, case.vocab, case.max_seq_len)


@pytest.mark.parametrize("case", cases.UNSUPPORTED_CASES, ids=lambda c: c.name)
def test_unsupported_cases_are_refused(case):
  with pytest.raises(NotImplementedError, match="unsupported RASP program") as err:
    validate.check_compilable(case.program(), case.vocab, case.max_seq_len)
  assert err.value.issues and all(isinstance(i, validate.Issue) for i in err.value.issues)


def test_each_unsupported_case_breaks_its_own_rule():
  messages = {
    c.name: " | ".join(map(str, validate.value_issues(c.program(), c.vocab, c.max_seq_len)))
    for c in cases.UNSUPPORTED_CASES
  }
  want = {
    "numerical_categorical_aggregate": "categorical Aggregate of the numerical",
    "categorical_numerical_aggregate": "numerical Aggregate of the categorical",
    "numerical_numerical_aggregate": "only average values in {0, 1}",
    "aggregate_with_not_None_default": "needs default 0, got 1",
    "numerical_selector": "Select keys",
    "numerical_SequenceMap": "non-linear SequenceMap needs categorical",
    "categorical_LinearSequenceMap": "LinearSequenceMap needs numerical",
    "numerical_tokens": "tokens must be categorical",
    "numerical_indices": "indices must be categorical",
  }
  assert set(messages) == set(want)
  for name, fragment in want.items():
    assert fragment in messages[name], (name, messages[name])
  # Only the value rule catches the non-binary numerical aggregate; the static rules pass it.
  nn = next(c for c in cases.UNSUPPORTED_CASES if c.name == "numerical_numerical_aggregate")
  assert validate.static_issues(nn.program()) == []


def test_outputs_match():
  assert cases.outputs_match([0.0, "a", None], [0, "a", None])
  assert cases.outputs_match([1.004, True], [1.0, 1])
  assert not cases.outputs_match([1.01], [1.0]) and not cases.outputs_match([1], [1, 2])
  assert not cases.outputs_match(["a"], [None])
  assert cases.outputs_match(["a"], [None], ignore_none=True)
