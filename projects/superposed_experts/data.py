"""Domain data for the superposed experts: corpora → domains → fixed-length labelled sequences.

A *domain* (English, French, Python) is the union of some corpora built by ``superpose.data.corpus``
(plus ``python``, the standard library's source, built here with the same split and 13-gram
de-duplication). Its index is the index of its expert: domain 0 is the base model's.

* ``prepare(root, domains)`` builds the corpora and writes
  ``root/domains/<name>/{train,val,test}.jsonl.gz`` (the plain LM trainer reads one file per run:
  the base and the experts train on these).
* A document is cut into rows of ``seq_len + 1`` tokens (BOS first; consecutive rows share one token
  so every next-token pair is a target once); a short last row is padded with -1 and masked.
* ``DomainStream.batch(step)`` is a balanced mixture: global row r of step s comes from domain
  (s·B + r) mod K, drawn from that domain's seeded, epoch-reshuffled order, so it is pure in (seed,
  step).
* Held-out sequences (val for checkpoint selection, test for evaluation) are rows of the val/test
  documents in a seeded order, skipping rows with few targets, exact repeats and rows whose text
  occurs verbatim in any domain's training text; they are cached as .npy with their sha256 in a
  manifest.
* ``switch_rows(test, pairs, count, bos_id=...)``: the switch set, held-out sequences that change
  domain half-way (the first half of a test row of domain a, then the first half of one of domain
  b).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import sysconfig
import time
import zlib
from typing import Mapping, Sequence

import grain
import numpy as np

from superpose.data import corpus as corpus_lib
from superpose.data.corpora import text as text_lib
from superpose.data.lm import load_documents
from superpose.data.tokenizers import ByteTokenizer, Tokenizer, get_tokenizer

DOMAINS = {"english": ("shakespeare", "kjv"), "french": ("littre",), "python": ("python",)}
PAD = -1
PYTHON_VERSION = 1  # bump when the python corpus extraction changes (rebuilds it)
HELDOUT_VERSION = 1  # bump when held-out sequence selection changes (rebuilds the caches)
HELDOUT_SEED = 1234  # fixed: every seed and method is evaluated on the same sequences
MIN_TARGETS = 16  # a held-out row with fewer targets is skipped
VAL_SEQUENCES = 256  # validation sequences per domain
SWITCH_SEED = (
  4321  # fixed like HELDOUT_SEED: every seed and method is scored on the same switch rows
)


# --- corpora and domain files ---------------------------------------------------------------------


def build_python_corpus(
  out: pathlib.Path,
  *,
  seed: int = 0,
  val_frac: float = 0.05,
  test_frac: float = 0.05,
  stdlib: pathlib.Path | None = None,
  log=print,
) -> dict:
  """``out/python``: one document per module of this interpreter's standard library (test suites and
  site-packages left out), split and de-duplicated exactly as ``superpose.data.corpus`` does."""
  stdlib = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
  target = out / "python"
  wanted = {
    **corpus_lib.settings(seed, val_frac, test_frac),
    "python_corpus": PYTHON_VERSION,
    "stdlib": str(stdlib),
    "python": sys.version.split()[0],
  }
  try:
    cached = json.loads((target / "manifest.json").read_text("utf-8"))
    if cached["settings"] == wanted and all(
      (target / f"{s}.jsonl.gz").exists() for s in text_lib.SPLITS
    ):
      return {**cached, "cached": True}
  except (OSError, ValueError, KeyError):
    pass
  start = time.time()
  skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
  files = sorted(p for p in stdlib.rglob("*.py") if not skip & set(p.relative_to(stdlib).parts))
  docs = text_lib.clean_documents(
    {"title": str(p.relative_to(stdlib)), "text": p.read_text("utf-8", "replace")} for p in files
  )
  splits, removed = text_lib.dedup(
    text_lib.split_documents(docs, seed, val_frac, test_frac),
    corpus_lib.NGRAM,
    corpus_lib.MAX_REMOVED,
  )
  target.mkdir(parents=True, exist_ok=True)
  for s, d in splits.items():
    text_lib.write_jsonl_gz(target / f"{s}.jsonl.gz", d)
  manifest = {
    "name": "python",
    "language": "python",
    "licence": "PSF-2.0 (CPython standard library)",
    "settings": wanted,
    "dedup": removed,
    "build_seconds": round(time.time() - start, 1),
    "splits": {
      s: {"documents": len(d), "bytes": sum(len(x["text"].encode()) for x in d)}
      for s, d in splits.items()
    },
  }
  (target / "LICENSE").write_text(
    f"Python {wanted['python']} standard library source, {stdlib}: PSF-2.0 "
    "(https://docs.python.org/3/license.html).\n",
    "utf-8",
  )
  (target / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
  log(
    f"[python] {len(files)} modules from {stdlib}; train/val/test documents "
    f"{'/'.join(str(len(splits[s])) for s in text_lib.SPLITS)}"
  )
  return {**manifest, "cached": False}


def prepare(
  root: str | pathlib.Path, domains: Mapping[str, Sequence[str]], log=print
) -> pathlib.Path:
  """Builds the corpora the domains need (cached) and writes the per-domain files; returns
  ``root/domains``."""
  root = pathlib.Path(root)
  names = sorted({c for cs in domains.values() for c in cs})
  registry = [n for n in names if n != "python"]
  if registry:
    _, errors = corpus_lib.build(registry, root, corpus_lib.fetch.cache_root(None), log=log)
    if errors:
      raise RuntimeError("corpus build failed: " + "; ".join(errors))
  if "python" in names:
    build_python_corpus(root, log=log)
  out = root / "domains"
  for name, corpora in domains.items():
    key = json.dumps(
      {c: json.loads((root / c / "manifest.json").read_text("utf-8"))["settings"] for c in corpora},
      sort_keys=True,
    )
    target = out / name
    if (target / "sources.json").exists() and (target / "sources.json").read_text("utf-8") == key:
      continue
    target.mkdir(parents=True, exist_ok=True)
    for split in text_lib.SPLITS:
      docs = [
        {"title": f"{c}:{d.get('title', i)}", "text": d["text"]}
        for c in corpora
        for i, d in enumerate(load_documents(root / c / f"{split}.jsonl.gz"))
      ]
      text_lib.write_jsonl_gz(target / f"{split}.jsonl.gz", docs)
    (target / "sources.json").write_text(key, "utf-8")  # written last: marks the domain complete
  return out


def domain_file(root: str | pathlib.Path, domain: str, split: str) -> pathlib.Path:
  return pathlib.Path(root) / "domains" / domain / f"{split}.jsonl.gz"


# --- rows -----------------------------------------------------------------------------------------


def encode(docs: Sequence[dict], tokenizer: Tokenizer) -> list[np.ndarray]:
  """Token ids per document, BOS first (bytes: straight from UTF-8, without Python int lists)."""
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  if isinstance(tokenizer, ByteTokenizer):
    return [
      np.concatenate(
        [np.asarray(bos, np.int32), np.frombuffer(d["text"].encode(), np.uint8).astype(np.int32)]
      )
      for d in docs
    ]
  return [np.asarray(bos + tokenizer.encode(d["text"]), np.int32) for d in docs]


class Rows:
  """The rows of a list of documents, kept as one token stream plus (start, end) per row."""

  def __init__(self, docs_tokens: Sequence[np.ndarray], seq_len: int):
    self.seq_len = seq_len
    row = seq_len + 1
    dtype = (
      np.uint16
      if max((int(t.max()) for t in docs_tokens if len(t)), default=0) < 2**16
      else np.int32
    )
    self.stream = (
      np.concatenate([t.astype(dtype) for t in docs_tokens]) if docs_tokens else np.zeros(0, dtype)
    )
    starts, ends, offset = [], [], 0
    for t in docs_tokens:
      n = len(t)
      s = np.arange(0, max(n - 1, 0), row - 1)  # a row needs 2 tokens: one target
      starts.append(offset + s)
      ends.append(offset + np.minimum(s + row, n))
      offset += n
    self.starts = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
    self.ends = np.concatenate(ends).astype(np.int64) if ends else np.zeros(0, np.int64)

  def __len__(self) -> int:
    return len(self.starts)

  def targets(self) -> np.ndarray:
    return self.ends - self.starts - 1

  def get(self, indices) -> np.ndarray:
    """int32 [n, seq_len + 1], padded with PAD."""
    out = np.full((len(indices), self.seq_len + 1), PAD, np.int32)
    for j, i in enumerate(indices):
      s, e = self.starts[i], self.ends[i]
      out[j, : e - s] = self.stream[s:e]
    return out


def to_batch(rows: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """inputs/targets (padding → 0, masked by weights) and the domain labels."""
  inputs, targets = rows[:, :-1], rows[:, 1:]
  return {
    "inputs": np.maximum(inputs, 0).astype(np.int32),
    "targets": np.maximum(targets, 0).astype(np.int32),
    "weights": (targets != PAD).astype(np.float32),
    "labels": np.asarray(labels, np.int32),
  }


class DomainStream:
  """Balanced labelled training batches, a pure function of (seed, step)."""

  def __init__(self, rows: Sequence[Rows], batch_size: int, seed: int):
    self.rows, self.batch_size = list(rows), batch_size
    self.datasets = [
      grain.MapDataset.source(range(len(r))).shuffle(seed=seed * 1000 + k).repeat()
      for k, r in enumerate(self.rows)
    ]

  def __len__(self) -> int:
    return sum(len(r) for r in self.rows)

  def rows_at(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows int32 [local, seq_len + 1], labels int32 [local]) of global batch ``step``."""
    if self.batch_size % process_count:
      raise ValueError(
        f"batch size {self.batch_size} is not divisible by {process_count} processes"
      )
    k = len(self.rows)
    local = self.batch_size // process_count
    first = step * self.batch_size + process_index * local
    labels = np.asarray([(first + j) % k for j in range(local)], np.int32)
    picks = [self.datasets[d][(first + j) // k] for j, d in enumerate(labels)]
    return np.concatenate([self.rows[d].get([i]) for d, i in zip(labels, picks)]), labels

  def batch(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    return to_batch(*self.rows_at(step, process_index, process_count))


class SequenceSet:
  """Fixed held-out sequences of one domain in batches (the loop's EvalSet protocol).

  ``num_batches`` counts full batches only (the training loop averages per batch); ``all_batches``
  covers every sequence, the last batch padded with zero-weight rows (evaluation)."""

  def __init__(self, rows: np.ndarray, label: int, batch_size: int, max_batches: int | None = None):
    self.rows, self.label, self.batch_size = rows, label, batch_size
    full = len(rows) // batch_size
    self.num_batches = full if max_batches is None else min(full, max_batches)

  def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    first = i * self.batch_size + process_index * local
    rows = self.rows[first : first + local]
    if len(rows) < local:
      rows = np.concatenate([rows, np.full((local - len(rows), rows.shape[1]), PAD, np.int32)])
    return to_batch(rows, np.full(local, self.label))

  def all_batches(self):
    return [self.batch(i) for i in range(-(-len(self.rows) // self.batch_size))]


# --- verbatim check -------------------------------------------------------------------------------


class VerbatimIndex:
  """Exact "does this byte string occur in the training text?" for many short strings.

  Positions whose 8-byte window hashes to 0 mod ``ANCHOR`` are anchors, chosen by content alone, so
  a string that occurs in the text has, at each of its own anchors, a 32-byte window that starts at
  an anchor of the text. A string with an anchor window missing from the text's set cannot occur;
  the rest (including strings without an anchor) are confirmed with a plain substring search.
  """

  ANCHOR, SHORT, LONG = 16, 8, 32

  def __init__(self, texts: Sequence[bytes]):
    self.texts = list(texts)
    keys = [self._keys(np.frombuffer(t, np.uint8))[1] for t in self.texts]
    self.keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    self.searches = 0

  @classmethod
  def _window_hash(cls, b: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    h = np.zeros(len(starts), np.uint64)
    for k in range(width):  # uint64 wrap-around is the intended modular hash
      h = h * np.uint64(0x100000001B3) + (b[starts + k].astype(np.uint64) + np.uint64(1))
    return h * np.uint64(0x9E3779B97F4A7C15)

  @classmethod
  def _keys(cls, b: np.ndarray, block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(anchor positions, their 32-byte window hashes), computed in blocks to bound memory."""
    pos, keys = [], []
    for lo in range(0, max(len(b) - cls.LONG + 1, 0), block):
      starts = np.arange(lo, min(lo + block, len(b) - cls.LONG + 1))
      short = cls._window_hash(b, starts, cls.SHORT)
      anchors = starts[(short >> np.uint64(40)) % np.uint64(cls.ANCHOR) == 0]
      pos.append(anchors)
      keys.append(cls._window_hash(b, anchors, cls.LONG))
    if not pos:
      return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate(pos), np.concatenate(keys)

  def contains(self, s: bytes) -> bool:
    _, keys = self._keys(np.frombuffer(s, np.uint8))
    if len(keys):
      i = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
      if len(self.keys) == 0 or not np.all(self.keys[i] == keys):
        return False
    self.searches += 1
    return any(s in t for t in self.texts)


def row_bytes(row: np.ndarray, tokenizer: Tokenizer) -> bytes:
  ids = [int(i) for i in row if i != PAD and i != tokenizer.bos_id]
  if isinstance(tokenizer, ByteTokenizer):
    return bytes(i for i in ids if i < 256)
  return tokenizer.decode(ids).encode()


# --- held-out sequences ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything that decides the data, read from a config by :func:`spec`. Domain k's expert is
  expert k; ``heldout_paths`` are the val files (training-time validation) or the test files."""

  names: tuple[str, ...]
  train_paths: tuple[str, ...]
  heldout_paths: tuple[str, ...]
  tokenizer: str = "bytes"
  seq_len: int = 128
  batch_size: int = 16
  seed: int = 0
  eval_batches: int = 4

  def with_heldout(self, paths: Sequence[str]) -> "Spec":
    return dataclasses.replace(self, heldout_paths=tuple(map(str, paths)))


def spec(config: Mapping) -> Spec:
  """From ``config.superposed.{domains, train_paths, val_paths, eval_batches}`` and the sizes in
  ``data``/``train``/``seed``."""
  d, t = config["superposed"], config["train"]
  names, train, val = (
    tuple(d["domains"]),
    tuple(map(str, d["train_paths"])),
    tuple(map(str, d["val_paths"])),
  )
  if not (len(names) == len(train) == len(val)) or not all(train) or not all(val):
    raise ValueError(
      f"config.superposed: domains {names}, train_paths {train} and val_paths {val} must name "
      "one file each per domain (projects.superposed_experts.data.prepare writes them)"
    )
  return Spec(
    names,
    train,
    val,
    config["data"]["tokenizer"],
    int(t["seq_len"]),
    int(t["batch_size"]),
    int(config["seed"]),
    int(d["eval_batches"]),
  )


def select_heldout(
  rows: Rows, count: int, seed: int, min_targets: int, index: VerbatimIndex, tokenizer: Tokenizer
) -> tuple[np.ndarray, dict]:
  """Up to ``count`` rows in a seeded order, skipping short rows, exact repeats and rows found
  verbatim in training text; returns (rows, counts of what was skipped). A smaller count gives a
  prefix of a larger one's rows."""
  order = np.random.default_rng(seed).permutation(len(rows))
  enough = rows.targets() >= min_targets
  kept, seen = [], set()
  stats = {
    "candidates": int(len(rows)),
    "short": int((~enough).sum()),
    "repeated": 0,
    "verbatim_in_train": 0,
  }
  for i in order:
    if len(kept) == count:
      break
    if not enough[i]:
      continue
    row = rows.get([i])[0]
    key = row.tobytes()
    if key in seen:
      stats["repeated"] += 1
      continue
    seen.add(key)
    if index.contains(row_bytes(row, tokenizer)):
      stats["verbatim_in_train"] += 1
      continue
    kept.append(row)
  stats["kept"] = len(kept)
  out = np.stack(kept) if kept else np.zeros((0, rows.seq_len + 1), np.int32)
  return out, stats


def heldout_settings(s: Spec, count: int) -> dict:
  """What decides a held-out set: the files' contents (sha256), the sizes and the selection rule."""
  return {
    "version": HELDOUT_VERSION,
    "names": list(s.names),
    "count": count,
    "seed": HELDOUT_SEED,
    "tokenizer": s.tokenizer,
    "seq_len": s.seq_len,
    "min_targets": MIN_TARGETS,
    "train": [_file_digest(p) for p in s.train_paths],
    "heldout": [_file_digest(p) for p in s.heldout_paths],
  }


def heldout(
  s: Spec, count: int, cache: str | pathlib.Path | None = None, log=print
) -> tuple[dict[str, np.ndarray], dict]:
  """(rows per domain, manifest): up to ``count`` held-out sequences per domain from
  ``s.heldout_paths``, none of them found verbatim in any of ``s.train_paths``.

  Built once into ``cache`` (default: ``heldout/<hash of the settings>`` beside the domain folders)
  as ``<domain>.npy`` plus ``manifest.json`` (settings, selection counts, sha256 of each file,
  checked on every read)."""
  settings = heldout_settings(s, count)
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  cache = (
    pathlib.Path(cache)
    if cache
    else pathlib.Path(s.heldout_paths[0]).resolve().parent.parent / "heldout" / key
  )
  manifest_path = cache / "manifest.json"
  if manifest_path.exists():
    manifest = json.loads(manifest_path.read_text("utf-8"))
    if manifest["settings"] == settings:
      return {
        n: _read_checked(cache / f"{n}.npy", manifest["sha256"][n]) for n in s.names
      }, manifest
  start = time.time()
  tok = get_tokenizer(s.tokenizer)
  index = VerbatimIndex(
    [b"\0".join(d["text"].encode() for p in s.train_paths for d in load_documents(p))]
  )
  out, stats, digests = {}, {}, {}
  cache.mkdir(parents=True, exist_ok=True)
  for k, (name, path) in enumerate(zip(s.names, s.heldout_paths)):
    rows = Rows(encode(load_documents(path), tok), s.seq_len)
    out[name], stats[name] = select_heldout(rows, count, HELDOUT_SEED + k, MIN_TARGETS, index, tok)
    if len(out[name]) < count:
      log(f"warning: {name}: only {len(out[name])} of {count} held-out sequences in {path}")
    np.save(cache / f"{name}.npy", out[name])
    digests[name] = hashlib.sha256((cache / f"{name}.npy").read_bytes()).hexdigest()
  manifest = {
    "settings": settings,
    "stats": stats,
    "sha256": digests,
    "substring_searches": index.searches,
    "build_seconds": round(time.time() - start, 1),
  }
  manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
  log(
    f"held-out sequences in {cache}: " + ", ".join(f"{n} {st['kept']}" for n, st in stats.items())
  )
  return out, manifest


def switch_name(a: str, b: str) -> str:
  return f"{a}→{b}"


def switch_rows(
  test: Mapping[str, np.ndarray],
  pairs: Sequence[tuple[str, str]],
  count: int,
  seed: int = SWITCH_SEED,
  *,
  bos_id: int | None,
) -> dict[str, tuple[np.ndarray, int]]:
  """The switch set: ``{'a→b': (rows int32 [count, seq_len + 1], s)}``, sequences whose domain
  changes half-way, to see which methods can follow a change of domain inside one sequence (a
  sequence router or a posterior mixture commits to one expert; a per-token mechanism need not).

  A row is the first s + 1 tokens of a test row of domain a followed by the first seq_len − s tokens
  of a test row of domain b after its BOS (``bos_id``, the tokenizer's; a row that starts a document
  starts with it, and a BOS in the middle would announce the switch), with s = seq_len // 2. As
  everywhere, ``rows[:, :-1]`` are the inputs and ``rows[:, 1:]`` the targets, target t being token
  t + 1. So targets 0..s − 1 are a's tokens, and **s is the index of the first target that belongs
  to b**: target s is b's first token, predicted from a's tokens only; targets s..seq_len − 1
  (seq_len − s of them) are b's.

  Only rows without padding in the part used are eligible, so every target is real. For each pair
  the a-rows and b-rows are drawn in an order seeded by (``seed``, the pair's name), so a pair's
  rows do not depend on which other pairs are asked for; within a pair a source row is used at most
  once (also when a == b). ``test`` is the de-duplicated held-out test rows (:func:`heldout`); too
  few eligible rows is an error rather than a smaller set."""
  out: dict[str, tuple[np.ndarray, int]] = {}
  for a, b in pairs:
    name = switch_name(a, b)
    if name in out:
      raise ValueError(f"switch pair {name} asked for twice")
    missing = [d for d in (a, b) if d not in test]
    if missing:
      raise KeyError(f"switch pair {name}: no test rows for {missing}; have {list(test)}")
    rows_a, rows_b = np.asarray(test[a]), np.asarray(test[b])
    if rows_a.ndim != 2 or rows_b.ndim != 2 or rows_a.shape[1] != rows_b.shape[1]:
      raise ValueError(
        f"switch pair {name}: rows {rows_a.shape} and {rows_b.shape} need one length seq_len + 1"
      )
    seq_len = rows_a.shape[1] - 1
    s = seq_len // 2
    if s < 1:
      raise ValueError(f"seq_len {seq_len} is too short to switch domain half-way")
    head = rows_a[:, : s + 1]
    skip = (
      (rows_b[:, 0] == bos_id).astype(np.int64)
      if bos_id is not None
      else np.zeros(len(rows_b), np.int64)
    )
    tail = np.take_along_axis(rows_b, skip[:, None] + np.arange(seq_len - s), 1)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    pick_a = rng.permutation(np.flatnonzero((head != PAD).all(1)))[:count]
    pick_b = rng.permutation(np.flatnonzero((tail != PAD).all(1)))
    if a == b:
      pick_b = pick_b[~np.isin(pick_b, pick_a)]
    pick_b = pick_b[:count]
    if min(len(pick_a), len(pick_b)) < count:
      raise ValueError(
        f"switch pair {name}: {count} rows asked for, but only {len(pick_a)} {a} rows without "
        f"padding in their first {s + 1} tokens and {len(pick_b)} {b} rows without padding in "
        f"their first {seq_len - s} tokens after BOS are available"
      )
    out[name] = (np.concatenate([head[pick_a], tail[pick_b]], 1).astype(np.int32), s)
  return out


def _file_digest(path: str) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _read_checked(path: pathlib.Path, digest: str) -> np.ndarray:
  if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
    raise ValueError(f"{path}: sha256 differs from its manifest (the held-out set was modified)")
  return np.load(path)


# --- the API the superposition trainer uses -------------------------------------------------------


def training_rows(s: Spec) -> list[Rows]:
  tok = get_tokenizer(s.tokenizer)
  return [Rows(encode(load_documents(p), tok), s.seq_len) for p in s.train_paths]


def domain_stream(config: Mapping) -> DomainStream:
  """Balanced labelled training batches of the config's domains (labels = expert indices)."""
  s = spec(config)
  return DomainStream(training_rows(s), s.batch_size, s.seed)


def domain_eval_sets(config: Mapping) -> dict[str, SequenceSet]:
  """Validation sequences per domain, ``superposed.eval_batches`` full batches each: the first of
  the VAL_SEQUENCES that evaluation uses to choose λ and mixture weights (the same for every
  seed)."""
  s = spec(config)
  rows, _ = heldout(s, VAL_SEQUENCES)
  return {n: SequenceSet(rows[n], k, s.batch_size, s.eval_batches) for k, n in enumerate(s.names)}
