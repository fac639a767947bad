"""tracr's library of RASP programs (p2 §3), written in the compilable subset of RASP.

Non-causal only: make_length, make_reverse, make_pair_balance, make_shuffle_dyck(2), make_hist,
make_sort_unique, make_sort, make_sort_freq. Causal and non-causal: make_frac_prevs, shift_by,
detect_pattern, make_count_less_freq, make_count, make_nary_sequencemap.

Intermediate expressions carry tracr's names, so residual labels read the same
(``frac_prevs_1``...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
  indices,
  numerical,
  tokens,
)


def make_length() -> SOp:
  """The input length at every position, by selector width: ``make_length()("abcdefg") == [7]*7``.

  Use this rather than ``rasp.length``, which does not compile.
  """
  all_true = Select(tokens, tokens, Comparison.TRUE).named("all_true_selector")
  return SelectorWidth(all_true).named("length")


# One shared length, as in tracr: programs that use it several times compile it once.
length = make_length()


def make_reverse(sop: SOp) -> SOp:
  """``sop`` reversed: ``make_reverse(tokens)("abcd") == list("dcba")``."""
  opp_idx = (length - indices).named("opp_idx")
  opp_idx = (opp_idx - 1).named("opp_idx-1")
  reverse_selector = Select(indices, opp_idx, Comparison.EQ).named("reverse_selector")
  return Aggregate(reverse_selector, sop).named("reverse")


def make_frac_prevs(bools: SOp) -> SOp:
  """The fraction of positions up to and including each one where ``bools`` holds (numerical).

  ``make_frac_prevs(tokens == "l")("hello") == [0, 0, 1/3, 1/2, 2/5]``.
  """
  bools = numerical(bools)
  prevs = Select(indices, indices, Comparison.LEQ)
  return numerical(Aggregate(prevs, bools, default=0)).named("frac_prevs")


def make_pair_balance(sop: SOp, open_token: Value, close_token: Value) -> SOp:
  """frac_prevs of ``open_token`` minus frac_prevs of ``close_token`` (numerical).

  ``make_pair_balance(tokens, "(", ")")("a()b(c))") == [0, 1/2, 0, 0, 1/5, 1/6, 0, -1/8]``.
  """
  bools_open = numerical(sop == open_token).named("bools_open")
  opens = numerical(make_frac_prevs(bools_open)).named("opens")
  bools_close = numerical(sop == close_token).named("bools_close")
  closes = numerical(make_frac_prevs(bools_close)).named("closes")
  return numerical(LinearSequenceMap(opens, closes, 1, -1)).named("pair_balance")


def make_shuffle_dyck(pairs: Sequence[str]) -> SOp:
  """1 everywhere if every bracket pair is balanced (shuffle-Dyck), 0 everywhere otherwise.

  ``make_shuffle_dyck(["()", "{}"])("({)}") == [1, 1, 1, 1]``; ``("(){)}") == [0]*5``.
  A prefix that closes more than it opened makes ``has_neg`` positive; the last position must have
  every balance at 0.
  """
  if len(pairs) < 1:
    raise ValueError("make_shuffle_dyck: need at least one pair of brackets")
  balances = []
  for pair in pairs:
    if len(pair) != 2:
      raise ValueError(f"make_shuffle_dyck: a pair is two tokens (open, close), got {pair!r}")
    balances.append(make_pair_balance(tokens, pair[0], pair[1]).named(f"balance_{pair}"))

  any_negative = balances[0] < 0
  for balance in balances[1:]:
    any_negative = any_negative | (balance < 0)
  any_negative = numerical(Map(lambda x: x, any_negative)).named("any_negative")

  select_all = Select(indices, indices, Comparison.TRUE).named("select_all")
  has_neg = numerical(Aggregate(select_all, any_negative, default=0)).named("has_neg")

  all_zero = balances[0] == 0
  for balance in balances[1:]:
    all_zero = all_zero & (balance == 0)

  select_last = Select(indices, length - 1, Comparison.EQ).named("select_last")
  last_zero = Aggregate(select_last, all_zero).named("last_zero")
  not_has_neg = (~has_neg).named("not_has_neg")
  return (last_zero & not_has_neg).named("shuffle_dyck")


def make_shuffle_dyck2() -> SOp:
  """Shuffle-Dyck over ``()`` and ``{}``."""
  return make_shuffle_dyck(pairs=["()", "{}"]).named("shuffle_dyck2")


def make_hist() -> SOp:
  """How often each position's token occurs in the input: ``make_hist()("abac") == [2, 1, 2,
  1]``."""
  same_tok = Select(tokens, tokens, Comparison.EQ).named("same_tok")
  return SelectorWidth(same_tok).named("hist")


def make_sort_unique(vals: SOp, keys: SOp) -> SOp:
  """``vals`` ordered by ascending ``keys``; the keys must be unique.

  Position i reads the value whose key has exactly i smaller keys.
  """
  smaller = Select(keys, keys, Comparison.LT).named("smaller")
  target_pos = SelectorWidth(smaller).named("target_pos")
  sel_new = Select(target_pos, indices, Comparison.EQ)
  return Aggregate(sel_new, vals).named("sort")


def make_sort(vals: SOp, keys: SOp, *, max_seq_len: int, min_key: float) -> SOp:
  """``vals`` ordered by ascending numeric ``keys``, ties kept in input order.

  The keys become unique as ``key + min_key * i / max_seq_len``, which keeps their order when
  ``min_key`` is at most the smallest gap between distinct keys.
  """
  unique_keys = SequenceMap(lambda x, i: x + min_key * i / max_seq_len, keys, indices)
  return make_sort_unique(vals, unique_keys)


def make_sort_freq(max_seq_len: int) -> SOp:
  """The tokens ordered by descending frequency, ties in input order: ``[2, 4, 2, 1] → [2, 2, 4,
  1]``."""
  hist = -1 * make_hist().named("hist")
  return make_sort(tokens, hist, max_seq_len=max_seq_len, min_key=1).named("sort_freq")


def shift_by(offset: int, /, sop: SOp) -> SOp:
  """``sop`` shifted right by ``offset`` positions, ``None`` in the first ``offset``."""
  select_off_by_offset = Select(indices, indices, lambda k, q: q == k + offset)
  return Aggregate(select_off_by_offset, sop, default=None).named(f"shift_by({offset})")


def detect_pattern(sop: SOp, pattern: Sequence[Value]) -> SOp:
  """True where ``pattern`` ends at that position of ``sop``; the first len(pattern)-1 are None.

  ``detect_pattern(tokens, "abc")("abcabc") == [None, None, True, False, False, True]``.
  """
  if len(pattern) < 1:
    raise ValueError(f"detect_pattern: the pattern must have at least one element, got {pattern!r}")
  # detectors[i] holds at j iff the i-th element from the end of the pattern sits at j - i.
  detectors = []
  for i, element in enumerate(reversed(pattern)):
    detector = sop == element
    detectors.append(shift_by(i, detector) if i else detector)
  detected = detectors.pop()
  while detectors:
    detected = detected & detectors.pop()
  return detected.named(f"detect_pattern({pattern})")


def make_count_less_freq(n: int) -> SOp:
  """How many positions hold a token occurring at most ``n`` times (sic: tracr's name says "less").

  ``make_count_less_freq(2)(list("aaabbc")) == [3]*6``.
  """
  hist = make_hist().named("hist")
  select_less = Select(hist, hist, lambda k, q: k <= n).named("select_less")
  return SelectorWidth(select_less).named("count_less_freq")


def make_count(sop: SOp, token: Value) -> SOp:
  """How often ``token`` occurs in ``sop``, at every position: ``make_count(tokens, "a")("cabc") ==
  [1]*4``."""
  return SelectorWidth(Select(sop, sop, lambda k, q: k == token)).named(f"count_{token}")


def make_nary_sequencemap(f: Callable[..., Value], *sops: SOp) -> SOp:
  """``f(x1, ..., xn)`` elementwise over n S-Ops, as binary SequenceMaps building tuples, then a
  Map.

  The tuples are categorical, so the compiled MLPs grow with the product of the value sets.
  """
  if not sops:
    raise ValueError("make_nary_sequencemap: need at least one S-Op")
  if len(sops) == 1:
    return Map(f, sops[0])
  values = SequenceMap(lambda x, y: (x, y), sops[0], sops[1])
  for sop in sops[2:]:
    values = SequenceMap(lambda xs, y: (*xs, y), values, sop)
  return Map(lambda args: f(*args), values)
