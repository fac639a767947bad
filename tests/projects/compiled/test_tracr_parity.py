"""Each conformance case compiled by tracr (tracr-pypi, the ``tracr`` extra) and by us: same decoded
outputs (tracr's None positions ignored: it decodes them to the first value), same residual width,
same layer count except shuffle_dyck, where our earliest-slot allocation saves one layer."""

import pytest

from superpose import rasp
from superpose.rasp import cases
from superpose.rasp.compiler import compile_rasp

pytest.importorskip("tracr")
pytest.importorskip("haiku")
from projects.compiled import tracr_bridge  # noqa: E402

FEWER_LAYERS = ("shuffle_dyck",)
FAST = ("frac_prevs_1", "sort_unique_2")


def compare(case):
  ours = compile_rasp(case.program(), case.vocab, case.max_seq_len, causal=case.causal)
  theirs = tracr_bridge.compile_with_tracr(
    case.program(), case.vocab, case.max_seq_len, causal=case.causal
  )
  got, reference = ours.apply(list(case.input), check=False), theirs.apply(list(case.input))
  assert cases.outputs_match(reference, case.expected, ignore_none=True)
  assert cases.outputs_match(got, case.expected)
  expected_none = [e is None for e in case.expected]
  assert cases.outputs_match(
    [None if n else g for g, n in zip(got, expected_none)],
    [None if n else r for r, n in zip(reference, expected_none)],
  )
  assert ours.d_model == theirs.d_model
  if case.name.startswith(FEWER_LAYERS):
    assert ours.num_layers == theirs.num_layers - 1
  else:
    assert ours.num_layers == theirs.num_layers


@pytest.mark.parametrize("name", FAST)
def test_tracr_parity_fast(name):
  compare(next(c for c in cases.CASES if c.name == name))


@pytest.mark.slow
@pytest.mark.parametrize(
  "case", cases.CASES + cases.CAUSAL_CASES, ids=lambda c: f"{c.name}{'_causal' * c.causal}"
)
def test_tracr_parity_every_case(case):
  compare(case)


def test_translation_keeps_names_and_encodings():
  program = rasp.lib.make_frac_prevs(rasp.tokens == "x")
  translated = tracr_bridge.to_tracr(program)
  from tracr.rasp import rasp as tr

  assert translated.name == program.name and tr.is_numerical(translated)
  assert translated(list("xax")) == program(list("xax"))
