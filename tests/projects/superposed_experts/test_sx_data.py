"""Domain data: pure, balanced training batches; fixed held-out sequences disjoint from training
text."""

import pathlib

import numpy as np
import pytest

from projects.superposed_experts import data
from superpose.data.corpora import text as text_lib
from superpose.data.tokenizers import ByteTokenizer


def _write(path: pathlib.Path, docs):
  path.parent.mkdir(parents=True, exist_ok=True)
  text_lib.write_jsonl_gz(path, docs)
  return str(path)


def _corpus(tmp_path, leak: str = ""):
  """Two domains; the English test split repeats a training sentence verbatim (``leak``)."""
  rng = np.random.default_rng(0)
  words = {
    "english": "the of and to in is was he that it".split(),
    "french": "le la de et les des un une est il".split(),
  }
  files = {}
  for k, (name, vocab) in enumerate(words.items()):
    for split, n in (("train", 30), ("val", 8), ("test", 8)):
      docs = [
        {"title": f"{name}-{split}-{i}", "text": " ".join(rng.choice(vocab, 80)) + f" {split}{i}"}
        for i in range(n)
      ]
      if leak and name == "english" and split == "test":
        docs.append({"title": "leak", "text": leak})
      files.setdefault(split, []).append(_write(tmp_path / name / f"{split}.jsonl.gz", docs))
  return files


def _config(files, seed=0, batch_size=6, seq_len=24):
  return {
    "superposed": {
      "domains": ("english", "french"),
      "train_paths": files["train"],
      "val_paths": files["val"],
      "eval_batches": 2,
    },
    "train": {"seq_len": seq_len, "batch_size": batch_size},
    "data": {"tokenizer": "bytes"},
    "seed": seed,
  }


def test_rows_cover_every_target_once_and_pad_the_last():
  docs = [np.arange(1, 31, dtype=np.int32), np.array([7, 8, 9], np.int32), np.array([5], np.int32)]
  rows = data.Rows(docs, seq_len=8)
  got = rows.get(range(len(rows)))
  assert len(rows) == 5  # 30 tokens → 29 targets in 4 rows; 3 → 1 row; 1 → none
  batch = data.to_batch(got, np.zeros(len(got)))
  assert batch["weights"].sum() == 29 + 2
  assert got[1, 0] == got[0, -1] == 9  # consecutive rows share one token
  assert got[3, :6].tolist() == list(range(25, 31)) and (got[3, 6:] == data.PAD).all()
  assert got[4, :3].tolist() == [7, 8, 9] and (got[4, 3:] == data.PAD).all()
  assert batch["inputs"].min() >= 0 and batch["targets"].min() >= 0  # padding is masked, not -1


def test_stream_is_pure_in_seed_and_step_and_balanced(tmp_path):
  files = _corpus(tmp_path)
  a, b = data.domain_stream(_config(files)), data.domain_stream(_config(files))
  for step in (0, 3, 1000):
    x, y = a.batch(step), b.batch(step)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert not np.array_equal(a.batch(0)["inputs"], a.batch(1)["inputs"])
  other = data.domain_stream(_config(files, seed=1))
  assert not np.array_equal(a.batch(0)["inputs"], other.batch(0)["inputs"])
  labels = np.concatenate([a.batch(s)["labels"] for s in range(10)])
  assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [30, 30]
  # Each row's text comes from its labelled domain (French bytes never in English rows and vice
  # versa).
  x = a.batch(2)
  for row, label in zip(x["inputs"], x["labels"]):
    text = bytes(int(t) for t in row if t < 256).decode("utf-8", "ignore")
    assert ("le " in text or "la " in text or "de " in text) == (label == 1)
  # Processes split a global batch into disjoint, consecutive parts.
  halves = [a.batch(5, p, 2) for p in (0, 1)]
  assert np.array_equal(np.concatenate([h["inputs"] for h in halves]), a.batch(5)["inputs"])


def test_heldout_identical_across_calls_and_disjoint_from_training(tmp_path):
  files = _corpus(tmp_path)
  leaked = data.load_documents(files["train"][0])[3]["text"][
    :40
  ]  # a test document copied from training
  files = _corpus(tmp_path, leak=leaked)
  cfg = _config(files)
  first = data.domain_eval_sets(cfg)
  again = data.domain_eval_sets(cfg)
  for name in first:
    assert np.array_equal(first[name].rows, again[name].rows)
    assert (
      first[name].num_batches == 2
      and first[name].batch(0)["labels"].tolist() == [first[name].label] * 6
    )
  spec = data.spec(cfg).with_heldout(files["test"])
  rows, manifest = data.heldout(spec, 100)
  assert manifest["stats"]["english"]["verbatim_in_train"] >= 1
  train_text = b"\0".join(
    d["text"].encode() for p in files["train"] for d in data.load_documents(p)
  )
  for name, r in rows.items():
    for row in r:
      assert data.row_bytes(row, ByteTokenizer()) not in train_text
  # The cache is checked against its manifest's sha256.
  for cache in pathlib.Path(files["test"][0]).parent.parent.glob("heldout/*/english.npy"):
    np.save(cache, np.zeros((1, 25), np.int32))
  with pytest.raises(ValueError, match="sha256"):
    data.heldout(data.spec(cfg), data.VAL_SEQUENCES)


def test_verbatim_index_finds_substrings_exactly():
  rng = np.random.default_rng(0)
  text = bytes(rng.integers(32, 127, 20000, dtype=np.uint8))
  index = data.VerbatimIndex([text])
  for start, length in ((0, 50), (1234, 128), (19950, 50), (500, 10)):
    assert index.contains(text[start : start + length])
  assert not index.contains(text[100:160] + b"!")
  changed = bytearray(text[3000:3128])
  changed[64] ^= 1
  assert not index.contains(bytes(changed))


def test_python_corpus_split_and_dedup(tmp_path):
  lib = tmp_path / "lib"
  for i in range(40):
    p = lib / ("test" if i % 10 == 0 else "pkg") / f"mod{i}.py"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
      f"def f{i}(x):\n    return x + {i}\n"
      + "# shared licence header line that is long enough here\n" * 2
    )
  m = data.build_python_corpus(
    tmp_path / "out", stdlib=lib, val_frac=0.2, test_frac=0.2, log=lambda *a: None
  )
  assert sum(s["documents"] for s in m["splits"].values()) <= 36  # test/ folders left out
  assert m["splits"]["train"]["documents"] > 0 and not m["cached"]
  assert data.build_python_corpus(tmp_path / "out", stdlib=lib, val_frac=0.2, test_frac=0.2)[
    "cached"
  ]


def _switch_test_rows(seq_len=24):
  """Held-out-like rows of two domains with disjoint alphabets (English lowercase, French
  uppercase), cut by ``data.Rows`` so that document-first rows start with BOS and last rows are
  padded."""
  rng = np.random.default_rng(0)
  tok = ByteTokenizer()
  out = {}
  for name, letters in (("english", "abcdefghij"), ("french", "ABCDEFGHIJ")):
    docs = [
      {"text": "".join(rng.choice(list(letters), int(rng.integers(20, 90))))} for _ in range(12)
    ]
    rows = data.Rows(data.encode(docs, tok), seq_len)
    out[name] = rows.get(rng.permutation(len(rows)))
  return out


def test_switch_rows_change_domain_at_the_switch_position():
  test = _switch_test_rows()
  bos = ByteTokenizer().bos_id
  assert (test["french"][:, 0] == bos).any() and (
    test["english"] == data.PAD
  ).any()  # the cases to handle
  got = data.switch_rows(
    test, [("english", "french"), ("french", "english"), ("english", "english")], 6, bos_id=bos
  )
  assert list(got) == ["english→french", "french→english", "english→english"]
  for name, (rows, s) in got.items():
    a, b = name.split("→")
    assert rows.shape == (6, 25) and rows.dtype == np.int32 and s == 12
    assert (rows != data.PAD).all() and (
      rows[:, 1:] != bos
    ).all()  # no padding; BOS only as the first token
    targets = rows[:, 1:]
    lower = (targets >= ord("a")) & (targets <= ord("z"))
    if a != b:  # targets before s are a's letters, targets from s on are b's
      assert (lower[:, :s] == (a == "english")).all() and (lower[:, s:] == (b == "english")).all()
    # Each half is the first half of one source row (b's after its BOS), and no source row is used
    # twice.
    src_a = [
      i for r in rows for i, t in enumerate(test[a]) if np.array_equal(t[: s + 1], r[: s + 1])
    ]
    src_b = [
      i
      for r in rows
      for i, t in enumerate(test[b])
      if np.array_equal(t[int(t[0] == bos) :][: 24 - s], r[s + 1 :])
    ]
    assert len(src_a) == len(set(src_a)) == 6 and len(src_b) == len(set(src_b)) == 6
    if a == b:
      assert not set(src_a) & set(src_b)


def test_switch_rows_are_deterministic_and_skip_padded_halves():
  test = _switch_test_rows()
  bos = ByteTokenizer().bos_id
  first = data.switch_rows(test, [("english", "french")], 5, bos_id=bos)["english→french"][0]
  again = data.switch_rows(test, [("french", "english"), ("english", "french")], 5, bos_id=bos)[
    "english→french"
  ][0]
  np.testing.assert_array_equal(first, again)  # independent of the other pairs asked for
  other = data.switch_rows(test, [("english", "french")], 5, seed=7, bos_id=bos)["english→french"][
    0
  ]
  assert not np.array_equal(first, other)
  # Every eligible row can be used (padding after the used half is fine); one more is an error.
  eligible = int((test["english"][:, :13] != data.PAD).all(1).sum())
  assert eligible < len(test["english"])
  rows, _ = data.switch_rows(test, [("english", "english")], eligible // 2, bos_id=bos)[
    "english→english"
  ]
  assert rows.shape[0] == eligible // 2
  full = data.switch_rows(
    {"english": test["english"], "french": test["french"]},
    [("english", "french")],
    eligible,
    bos_id=bos,
  )["english→french"][0]
  heads = {r[:13].tobytes() for r in test["english"] if (r[:13] != data.PAD).all()}
  assert {r[:13].tobytes() for r in full} == heads
  with pytest.raises(ValueError, match="only"):
    data.switch_rows(test, [("english", "french")], eligible + 1, bos_id=bos)
  with pytest.raises(KeyError, match="python"):
    data.switch_rows(test, [("english", "python")], 2, bos_id=bos)
