"""One token per character for the from-scratch models (spec §2.3: 96 characters + specials, ``>``
the separator).

The 96 characters are the 94 printable non-space ASCII characters, space and ``"\\n"``; the specials
come first (``<pad>`` = 0, ``<bos>``, ``<eos>``), so the vocabulary has 99 ids (the authors'
tokenizer had 7 specials, 103 ids; which ones is not recorded). It is a
``superpose.data.symbols.SymbolTokenizer`` with ``sep=""`` (every character one symbol), registered
as the tokenizer ``"icl_chars"``.
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from superpose.data import symbols

CHARACTERS = tuple(c for c in string.printable if c not in string.whitespace) + (" ", "\n")
SPECIALS = ("<pad>", "<bos>", "<eos>")
VOCAB = symbols.register_vocabulary("icl_chars", CHARACTERS, SPECIALS, sep="")


def encode_prompt(
  text: str, bos: bool = False, vocab: symbols.SymbolTokenizer = VOCAB
) -> np.ndarray:
  """Token ids of ``text`` (optionally after ``<bos>``); to score an answer, encode ``text + answer
  + "\\n"``."""
  return np.asarray(([vocab.bos_id] if bos else []) + vocab.encode(text), np.int32)


def encode_lines(
  lines: Sequence[tuple[str, str, str]], bos: bool = False, vocab: symbols.SymbolTokenizer = VOCAB
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and an answer mask for a training sequence of ``(input, sep, answer)`` lines.

  Each line is ``input + sep + answer + "\\n"``; the mask is 1 on the answer characters and the
  ``"\\n"`` (the only tokens the spec trains on), 0 on inputs, separators and ``<bos>``. The mask is
  aligned with the ids: position t is 1 when token t is an answer token (shift it for next-token
  loss).
  """
  ids, mask = ([vocab.bos_id], [0]) if bos else ([], [])
  for x, sep, y in lines:
    prompt, target = vocab.encode(x + sep), vocab.encode(y + "\n")
    ids += prompt + target
    mask += [0] * len(prompt) + [1] * len(target)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)
