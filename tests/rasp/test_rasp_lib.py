"""tracr's library programs against plain Python on every input up to a small length (p2 §3)."""

import itertools
import math

import pytest

from superpose import rasp
from superpose.rasp import lib
from superpose.rasp.rasp import indices, tokens


def inputs(vocab, max_len, min_len=1):
  for n in range(min_len, max_len + 1):
    yield from (list(p) for p in itertools.product(sorted(vocab), repeat=n))


def close(got, want):
  return len(got) == len(want) and all(
    g is w if w is None else math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12)
    for g, w in zip(got, want)
  )


def test_length_and_hist():
  length, hist = lib.make_length(), lib.make_hist()
  for xs in inputs("abc", 5):
    assert length(xs) == [len(xs)] * len(xs)
    assert hist(xs) == [xs.count(x) for x in xs]
  assert length("abcdefg") == [7] * 7 and hist("abac") == [2, 1, 2, 1]


def test_reverse():
  rev = lib.make_reverse(tokens)
  for xs in inputs("abc", 5):
    assert rev(xs) == xs[::-1]


def test_frac_prevs_and_pair_balance():
  frac = lib.make_frac_prevs(tokens == "(")
  balance = lib.make_pair_balance(tokens, "(", ")")
  assert rasp.is_numerical(frac) and rasp.is_numerical(balance)
  for xs in inputs("()a", 5):
    opens = [xs[: i + 1].count("(") / (i + 1) for i in range(len(xs))]
    closes = [xs[: i + 1].count(")") / (i + 1) for i in range(len(xs))]
    assert close(frac(xs), opens)
    assert close(balance(xs), [o - c for o, c in zip(opens, closes)])
  assert close(lib.make_frac_prevs(tokens == "l")("hello"), [0, 0, 1 / 3, 1 / 2, 2 / 5])


def _shuffle_dyck_reference(xs, pairs):
  for open_, close_ in pairs:
    depth = 0
    for x in xs:
      depth += (x == open_) - (x == close_)
      if depth < 0:
        return [0] * len(xs)
    if depth:
      return [0] * len(xs)
  return [1] * len(xs)


@pytest.mark.parametrize(
  "pairs, max_len", [(["()"], 6), (["()", "{}"], 5), (["()", "{}", "[]"], 4)]
)
def test_shuffle_dyck(pairs, max_len):
  prog = lib.make_shuffle_dyck(pairs)
  vocab = "".join(pairs)
  balanced = 0
  for xs in inputs(vocab, max_len):
    want = _shuffle_dyck_reference(xs, pairs)
    assert prog(xs) == want, xs
    balanced += want[0]
  assert balanced > 0  # the inputs include balanced strings, not only failures
  assert (
    lib.make_shuffle_dyck2()(list("({)}")) == [1] * 4
    and lib.make_shuffle_dyck2().name == "shuffle_dyck2"
  )
  with pytest.raises(ValueError):
    lib.make_shuffle_dyck([])
  with pytest.raises(ValueError):
    lib.make_shuffle_dyck(["(", ")"])


def test_sort_unique_on_distinct_keys():
  prog = lib.make_sort_unique(tokens, tokens)
  by_neg_index = lib.make_sort_unique(tokens, 1 - indices)
  for n in range(1, 6):
    for xs in itertools.permutations(range(1, 6), n):
      assert prog(list(xs)) == sorted(xs)
      assert by_neg_index(list(xs)) == list(xs)[::-1]


def test_sort_with_repeated_keys_is_stable():
  prog = lib.make_sort(tokens, tokens, max_seq_len=5, min_key=1)
  keyed = lib.make_sort(
    indices, tokens, max_seq_len=5, min_key=1
  )  # which input position lands where
  for xs in inputs([1, 2, 3, 4], 5):
    assert prog(xs) == sorted(xs)
    assert keyed(xs) == sorted(range(len(xs)), key=lambda i: xs[i])


def test_sort_freq():
  prog = lib.make_sort_freq(max_seq_len=5)
  for xs in inputs([1, 2, 3], 5):
    assert prog(xs) == sorted(xs, key=lambda x: -xs.count(x)), xs
  assert prog([2, 4, 2, 1]) == [2, 2, 4, 1]


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_shift_by(offset):
  prog = lib.shift_by(offset, tokens)
  assert prog.name == f"shift_by({offset})"
  for xs in inputs("ab", 5):
    assert prog(xs) == ([None] * offset + xs)[: len(xs)]


@pytest.mark.parametrize("pattern", ["a", "ab", "aba", "bb"])
def test_detect_pattern(pattern):
  prog = lib.detect_pattern(tokens, pattern)
  k = len(pattern)
  for xs in inputs("ab", 6):
    want = [
      None if i < k - 1 else "".join(xs[i - k + 1 : i + 1]) == pattern for i in range(len(xs))
    ]
    assert prog(xs) == want
  with pytest.raises(ValueError, match="at least one"):
    lib.detect_pattern(tokens, "")


def test_count_and_count_less_freq():
  count_a = lib.make_count(tokens, "a")
  assert count_a.name == "count_a"
  less = {n: lib.make_count_less_freq(n) for n in (1, 2, 3)}
  for xs in inputs("abc", 5):
    assert count_a(xs) == [xs.count("a")] * len(xs)
    for n, prog in less.items():
      assert prog(xs) == [sum(xs.count(x) <= n for x in xs)] * len(xs)
  assert less[2](list("aaabbc")) == [3] * 6 and less[2](list("aacbbc")) == [6] * 6


def test_nary_sequencemap():
  f3 = lib.make_nary_sequencemap(lambda x, y, z: 100 * x + 10 * y + z, tokens, indices, tokens)
  f4 = lib.make_nary_sequencemap(lambda *a: a, tokens, indices, tokens, indices)
  f1 = lib.make_nary_sequencemap(lambda x: -x, tokens)
  for xs in inputs([1, 2, 3], 4):
    assert f3(xs) == [100 * x + 10 * i + x for i, x in enumerate(xs)]
    assert f4(xs) == [(x, i, x, i) for i, x in enumerate(xs)]
    assert f1(xs) == [-x for x in xs]
  # Tuple-valued inputs stay whole (no splicing of an S-Op whose values are tuples).
  pairs = rasp.SequenceMap(lambda x, y: (x, y), tokens, indices)
  assert lib.make_nary_sequencemap(lambda p, t: (p, t), pairs, tokens)([7]) == [((7, 0), 7)]
  with pytest.raises(ValueError):
    lib.make_nary_sequencemap(lambda: 0)


# tracr's "work under causal and non-causal evaluation" programs that only look back
CAUSAL_SAFE = {
  "frac_prevs": lambda: lib.make_frac_prevs(tokens == "a"),
  "shift_by": lambda: lib.shift_by(2, tokens),
  "detect_pattern": lambda: lib.detect_pattern(tokens, "ab"),
}
ALL_PROGRAMS = {
  **CAUSAL_SAFE,
  "length": lib.make_length,
  "reverse": lambda: lib.make_reverse(tokens),
  "hist": lib.make_hist,
  "pair_balance": lambda: lib.make_pair_balance(tokens, "a", "b"),
  "shuffle_dyck": lambda: lib.make_shuffle_dyck(["ab"]),
  "sort": lambda: lib.make_sort(tokens, indices, max_seq_len=5, min_key=1),
  "count": lambda: lib.make_count(tokens, "a"),
}


@pytest.mark.parametrize("name", sorted(CAUSAL_SAFE))
def test_causal_safe_programs_agree_with_and_without_the_mask(name):
  prog = CAUSAL_SAFE[name]()
  for xs in inputs("abc", 5):
    assert rasp.causal_evaluate(prog, xs) == rasp.evaluate(prog, xs)


@pytest.mark.parametrize("name", sorted(ALL_PROGRAMS))
def test_causal_evaluation_is_evaluation_of_each_prefix(name):
  """Under the mask, position i equals the last output on xs[:i+1] when every S-Op a selector reads
  depends on the prefix alone at each position (true for these programs)."""
  prog = ALL_PROGRAMS[name]()
  for xs in inputs("abc", 5):
    assert rasp.causal_evaluate(prog, xs) == [prog(xs[: i + 1])[i] for i in range(len(xs))], xs


def test_causal_count_less_freq_reads_prefix_histograms():
  """Its selector compares hist values computed on shorter prefixes, so it is not a prefix
  program."""
  prog = lib.make_count_less_freq(1)
  assert rasp.causal_evaluate(prog, ["a", "a"]) == [1, 1]  # hist at key 0 was 1 when computed
  assert [prog(["a", "a"][: i + 1])[i] for i in range(2)] == [1, 0]
