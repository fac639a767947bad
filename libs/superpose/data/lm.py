"""Language-model data: documents → token stream → fixed-length windows in a seeded order.

The batch of step ``s`` is a pure function of (seed, s): example ``s * B + j`` of a grain
``MapDataset`` that is shuffled (a new permutation each epoch) and repeated forever. Resuming at any
step therefore needs no iterator state and no replay, and every process can compute its own rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pathlib
from typing import Sequence

import grain
import numpy as np

from superpose.data.tokenizers import Tokenizer

SAMPLES = pathlib.Path(__file__).resolve().parent / "samples"


def resolve_path(path: str | pathlib.Path) -> pathlib.Path:
  """``sample:NAME`` names a file embedded in the package; anything else is a filesystem path."""
  path = str(path)
  if path.startswith("sample:"):
    return SAMPLES / path.removeprefix("sample:")
  return pathlib.Path(path).expanduser()


def load_documents(path: str | pathlib.Path) -> list[dict]:
  """Documents from ``.jsonl[.gz]`` (one ``{"text": ...}`` per line) or a plain ``.txt`` file."""
  p = resolve_path(path)
  if not p.exists():
    raise FileNotFoundError(f"data file not found: {p}")
  opener = gzip.open if p.suffix == ".gz" else open
  with opener(p, "rt", encoding="utf-8") as f:
    if ".jsonl" in p.suffixes:
      docs = [json.loads(line) for line in f if line.strip()]
    else:
      docs = [{"title": p.stem, "text": f.read()}]
  if not docs:
    raise ValueError(f"data file {p} holds no documents")
  return docs


def split_documents(docs: Sequence[dict], num_val: int) -> tuple[list[dict], list[dict]]:
  """Hold out ``num_val`` whole documents, chosen by a hash of their titles (stable across runs)."""
  if num_val >= len(docs):
    raise ValueError(
      f"data.val_documents={num_val} leaves no training documents (have {len(docs)})"
    )
  key = lambda i: hashlib.sha1(str(docs[i].get("title", i)).encode()).hexdigest()
  order = sorted(range(len(docs)), key=key)
  val_ids = set(order[:num_val])
  return (
    [d for i, d in enumerate(docs) if i not in val_ids],
    [d for i, d in enumerate(docs) if i in val_ids],
  )


def tokenize(docs: Sequence[dict], tokenizer: Tokenizer) -> np.ndarray:
  """One token stream; each document is preceded by BOS when the tokenizer has one."""
  parts = []
  for d in docs:
    ids = tokenizer.encode(d["text"])
    if tokenizer.bos_id is not None:
      ids = [tokenizer.bos_id] + ids
    parts.append(np.asarray(ids, dtype=np.int32))
  return np.concatenate(parts)


class Windows:
  """Non-overlapping windows of ``seq_len + 1`` tokens (inputs and shifted targets)."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens, self.seq_len = tokens, seq_len
    self.num = (len(tokens) - 1) // seq_len
    if self.num < 1:
      raise ValueError(f"{len(tokens)} tokens are too few for one window of length {seq_len}")

  def __len__(self):
    return self.num

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(i) * self.seq_len
    return self.tokens[start : start + self.seq_len + 1]


def _to_batch(rows: np.ndarray) -> dict[str, np.ndarray]:
  return {
    "inputs": rows[:, :-1],
    "targets": rows[:, 1:],
    "weights": np.ones(rows[:, 1:].shape, np.float32),
  }


class TrainStream:
  """Training batches: ``batch(step)`` is a pure function of (seed, step)."""

  def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
    self.windows = Windows(tokens, seq_len)
    self.batch_size = batch_size
    self.dataset = grain.MapDataset.source(self.windows).shuffle(seed=seed).repeat()

  def __len__(self) -> int:
    """Windows per epoch."""
    return len(self.windows)

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
    return _to_batch(np.stack([self.dataset[first + j] for j in range(local)]))


class EvalSet:
  """A fixed list of evaluation batches (the first windows of the held-out stream, in order)."""

  def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int):
    windows = Windows(tokens, seq_len)
    n = min(max_batches, len(windows) // batch_size)
    if n < 1:
      raise ValueError(
        f"validation data has {len(windows)} windows, fewer than one batch of {batch_size}"
      )
    self.batch_size, self.num_batches = batch_size, n
    self.windows = windows

  def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    first = i * self.batch_size + process_index * local
    return _to_batch(np.stack([self.windows[first + j] for j in range(local)]))
