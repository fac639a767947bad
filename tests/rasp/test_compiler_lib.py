"""Every library program's compiled model equals the evaluator on all inputs where there are ≤ 10⁴
(else on 2,000 random ones): ~12 s in all, so it runs in the normal suite. Selector width and sort
also at lengths 20 and 50 (``-m slow``; one length-20 check in the normal suite)."""

import itertools
import random

import pytest

from superpose import rasp
from superpose.rasp import cases, lib
from superpose.rasp.compiler import compile_rasp

ABCD, PARENS = ["a", "b", "c", "d"], ["a", "b", "c", "(", ")"]
NUMS = [1, 2, 3, 4]
# name: (program maker, vocab, max_seq_len, causal) — the configurations of tracr's test cases
PROGRAMS = {
  "length": (lib.make_length, ABCD, 5, False),
  "frac_prevs": (lambda: lib.make_frac_prevs(rasp.tokens == "x"), ["a", "b", "c", "x"], 5, False),
  "frac_prevs_causal": (
    lambda: lib.make_frac_prevs(rasp.tokens == "x"),
    ["a", "b", "c", "x"],
    5,
    True,
  ),
  "pair_balance": (lambda: lib.make_pair_balance(rasp.tokens, "(", ")"), PARENS, 10, False),
  "shuffle_dyck2": (lib.make_shuffle_dyck2, ["(", ")", "{", "}"], 5, False),
  "shuffle_dyck3": (lambda: lib.make_shuffle_dyck(["()", "{}", "[]"]), list("(){}[]"), 6, False),
  "hist": (lib.make_hist, ABCD, 5, False),
  "sort_unique": (lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens), NUMS, 5, False),
  "sort": (
    lambda: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1),
    NUMS,
    5,
    False,
  ),
  "sort_freq": (lambda: lib.make_sort_freq(5), NUMS, 5, False),
  "reverse": (lambda: lib.make_reverse(rasp.tokens), ABCD, 5, False),
  "shift_by_2": (lambda: lib.shift_by(2, rasp.tokens), ABCD, 5, False),
  "detect_pattern": (lambda: lib.detect_pattern(rasp.tokens, "abc"), ["a", "b", "c"], 6, False),
  "detect_pattern_causal": (
    lambda: lib.detect_pattern(rasp.tokens, "abc"),
    ["a", "b", "c"],
    6,
    True,
  ),
  "count_less_freq": (lambda: lib.make_count_less_freq(2), ABCD, 6, False),
  "count": (lambda: lib.make_count(rasp.tokens, "a"), ["a", "b", "c"], 8, False),
  "nary_sequencemap": (
    lambda: lib.make_nary_sequencemap(
      lambda x, y, z: x + y - z, rasp.tokens, rasp.tokens, rasp.indices
    ),
    [1, 2, 3],
    5,
    False,
  ),
}


def all_inputs(vocab, max_seq_len, limit=10_000):
  if sum(len(vocab) ** n for n in range(1, max_seq_len + 1)) > limit:
    return None
  return [list(p) for n in range(1, max_seq_len + 1) for p in itertools.product(vocab, repeat=n)]


def random_inputs(vocab, max_seq_len, count, seed=0, length=None):
  rng = random.Random(seed)
  return [
    [rng.choice(vocab) for _ in range(length or rng.randint(1, max_seq_len))] for _ in range(count)
  ]


def check(program, vocab, max_seq_len, inputs, causal=False, chunk=2048):
  compiled = compile_rasp(program, vocab, max_seq_len, causal=causal)
  evaluate = rasp.causal_evaluate if causal else rasp.evaluate
  bad, skipped = [], 0
  for start in range(0, len(inputs), chunk):
    batch = inputs[start : start + chunk]
    got = compiled.apply_batch(batch, check=False, length=max_seq_len + 1)
    for xs, g in zip(batch, got):
      try:
        want = evaluate(program, xs)
      except ValueError:  # RASP itself cannot average these strings; no output to compare
        skipped += 1
        continue
      if not cases.outputs_match(g, want):
        bad.append((xs, g, want))
  assert not bad, f"{len(bad)}/{len(inputs)} inputs differ, e.g. {bad[:3]}"
  assert skipped <= len(inputs) // 2
  return compiled


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_library_program_on_all_inputs(name):
  make, vocab, max_seq_len, causal = PROGRAMS[name]
  inputs = all_inputs(vocab, max_seq_len) or random_inputs(vocab, max_seq_len, 2000, seed=1)
  check(make(), vocab, max_seq_len, inputs, causal)


@pytest.mark.slow
@pytest.mark.parametrize("length", [20, 50])
@pytest.mark.parametrize("name", ["length", "hist", "count", "sort", "sort_unique_indices"])
def test_selector_width_and_sort_at_long_lengths(name, length):
  makers = {
    "length": (lib.make_length, ABCD),
    "hist": (lib.make_hist, ABCD),
    "count": (lambda: lib.make_count(rasp.tokens, "a"), ABCD),
    "sort": (lambda: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=length, min_key=1), NUMS),
    "sort_unique_indices": (lambda: lib.make_sort_unique(rasp.tokens, 1 - rasp.indices), ABCD),
  }
  make, vocab = makers[name]
  inputs = random_inputs(vocab, length, 100, seed=length, length=length) + random_inputs(
    vocab, length, 100
  )
  check(make(), vocab, length, inputs)


def test_selector_width_at_length_20_fast():
  check(lib.make_hist(), ABCD, 20, random_inputs(ABCD, 20, 20, length=20))
