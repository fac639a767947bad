"""Symbol vocabularies for synthetic tasks: every symbol (any string) is one token.

Ids: the special tokens first (so ``<pad>`` is 0 by default), then the symbols in the given order.
Text is a sequence of symbols joined by ``sep`` (a space by default; ``sep=""`` makes every
character a symbol, e.g. icl_superposition's character vocabulary, whose specials stay
multi-character), which gives these tokenizers the same ``encode(str)``/``decode(ids)`` interface as
the others. Synthetic projects mostly use ``encode_symbols``/``decode_symbols`` on lists directly.

    tok = SymbolTokenizer(("0", "1", "+", "="))
    tok.encode("1 + 1 =")                                            # [4, 5, 4, 6]
    get_tokenizer("symbols", symbols="0 1 + =".split())              # the same, via the registry
    register_vocabulary("parity", ["0", "1"]); get_tokenizer("parity")
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from superpose.data import tokenizers

DEFAULT_SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclasses.dataclass(frozen=True)
class SymbolTokenizer:
  symbols: tuple[str, ...]
  specials: tuple[str, ...] = DEFAULT_SPECIALS
  sep: str = " "

  def __post_init__(self):
    object.__setattr__(self, "symbols", tuple(self.symbols))
    object.__setattr__(self, "specials", tuple(self.specials))
    vocab = self.specials + self.symbols
    if not self.symbols:
      raise ValueError("a symbol vocabulary needs at least one symbol")
    dupes = sorted({s for s in vocab if vocab.count(s) > 1})
    if dupes:
      raise ValueError(
        f"symbols must be distinct (from each other and the specials): repeated {dupes}"
      )
    # Specials are ids, never parsed from text: with sep '' only the symbols must be single
    # characters.
    bad = [s for s in vocab if not s or (self.sep and self.sep in s)]
    bad += [s for s in self.symbols if not self.sep and len(s) != 1]
    if bad:
      raise ValueError(
        f"symbols {bad} cannot be written with sep={self.sep!r} "
        "(no empty symbols, none containing sep, single characters when sep is '')"
      )
    object.__setattr__(self, "_ids", {s: i for i, s in enumerate(vocab)})

  @property
  def vocab(self) -> tuple[str, ...]:
    return self.specials + self.symbols

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.symbols)

  def id_of(self, symbol: str) -> int:
    try:
      return self._ids[symbol]
    except KeyError:
      raise ValueError(
        f"symbol {symbol!r} is not in the vocabulary ({self.vocab_size} symbols)"
      ) from None

  def _special(self, name: str) -> int | None:
    return self._ids.get(name) if name in self.specials else None

  @property
  def pad_id(self) -> int | None:
    return self._special("<pad>")

  @property
  def bos_id(self) -> int | None:
    return self._special("<bos>")

  @property
  def eos_id(self) -> int | None:
    return self._special("<eos>")

  def encode_symbols(self, seq: Sequence[str]) -> list[int]:
    return [self.id_of(s) for s in seq]

  def decode_symbols(self, ids: Sequence[int], skip_specials: bool = False) -> list[str]:
    vocab, n = self.vocab, len(self.specials)
    for i in ids:
      if not 0 <= int(i) < len(vocab):
        raise ValueError(f"id {int(i)} is outside the vocabulary (size {len(vocab)})")
    return [vocab[int(i)] for i in ids if not (skip_specials and int(i) < n)]

  def encode(self, text: str) -> list[int]:
    """Splits on ``sep`` (any whitespace when sep is a space; characters when sep is '')."""
    if self.sep == " ":
      return self.encode_symbols(text.split())
    return self.encode_symbols(text.split(self.sep) if self.sep else list(text)) if text else []

  def decode(self, ids: Sequence[int]) -> str:
    """Symbols joined by ``sep``; special tokens are left out, as ByteTokenizer leaves out its
    separator."""
    return self.sep.join(self.decode_symbols(ids, skip_specials=True))


def symbol_tokenizer(
  symbols: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS, sep: str = " "
) -> SymbolTokenizer:
  """The registry's ``"symbols"`` factory: ``get_tokenizer("symbols", symbols=[...])``."""
  return SymbolTokenizer(tuple(symbols), tuple(specials), sep)


def register_vocabulary(
  name: str, symbols: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS, sep: str = " "
) -> SymbolTokenizer:
  """Registers a fixed vocabulary under ``name`` (e.g. by a project at import) and returns it."""
  tok = symbol_tokenizer(symbols, specials, sep)
  tokenizers.register(name, lambda: tok)
  return tok
