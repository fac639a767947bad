"""Packing documents into fixed-length rows, with segment ids so that attention stays inside a
document.

A row holds ``L = seq_len + 1`` tokens; the model sees ``inputs = row[:-1]`` and predicts
``targets = row[1:]``. The packing, step by step:

1. Chunks. A document of ``n`` tokens is cut into chunks ``[0, L), [L-1, 2L-1), ...``: consecutive
   chunks share one token (the last target of one is the first input of the next), so every
   next-token pair of the document is a target exactly once. A chunk of fewer than 2 tokens holds no
   pair and is dropped (so is a 1-token document).
2. Order. Documents are taken in a permutation drawn from ``seed``; the chunks of a document stay in
   order.
3. First fit. Each chunk goes into the first row (lowest index) with room for it; a max-tree over
   the rows' free space finds that row in O(log rows). Chunks are never split further, so a document
   shorter than a row is always whole in one row.
4. Rows are padded with ``pad_id`` and segment 0.

What a row yields (each of length ``seq_len``):

* ``segment_ids``: 1..k for the k chunks in the row, in row order; 0 on padding.
* ``positions``: 0, 1, 2, ... restarting at the first token of every segment; 0 on padding.
* ``weights``: 1 where the target belongs to the same segment as its input; 0 on padding and on the
  input that ends a segment (its "target" is the next document's first token or padding).

``PackedStream.batch(step)`` is, like ``lm.TrainStream``, a pure function of (seed, step): the rows
are packed once (seeded) and a grain ``MapDataset`` shuffles them, with a new permutation each
epoch.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from superpose.data.tokenizers import Tokenizer


def tokenize_documents(
  docs: Sequence[dict], tokenizer: Tokenizer, add_bos: bool = True, add_eos: bool = False
) -> list[np.ndarray]:
  """Token ids per document, with the tokenizer's BOS first / EOS last when it has them."""
  texts = [d["text"] for d in docs]
  ids = (
    tokenizer.encode_batch(texts)
    if hasattr(tokenizer, "encode_batch")
    else [tokenizer.encode(t) for t in texts]
  )
  bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  eos = [tokenizer.eos_id] if add_eos and tokenizer.eos_id is not None else []
  return [np.asarray(bos + list(x) + eos, np.int32) for x in ids]


def chunk_bounds(n: int, row_len: int) -> list[tuple[int, int]]:
  """(start, end) of the chunks of an ``n``-token document (step 1 above)."""
  return [(s, min(s + row_len, n)) for s in range(0, max(n - 1, 0), row_len - 1)]


class _FirstFit:
  """Rows with ``capacity`` free tokens each; ``place(k)`` takes k tokens from the first row that
  has them and returns (row, offset). A binary tree holds each subtree's largest free space."""

  def __init__(self, max_rows: int, capacity: int):
    self.size = 1 << max(0, (max_rows - 1).bit_length())
    self.capacity = capacity
    self.tree = [capacity] * (2 * self.size)

  def place(self, k: int) -> tuple[int, int]:
    t, i = self.tree, 1
    while i < self.size:  # descend, preferring the left (lower) rows
      i = 2 * i if t[2 * i] >= k else 2 * i + 1
    offset = self.capacity - t[i]
    t[i] -= k
    row = i - self.size
    i //= 2
    while i:
      t[i] = max(t[2 * i], t[2 * i + 1])
      i //= 2
    return row, offset


def pack(
  documents: Sequence[np.ndarray], seq_len: int, seed: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Packed rows ``(tokens, segments)``, both int32 ``[rows, seq_len + 1]`` (steps 1-4 above)."""
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  row_len = seq_len + 1
  order = np.random.default_rng(seed).permutation(len(documents))
  chunks = [(int(d), s, e) for d in order for s, e in chunk_bounds(len(documents[d]), row_len)]
  if not chunks:
    raise ValueError("no document has the 2 tokens needed for one training target")
  fit = _FirstFit(len(chunks), row_len)
  placed = [fit.place(e - s) for _, s, e in chunks]
  rows = 1 + max(r for r, _ in placed)
  tokens = np.full((rows, row_len), pad_id, np.int32)
  segments = np.zeros((rows, row_len), np.int32)
  count = np.zeros(rows, np.int32)
  for (d, s, e), (r, off) in zip(chunks, placed):
    count[r] += 1
    tokens[r, off : off + e - s] = documents[d][s:e]
    segments[r, off : off + e - s] = count[r]
  return tokens, segments


def row_features(tokens: np.ndarray, segments: np.ndarray) -> dict[str, np.ndarray]:
  """inputs, targets, weights, segment_ids, positions of one packed row (or a batch of rows)."""
  seg_in, seg_out = segments[..., :-1], segments[..., 1:]
  starts = np.ones(seg_in.shape, bool)
  starts[..., 1:] = seg_in[..., 1:] != seg_in[..., :-1]
  index = np.broadcast_to(np.arange(seg_in.shape[-1]), seg_in.shape)
  # Position = index minus the index where the current segment started (a running maximum).
  first = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
  return {
    "inputs": tokens[..., :-1],
    "targets": tokens[..., 1:],
    "weights": ((seg_in == seg_out) & (seg_in != 0)).astype(np.float32),
    "segment_ids": seg_in,
    "positions": np.where(seg_in != 0, index - first, 0).astype(np.int32),
  }


class PackedStream:
  """Packed training batches: ``batch(step)`` is a pure function of (seed, step)."""

  def __init__(
    self, documents: Sequence[np.ndarray], seq_len: int, batch_size: int, seed: int, pad_id: int = 0
  ):
    self.tokens, self.segments = pack(documents, seq_len, seed, pad_id)
    self.batch_size = batch_size
    self.dataset = grain.MapDataset.source(range(len(self.tokens))).shuffle(seed=seed).repeat()

  def __len__(self) -> int:
    """Rows per epoch."""
    return len(self.tokens)

  @property
  def fill(self) -> float:
    """Fraction of row positions holding document tokens (1 - padding)."""
    return float((self.segments != 0).mean())

  def batch(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    """Rows of global batch ``step`` that belong to ``process_index``."""
    if self.batch_size % process_count:
      raise ValueError(
        f"batch size {self.batch_size} is not divisible by {process_count} processes"
      )
    local = self.batch_size // process_count
    first = step * self.batch_size + process_index * local
    rows = np.array([self.dataset[first + j] for j in range(local)])
    return row_features(self.tokens[rows], self.segments[rows])


class PackedEvalSet:
  """A fixed list of evaluation batches: the first packed rows of the held-out documents, in
  order."""

  def __init__(
    self,
    documents: Sequence[np.ndarray],
    seq_len: int,
    batch_size: int,
    max_batches: int,
    seed: int = 0,
    pad_id: int = 0,
  ):
    self.tokens, self.segments = pack(documents, seq_len, seed, pad_id)
    n = min(max_batches, len(self.tokens) // batch_size)
    if n < 1:
      raise ValueError(
        f"validation data packs into {len(self.tokens)} rows, fewer than one batch of {batch_size}"
      )
    self.batch_size, self.num_batches = batch_size, n

  def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    first = i * self.batch_size + process_index * local
    return row_features(self.tokens[first : first + local], self.segments[first : first + local])
