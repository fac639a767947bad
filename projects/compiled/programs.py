"""tracr's library programs by name, built for a vocab and max_seq_len (CLI and benchmark).

Programs whose keys must be numbers (sort, sort_unique) sort by the token's rank in the sorted
vocab, so they work on any vocab (``--vocab a,b,c`` sorts alphabetically).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from superpose import rasp
from superpose.rasp import lib
from superpose.rasp.compiler.bases import sorted_values


def _rank(vocab) -> rasp.SOp:
  order = {v: i for i, v in enumerate(sorted_values(vocab))}
  return rasp.Map(lambda x: order[x], rasp.tokens).named("rank")


def _first(vocab):
  return sorted_values(vocab)[0]


def build(
  name: str,
  vocab: Sequence,
  max_seq_len: int,
  *,
  token=None,
  pattern: Sequence | None = None,
  pairs: Sequence[str] = ("()", "{}"),
  offset: int = 1,
  n: int = 2,
) -> rasp.SOp:
  """The library program ``name``; ``token`` (frac_prevs, count) defaults to the first vocab token,
  ``pattern`` (detect_pattern) to the first two."""
  token = _first(vocab) if token is None else token
  makers: dict[str, Callable[[], rasp.SOp]] = {
    "length": lib.make_length,
    "frac_prevs": lambda: lib.make_frac_prevs(rasp.tokens == token),
    "pair_balance": lambda: lib.make_pair_balance(rasp.tokens, pairs[0][0], pairs[0][1]),
    "shuffle_dyck": lambda: lib.make_shuffle_dyck(list(pairs)),
    "shuffle_dyck2": lib.make_shuffle_dyck2,
    "hist": lib.make_hist,
    "sort_unique": lambda: lib.make_sort_unique(rasp.tokens, _rank(vocab)),
    "sort": lambda: lib.make_sort(rasp.tokens, _rank(vocab), max_seq_len=max_seq_len, min_key=1),
    "sort_freq": lambda: lib.make_sort_freq(max_seq_len),
    "reverse": lambda: lib.make_reverse(rasp.tokens),
    "shift_by": lambda: lib.shift_by(offset, rasp.tokens),
    "detect_pattern": lambda: lib.detect_pattern(
      rasp.tokens, list(pattern or sorted_values(vocab)[:2])
    ),
    "count_less_freq": lambda: lib.make_count_less_freq(n),
    "count": lambda: lib.make_count(rasp.tokens, token),
    "nary_sequencemap": lambda: lib.make_nary_sequencemap(
      lambda x, y, i: (x, y, i), rasp.tokens, _rank(vocab), rasp.indices
    ),
  }
  if name not in makers:
    raise ValueError(f"unknown program {name!r}; known: {', '.join(sorted(makers))}")
  return makers[name]()


NAMES = (
  "length",
  "frac_prevs",
  "pair_balance",
  "shuffle_dyck",
  "shuffle_dyck2",
  "hist",
  "sort_unique",
  "sort",
  "sort_freq",
  "reverse",
  "shift_by",
  "detect_pattern",
  "count_less_freq",
  "count",
  "nary_sequencemap",
)


def parse_vocab(text: str) -> list:
  """``"a,b,c"`` → ['a', 'b', 'c']; ``"1,2,3"`` → [1, 2, 3] (ints when every item is one)."""
  items = [t for t in text.split(",") if t != ""]
  if not items:
    raise ValueError("--vocab needs at least one token")
  try:
    return [int(t) for t in items]
  except ValueError:
    return items
