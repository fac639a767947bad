import numpy as np
import pytest

from superpose.data import lm
from superpose.data.tokenizers import ByteTokenizer, get_tokenizer


@pytest.fixture(scope="module")
def docs():
  return lm.load_documents("sample:shakespeare.jsonl.gz")


def test_embedded_sample(docs):
  assert len(docs) == 22
  assert all(d["text"].isascii() for d in docs)
  size = sum(len(d["text"]) for d in docs)
  assert 2_000_000 < size <= 3_000_000


def test_byte_tokenizer_round_trip():
  tok = get_tokenizer("bytes")
  text = "To be, or not to be — that is the question."
  assert tok.decode(tok.encode(text)) == text
  assert tok.vocab_size == 257 and tok.bos_id == 256
  with pytest.raises(ValueError, match="unknown tokenizer 'bpe9'"):
    get_tokenizer("bpe9")


def test_split_is_by_document_and_stable(docs):
  train, val = lm.split_documents(docs, 2)
  train2, val2 = lm.split_documents(list(reversed(docs)), 2)
  assert {d["title"] for d in val} == {d["title"] for d in val2}
  assert len(train) == 20 and not {d["title"] for d in train} & {d["title"] for d in val}
  with pytest.raises(ValueError, match="leaves no training documents"):
    lm.split_documents(docs, 22)


def test_tokenize_inserts_bos(docs):
  toks = lm.tokenize(docs[:2], ByteTokenizer())
  assert toks[0] == 256 and (toks == 256).sum() == 2
  assert len(toks) == len(docs[0]["text"]) + len(docs[1]["text"]) + 2


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.arange(10_000, dtype=np.int32)
  a = lm.TrainStream(tokens, seq_len=16, batch_size=4, seed=7)
  b = lm.TrainStream(tokens, seq_len=16, batch_size=4, seed=7)
  c = lm.TrainStream(tokens, seq_len=16, batch_size=4, seed=8)
  for step in (0, 5, 1234):
    np.testing.assert_array_equal(a.batch(step)["inputs"], b.batch(step)["inputs"])
  assert not np.array_equal(a.batch(3)["inputs"], c.batch(3)["inputs"])
  x = a.batch(3)
  np.testing.assert_array_equal(
    x["targets"][:, :-1], x["inputs"][:, 1:]
  )  # targets are shifted inputs
  assert x["inputs"].shape == (4, 16)


def test_process_slices_assemble_the_global_batch():
  s = lm.TrainStream(np.arange(5_000, dtype=np.int32), seq_len=8, batch_size=8, seed=0)
  whole = s.batch(11)["inputs"]
  parts = [s.batch(11, process_index=i, process_count=2)["inputs"] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    s.batch(0, 0, 3)


def test_every_window_once_per_epoch_and_reshuffled():
  s = lm.TrainStream(np.arange(8 * 8 + 1, dtype=np.int32), seq_len=8, batch_size=4, seed=0)
  first = np.concatenate([s.batch(i)["inputs"][:, 0] for i in range(2)])
  second = np.concatenate([s.batch(i)["inputs"][:, 0] for i in range(2, 4)])
  assert sorted(first) == sorted(second) == list(range(0, 64, 8))
  assert not np.array_equal(first, second)


def test_missing_file_error():
  with pytest.raises(FileNotFoundError, match="data file not found: /nope/x.jsonl"):
    lm.load_documents("/nope/x.jsonl")
