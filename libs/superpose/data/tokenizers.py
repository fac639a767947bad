"""Tokenizers behind one small interface: ``encode(str) -> list[int]``, ``decode(ids) -> str``."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int | None
  eos_id: int | None

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes 0..255 plus one document separator (id 256), used as BOS and EOS."""

  vocab_size: int = 257
  bos_id: int = 256
  eos_id: int = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def _gpt2() -> Tokenizer:
  from superpose.data import bpe  # imported on use: it needs tiktoken and may download

  return bpe.gpt2()


def _symbols(**kwargs) -> Tokenizer:
  from superpose.data import symbols

  return symbols.symbol_tokenizer(**kwargs)


_REGISTRY = {"bytes": ByteTokenizer, "gpt2": _gpt2, "symbols": _symbols}


def get_tokenizer(name: str, **kwargs) -> Tokenizer:
  """The tokenizer registered as ``name``; keyword arguments go to its factory (e.g.
  ``symbols=``)."""
  if name not in _REGISTRY:
    raise ValueError(
      f"data.tokenizer: unknown tokenizer {name!r} (known: {', '.join(sorted(_REGISTRY))})"
    )
  return _REGISTRY[name](**kwargs)


def register(name: str, factory) -> None:
  """Add a tokenizer factory (e.g. superpose.data.symbols.register_vocabulary for a fixed
  vocabulary)."""
  _REGISTRY[name] = factory
