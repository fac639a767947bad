"""Corpus text handling shared by every source: cleaning, the split by document, 13-gram
de-duplication of held-out text against training text, and the jsonl.gz writer."""

from __future__ import annotations

import collections
import gzip
import hashlib
import itertools
import json
import pathlib
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
_BLANKS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def clean_text(text: str) -> str:
  """NFC, Unix newlines, no trailing spaces, at most one blank line in a row, no outer blank
  lines."""
  text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  return _BLANKS.sub("\n\n", text).strip("\n")


def clean_documents(docs: Iterable[dict]) -> list[dict]:
  """Cleans every text, drops empty documents and makes titles unique (the split hashes titles)."""
  out, seen = [], collections.Counter()
  for d in docs:
    text = clean_text(d["text"])
    if not text.strip():
      continue
    title = str(d["title"]).strip() or "untitled"
    seen[title] += 1
    if seen[title] > 1:
      title = f"{title} ({seen[title]})"
    out.append({"title": title, "text": text})
  return out


def drop_boilerplate(docs: Sequence[dict], min_docs: int) -> tuple[list[dict], int]:
  """Removes lines that occur in at least ``min_docs`` documents (navigation, repeated notes).

  Returns the documents and the number of lines removed.
  """
  counts = collections.Counter()
  for d in docs:
    counts.update({ln.strip() for ln in d["text"].split("\n") if ln.strip()})
  common = {ln for ln, c in counts.items() if c >= min_docs}
  out, removed = [], 0
  for d in docs:
    lines = d["text"].split("\n")
    kept = [ln for ln in lines if ln.strip() not in common]
    removed += len(lines) - len(kept)
    out.append({"title": d["title"], "text": clean_text("\n".join(kept))})
  return [d for d in out if d["text"]], removed


def split_of(title: str, seed: int, val_frac: float, test_frac: float) -> str:
  """The split of one document, from a hash of (seed, title) alone.

  Independent of the other documents, so adding a document never moves another one, and parallel
  corpora whose documents share titles (LibreOffice help en/fr) get the same split.
  """
  u = int.from_bytes(hashlib.sha256(f"{seed}:{title}".encode()).digest()[:8], "big") / 2.0**64
  return "val" if u < val_frac else "test" if u < val_frac + test_frac else "train"


def split_documents(
  docs: Sequence[dict], seed: int = 0, val_frac: float = 0.05, test_frac: float = 0.05
) -> dict[str, list[dict]]:
  """Train/val/test by document. A held-out split that the hash leaves empty (few documents) takes
  the training document that is first in hash order, so small corpora still get one of each."""
  out = {s: [] for s in SPLITS}
  for d in docs:
    out[split_of(d["title"], seed, val_frac, test_frac)].append(d)
  for s in ("val", "test"):
    if not out[s] and len(out["train"]) > 1:
      key = lambda d: hashlib.sha256(f"{seed}:{s}:{d['title']}".encode()).digest()
      first = min(out["train"], key=key)
      out["train"].remove(first)
      out[s].append(first)
  return out


class NgramIndex:
  """Hashes of the word 13-grams of a set of documents (lower-cased ``\\w+`` words).

  Words are numbered in order of first appearance and n-grams get a 64-bit polynomial hash computed
  with numpy over the whole corpus at once; n-grams that would span two documents are left out.
  """

  def __init__(self, n: int = 13):
    self.n, self.vocab, self.next_id = n, {}, 0

  def ids(self, words: Sequence[str]) -> np.ndarray:
    """Word ids; ``map`` over ``dict.setdefault`` with a counter runs in C. A new word takes the
    counter's value at its first position, so ids are unique though not dense."""
    ids = np.fromiter(
      map(self.vocab.setdefault, words, itertools.count(self.next_id)), np.uint64, len(words)
    )
    self.next_id += len(words)
    return ids

  def hashes(self, ids: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, valid) for the n-gram starting at every position; valid: it stays inside one group."""
    m = len(ids) - self.n + 1
    if m <= 0:
      return np.zeros(0, np.uint64), np.zeros(0, bool)
    h = np.zeros(m, np.uint64)
    mult, mix = np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15)
    for k in range(self.n):  # uint64 arithmetic wraps around, as a hash should
      h = h * mult + (ids[k : k + m] + np.uint64(1)) * mix
    return h, group[:m] == group[self.n - 1 :]

  def build(self, docs: Sequence[dict]) -> np.ndarray:
    """The sorted n-gram hashes of ``docs`` (duplicates kept: sorting is faster than np.unique)."""
    words = [_WORD.findall(d["text"].lower()) for d in docs]
    ids = self.ids([w for ws in words for w in ws])
    group = np.repeat(np.arange(len(words)), [len(ws) for ws in words])
    h, valid = self.hashes(ids, group)
    return np.sort(h[valid])


def dedup(splits: dict[str, list[dict]], n: int = 13, max_removed: float = 0.5):
  """Removes val/test lines that share a word n-gram with the training documents.

  A line goes when any of its words lies inside an n-gram (which may run across lines of the same
  document) that also occurs in training text; a document that loses more than ``max_removed`` of
  its characters goes entirely. Returns (splits, {split: stats}).
  """
  ngrams = NgramIndex(n)
  train_hashes = ngrams.build(splits["train"])
  out, stats = {"train": list(splits["train"])}, {}
  for s in SPLITS[1:]:
    out[s], stats[s] = _dedup_docs(splits[s], ngrams, train_hashes, max_removed)
  return out, stats


def _dedup_docs(docs, ngrams: NgramIndex, train_hashes: np.ndarray, max_removed: float):
  kept, stats = [], {"docs_dropped": 0, "lines_dropped": 0, "chars_removed": 0}
  n = ngrams.n
  for d in docs:
    lines = d["text"].split("\n")
    words = [_WORD.findall(ln.lower()) for ln in lines]
    flat = [w for ws in words for w in ws]
    line_of = np.repeat(np.arange(len(lines)), [len(ws) for ws in words])
    # Held-out words unseen in training get fresh ids, so n-grams holding them cannot match.
    h, valid = ngrams.hashes(ngrams.ids(flat), np.zeros(len(flat), np.int64))
    starts = np.flatnonzero(valid & _isin_sorted(h, train_hashes))
    if not len(starts):
      kept.append(d)
      continue
    covered = np.zeros(len(flat) + 1, np.int64)  # +1 at each match start, -1 after its end
    np.add.at(covered, starts, 1)
    np.add.at(covered, starts + n, -1)
    bad = set(line_of[np.cumsum(covered)[: len(flat)] > 0].tolist())
    text = clean_text("\n".join(ln for i, ln in enumerate(lines) if i not in bad))
    removed = len(d["text"]) - len(text)
    if removed > max_removed * len(d["text"]) or not text.strip():
      stats["docs_dropped"] += 1
      stats["chars_removed"] += len(d["text"])
      continue
    stats["lines_dropped"] += len(bad)
    stats["chars_removed"] += removed
    kept.append({"title": d["title"], "text": text})
  return kept, stats


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
  if len(sorted_set) == 0:
    return np.zeros(len(values), bool)
  i = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
  return sorted_set[i] == values


def write_jsonl_gz(path: pathlib.Path, docs: Iterable[dict]) -> None:
  """One ``{"title", "text"}`` object per line; no name or mtime in the gzip header, so rebuilds are
  byte-identical."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as f:
    for d in docs:
      f.write(
        (json.dumps({"title": d["title"], "text": d["text"]}, ensure_ascii=False) + "\n").encode()
      )
  tmp.replace(path)
