"""One token per character for the from-scratch models (spec §2.3: 96 characters + specials, ``>`` the separator).

The 96 characters are the 94 printable non-space ASCII characters, space and ``"\\n"``; the specials come
first (``<pad>`` = 0, ``<bos>``, ``<eos>``), so the vocabulary has 99 ids (the authors' tokenizer had 7
specials, 103 ids; which ones is not recorded). ``superpose.data.symbols.SymbolTokenizer`` with
``sep=""`` cannot hold multi-character specials, so ``CharVocab`` keeps its interface (``encode``,
``decode``, ``vocab_size``, ``pad_id``/``bos_id``/``eos_id``, ``id_of``) with named specials; it is
registered as the tokenizer ``"icl_chars"``.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Sequence

import numpy as np

from superpose.data import tokenizers

CHARACTERS = tuple(c for c in string.printable if c not in string.whitespace) + (" ", "\n")
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclasses.dataclass(frozen=True)
class CharVocab:
  characters: tuple[str, ...] = CHARACTERS
  specials: tuple[str, ...] = SPECIALS

  def __post_init__(self):
    vocab = self.vocab
    if len(set(vocab)) != len(vocab) or any(len(c) != 1 for c in self.characters):
      raise ValueError("characters must be distinct single characters, distinct from the specials")
    object.__setattr__(self, "_ids", {s: i for i, s in enumerate(vocab)})

  @property
  def vocab(self) -> tuple[str, ...]:
    return tuple(self.specials) + tuple(self.characters)

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def id_of(self, symbol: str) -> int:
    try:
      return self._ids[symbol]
    except KeyError:
      raise ValueError(f"{symbol!r} is not in the character vocabulary ({self.vocab_size} ids)") from None

  @property
  def pad_id(self) -> int:
    return self.id_of("<pad>")

  @property
  def bos_id(self) -> int:
    return self.id_of("<bos>")

  @property
  def eos_id(self) -> int:
    return self.id_of("<eos>")

  def encode(self, text: str) -> list[int]:
    ids = self._ids
    try:
      return [ids[c] for c in text]
    except KeyError:
      bad = sorted({c for c in text if c not in ids or c in self.specials})
      raise ValueError(f"characters {bad} are not in the character vocabulary") from None

  def decode(self, ids: Sequence[int]) -> str:
    """The characters of ``ids``; special tokens are left out."""
    vocab, n = self.vocab, len(self.specials)
    for i in ids:
      if not 0 <= int(i) < len(vocab):
        raise ValueError(f"id {int(i)} is outside the vocabulary (size {len(vocab)})")
    return "".join(vocab[int(i)] for i in ids if int(i) >= n)


VOCAB = CharVocab()
tokenizers.register("icl_chars", lambda: VOCAB)


def char_vocabulary() -> CharVocab:
  return VOCAB


def encode_prompt(text: str, bos: bool = False, vocab: CharVocab = VOCAB) -> np.ndarray:
  """Token ids of ``text`` (optionally after ``<bos>``); to score an answer, encode ``text + answer + "\\n"``."""
  return np.asarray(([vocab.bos_id] if bos else []) + vocab.encode(text), np.int32)


def encode_lines(lines: Sequence[tuple[str, str, str]], bos: bool = False,
                 vocab: CharVocab = VOCAB) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and an answer mask for a training sequence of ``(input, sep, answer)`` lines.

  Each line is ``input + sep + answer + "\\n"``; the mask is 1 on the answer characters and the
  ``"\\n"`` (the only tokens the spec trains on), 0 on inputs, separators and ``<bos>``. The mask is
  aligned with the ids: position t is 1 when token t is an answer token (shift it for next-token loss).
  """
  ids, mask = ([vocab.bos_id], [0]) if bos else ([], [])
  for x, sep, y in lines:
    prompt, target = vocab.encode(x + sep), vocab.encode(y + "\n")
    ids += prompt + target
    mask += [0] * len(prompt) + [1] * len(target)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)
