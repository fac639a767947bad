import pytest

from superpose.data import symbols
from superpose.data.tokenizers import get_tokenizer


def test_ids_specials_first_then_symbols():
  tok = symbols.SymbolTokenizer(("0", "1", "+", "="))
  assert tok.vocab == ("<pad>", "<bos>", "<eos>", "0", "1", "+", "=")
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (7, 0, 1, 2)
  assert tok.encode("1 + 1 =") == [4, 5, 4, 6]
  assert tok.encode("  1\t+ 1 \n") == [4, 5, 4]  # a space separator splits on any whitespace
  assert tok.encode("") == []


def test_round_trips():
  tok = symbols.SymbolTokenizer(("walk", "jump", "LEFT", "x2"))
  seq = ["jump", "x2", "LEFT", "walk"]
  ids = tok.encode_symbols(seq)
  assert tok.decode_symbols(ids) == seq and tok.decode(ids) == "jump x2 LEFT walk"
  assert tok.encode(tok.decode(ids)) == ids
  with_specials = [tok.bos_id] + ids + [tok.eos_id, tok.pad_id]
  assert tok.decode(with_specials) == "jump x2 LEFT walk"  # specials left out of text
  assert tok.decode_symbols(with_specials)[0] == "<bos>"


def test_character_vocabulary_and_no_specials():
  tok = symbols.SymbolTokenizer(tuple("abc"), specials=(), sep="")
  assert tok.encode("cab") == [2, 0, 1] and tok.decode([2, 0, 1]) == "cab"
  assert tok.bos_id is None and tok.eos_id is None and tok.pad_id is None and tok.vocab_size == 3


def test_custom_specials():
  tok = symbols.SymbolTokenizer(("a", "b"), specials=("<pad>", "<sep>"))
  assert tok.id_of("<sep>") == 1 and tok.bos_id is None and tok.encode("a <sep> b") == [2, 1, 3]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(symbols=("a", "a")), "repeated \\['a'\\]"),
    (dict(symbols=("a", "<pad>")), "repeated \\['<pad>'\\]"),
    (dict(symbols=("a b",)), "cannot be written"),
    (dict(symbols=("",)), "cannot be written"),
    (dict(symbols=("ab",), sep=""), "cannot be written"),
    (dict(symbols=()), "at least one symbol"),
  ],
)
def test_bad_vocabularies(kwargs, message):
  with pytest.raises(ValueError, match=message):
    symbols.SymbolTokenizer(**kwargs)


def test_unknown_symbol_and_id():
  tok = symbols.SymbolTokenizer(("a", "b"))
  with pytest.raises(ValueError, match="symbol 'c' is not in the vocabulary"):
    tok.encode("a c")
  with pytest.raises(ValueError, match="id 9 is outside the vocabulary"):
    tok.decode([9])


def test_registry():
  tok = get_tokenizer("symbols", symbols=["0", "1"], specials=["<pad>"])
  assert tok.vocab == ("<pad>", "0", "1")
  fixed = symbols.register_vocabulary("test-parity", ["0", "1"])
  assert get_tokenizer("test-parity") is fixed and fixed.encode("1 0") == [4, 3]
  assert hash(fixed) == hash(
    symbols.SymbolTokenizer(("0", "1"))
  )  # frozen: usable as a static jit argument
