"""tracr's silent failures (p2 §7, §8.6): each compiles correctly here or is refused with a clear
error."""

import itertools

import pytest

from superpose import rasp
from superpose.rasp import cases, lib
from superpose.rasp.compiler import compile_rasp


def test_numerical_map_after_frac_prevs_uses_the_full_k_over_n_grid():
  """tracr lists only 1/n and 0 as the values of a numerical mean, so `frac_prevs > 0.5`
  mis-computes (its repro: `xxaxa` → [T,T,F,T,F]); we discretise on {k/n}. Checked on every input up
  to length 5."""
  program = rasp.Map(lambda v: v > 0.5, lib.make_frac_prevs(rasp.tokens == "x"))
  compiled = compile_rasp(program, {"a", "x"}, 5)
  assert compiled.apply("xxaxa") == [True] * 5
  inputs = [list(p) for n in range(1, 6) for p in itertools.product("ax", repeat=n)]
  for n in range(1, 6):
    batch = [xs for xs in inputs if len(xs) == n]
    assert compiled.apply_batch(batch) == [rasp.evaluate(program, xs) for xs in batch]


def test_numerical_map_with_negative_outputs_keeps_its_sign():
  """tracr's categorical→numerical MLP reads f(x) through one ReLU: f(x) < 0 silently becomes 0
  (#24)."""
  program = rasp.numerical(rasp.Map(lambda x: x - 1, rasp.tokens))
  compiled = compile_rasp(program, {0, 1, 2}, 4)
  assert compiled.apply([0, 1, 2]) == [-1.0, 0.0, 1.0]
  balance = lib.make_pair_balance(
    rasp.tokens, "(", ")"
  )  # negative balances through a LinearSequenceMap
  compiled = compile_rasp(balance, {"(", ")"}, 4)
  assert cases.outputs_match(compiled.apply("())"), rasp.evaluate(balance, "())"))


def test_categorical_none_decodes_to_none_not_the_first_value():
  """tracr's argmax decodes an all-zero output (RASP None) to the first output value."""
  compiled = compile_rasp(lib.shift_by(1, rasp.tokens), {"a", "b", "c", "d"}, 5)
  assert compiled.apply("abcd") == [None, "a", "b", "c"]
  pattern = compile_rasp(lib.detect_pattern(rasp.tokens, "abc"), {"a", "b", "c"}, 6)
  assert pattern.apply("abcabc") == [None, None, True, False, False, True]


def test_categorical_aggregate_averaging_several_values_is_refused():
  """A categorical Aggregate selecting several distinct values would mix their one-hots (the
  compiled model silently outputs one of them, or None); ``apply`` refuses such inputs, naming the
  Aggregate."""
  program = rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), rasp.tokens)
  compiled = compile_rasp(program, {1, 2}, 3)
  assert compiled.apply([2, 2]) == [2, 2]  # one distinct value: fine
  with pytest.raises(rasp.UnsupportedProgramError, match="several distinct values") as err:
    compiled.apply([1, 2])  # RASP: the mean 1.5, which no one-hot direction holds
  assert program.label in str(err.value)


def test_non_default_aggregate_defaults_are_refused():
  """A default stored on BOS corrupts later selectors (tracr's expected-failure test): refused."""
  sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)
  with pytest.raises(rasp.UnsupportedProgramError, match="default None"):
    compile_rasp(rasp.Aggregate(sel, rasp.tokens, default="a"), {"a", "b"}, 3)
  with pytest.raises(rasp.UnsupportedProgramError, match="default 0"):
    compile_rasp(
      rasp.numerical(rasp.Aggregate(sel, rasp.numerical(rasp.tokens == "a"), default=1)),
      {"a", "b"},
      3,
    )


def test_long_selector_width_is_exact():
  """tracr's fixed MLP sharpness miscounted widths above ~10 (#7, #14); ours scales with the
  grid."""
  compiled = compile_rasp(lib.make_length(), {"a", "b"}, 50)
  for n in (11, 20, 37, 50):
    assert compiled.apply(["a"] * n) == [n] * n
