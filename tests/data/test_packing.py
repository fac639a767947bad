import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpose.data import packing
from superpose.data.tokenizers import ByteTokenizer


def make_docs(lengths):
  """Documents whose tokens say which document they come from: doc d holds d * 1000 + 0, 1, ..."""
  return [np.arange(n, dtype=np.int32) + 1000 * (d + 1) for d, n in enumerate(lengths)]


def pairs_of(docs):
  return collections.Counter((int(a), int(b)) for d in docs for a, b in zip(d[:-1], d[1:]))


def weighted_pairs(tokens, segments):
  f = packing.row_features(tokens, segments)
  w = f["weights"] > 0
  return collections.Counter(zip(f["inputs"][w].tolist(), f["targets"][w].tolist()))


@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 10, 17, 40])
def test_chunks_cover_every_pair_once(n):
  bounds = packing.chunk_bounds(n, row_len=9)
  assert all(2 <= e - s <= 9 for s, e in bounds)
  covered = [i for s, e in bounds for i in range(s, e - 1)]  # pair (i, i + 1)
  assert covered == list(range(max(n - 1, 0)))


def test_first_fit_takes_the_lowest_row_with_room():
  fit = packing._FirstFit(max_rows=8, capacity=8)
  assert [fit.place(k) for k in (5, 5, 3, 3, 8, 1, 2)] == [
    (0, 0),
    (1, 0),
    (0, 5),
    (1, 5),
    (2, 0),
    (3, 0),
    (3, 1),
  ]


def test_every_target_once_and_no_target_across_documents():
  docs = make_docs(np.random.default_rng(0).integers(1, 60, 80))
  tokens, segments = packing.pack(docs, seq_len=16, seed=3)
  assert tokens.shape[1] == 17
  assert weighted_pairs(tokens, segments) == pairs_of(docs)  # exactly the in-document pairs


def test_segments_positions_and_weights():
  docs = make_docs([3, 7, 30, 2, 11, 1, 5])
  tokens, segments = packing.pack(docs, seq_len=12, seed=0)
  f = packing.row_features(tokens, segments)
  for r in range(len(tokens)):
    seg, pos, w, x = f["segment_ids"][r], f["positions"][r], f["weights"][r], f["inputs"][r]
    used = seg[seg > 0]
    assert list(np.unique(used)) == list(range(1, used.max() + 1))  # 1..k
    assert np.all(np.diff(seg[: len(used)]) >= 0) and np.all(
      seg[len(used) :] == 0
    )  # padding only at the end
    for k in range(1, used.max() + 1):
      idx = np.flatnonzero(seg == k)
      assert list(pos[idx]) == list(range(len(idx)))  # restart at 0
      assert len({int(t) // 1000 for t in x[idx]}) == 1  # one document per segment
      assert np.all(w[idx[:-1]] == 1)  # in-segment targets
      assert w[idx[-1]] == (segments[r, idx[-1] + 1] == k)  # the last: only if its target is too
    assert np.all(w[seg == 0] == 0) and np.all(pos[seg == 0] == 0)


def test_short_documents_are_never_split():
  docs = make_docs(np.random.default_rng(1).integers(2, 17, 60))
  tokens, segments = packing.pack(docs, seq_len=16, seed=5)
  found = collections.Counter()
  for r in range(len(tokens)):
    for k in range(1, segments[r].max() + 1):
      piece = tokens[r][segments[r] == k]
      found[int(piece[0]) // 1000] += 1
      np.testing.assert_array_equal(piece, docs[int(piece[0]) // 1000 - 1])
  assert set(found.values()) == {1} and len(found) == len(docs)


def test_first_fit_fills_rows():
  docs = make_docs(np.random.default_rng(2).integers(2, 300, 400))
  s = packing.PackedStream(docs, seq_len=128, batch_size=4, seed=0)
  assert s.fill > 0.97


def test_stream_is_a_pure_function_of_seed_and_step():
  docs = make_docs(np.random.default_rng(0).integers(2, 50, 200))
  a = packing.PackedStream(docs, seq_len=32, batch_size=4, seed=7)
  b = packing.PackedStream(docs, seq_len=32, batch_size=4, seed=7)
  c = packing.PackedStream(docs, seq_len=32, batch_size=4, seed=8)
  for step in (0, 5, 999):
    x, y = a.batch(step), b.batch(step)
    assert sorted(x) == ["inputs", "positions", "segment_ids", "targets", "weights"]
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
      assert x[k].shape == (4, 32)
  assert not np.array_equal(a.batch(3)["inputs"], c.batch(3)["inputs"])
  assert a.batch(0)["inputs"].dtype == np.int32 and a.batch(0)["weights"].dtype == np.float32


def test_process_slices_assemble_the_global_batch():
  s = packing.PackedStream(make_docs([40] * 50), seq_len=16, batch_size=8, seed=0)
  whole = s.batch(11)
  parts = [s.batch(11, process_index=i, process_count=2) for i in range(2)]
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    s.batch(0, 0, 3)


def test_every_row_once_per_epoch_and_reshuffled():
  s = packing.PackedStream(make_docs([17] * 8), seq_len=16, batch_size=4, seed=0)  # one doc per row
  assert len(s) == 8
  first = np.concatenate([s.batch(i)["inputs"][:, 0] for i in range(2)])
  second = np.concatenate([s.batch(i)["inputs"][:, 0] for i in range(2, 4)])
  assert sorted(first) == sorted(second) == [1000 * (d + 1) for d in range(8)]
  assert not np.array_equal(first, second)


def test_eval_set_in_order_and_errors():
  docs = make_docs([20] * 30)
  e = packing.PackedEvalSet(docs, seq_len=16, batch_size=4, max_batches=3)
  assert e.num_batches == 3
  np.testing.assert_array_equal(
    e.batch(1)["inputs"], packing.row_features(e.tokens[4:8], e.segments[4:8])["inputs"]
  )
  with pytest.raises(ValueError, match="fewer than one batch"):
    packing.PackedEvalSet(docs[:2], seq_len=16, batch_size=8, max_batches=3)
  with pytest.raises(ValueError, match="2 tokens"):
    packing.pack(make_docs([1, 1]), seq_len=8, seed=0)


def test_tokenize_documents_adds_bos():
  ids = packing.tokenize_documents([{"text": "ab"}, {"text": ""}], ByteTokenizer())
  assert [x.tolist() for x in ids] == [[256, 97, 98], [256]]
  ids = packing.tokenize_documents([{"text": "ab"}], ByteTokenizer(), add_bos=False, add_eos=True)
  assert ids[0].tolist() == [97, 98, 256]


def test_packed_rows_match_documents_run_alone():
  """What segment ids and positions are for: the model's logits on a packed row equal its logits on
  each document by itself."""
  from flax import nnx
  from superpose import nn
  from superpose.nn.testing import random_model

  model = random_model(
    nn.gpt2(vocab_size=50, d_model=32, num_layers=2, num_heads=4, max_seq_len=16, d_ff=64), 0, 0.2
  )
  docs = [d % 50 for d in make_docs([5, 9, 3, 7, 4])]
  tokens, segments = packing.pack(docs, seq_len=16, seed=0)
  f = packing.row_features(tokens, segments)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x, **kw: nnx.merge(graphdef, state)(x, **kw).logits_BTV)
  out = forward(
    state,
    jnp.asarray(f["inputs"]),
    positions_BT=jnp.asarray(f["positions"]),
    segment_ids_BT=jnp.asarray(f["segment_ids"]),
  )
  where = [
    (r, np.flatnonzero(f["segment_ids"][r] == k))
    for r in range(len(tokens))
    for k in range(1, f["segment_ids"][r].max() + 1)
  ]
  alone = np.zeros((len(where), 16), np.int32)  # each piece by itself, left-aligned; causal
  for i, (r, idx) in enumerate(where):  # attention keeps the padding after it inert
    alone[i, : len(idx)] = f["inputs"][r, idx]
  ref = forward(state, jnp.asarray(alone))
  assert len(where) >= 5
  for i, (r, idx) in enumerate(where):
    np.testing.assert_allclose(out[r, idx], ref[i, : len(idx)], atol=1e-5)
