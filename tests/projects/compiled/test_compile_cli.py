"""The compile CLI writes what the transformer loads, explains the layout, and runs inputs."""

import json

import pytest

from projects.compiled import compile as cli
from projects.compiled import programs
from superpose import nn
from superpose.rasp.compiler import CompiledModel, compile_rasp


def test_sort_round_trip(tmp_path, capsys):
  out = tmp_path / "sort"
  assert (
    cli.main(
      [
        "--program",
        "sort",
        "--max-seq-len",
        "8",
        "--vocab",
        "a,b,c",
        "--out",
        str(out),
        "--explain",
        "--input",
        "c,a,b,a",
      ]
    )
    == 0
  )
  text = capsys.readouterr().out
  assert "layer allocation:" in text and "residual basis:" in text and "tokens:BOS" in text
  assert "model:  ['a', 'a', 'b', 'c']" in text and "RASP:   ['a', 'a', 'b', 'c']" in text
  saved = json.loads((out / "config.json").read_text())
  cfg = nn.from_dict(saved["model"])
  assert cfg.max_seq_len == 9 and cfg.norm == "none"
  basis = json.loads((out / "residual_basis.json").read_text())
  assert (
    basis["labels"] == saved["compiled"]["residual_labels"] and len(basis["labels"]) == cfg.d_model
  )
  loaded = CompiledModel.load(out)
  assert loaded.apply(list("cbacab")) == list("aabbcc")
  # Compiling again into the same directory replaces the model; a training workdir is refused.
  assert (
    cli.main(["--program", "reverse", "--max-seq-len", "8", "--vocab", "a,b,c", "--out", str(out)])
    == 0
  )
  assert CompiledModel.load(out).apply(list("abc")) == list("cba")
  (out / "config.json").write_text(json.dumps({"model": saved["model"]}))
  assert (
    cli.main(["--program", "sort", "--max-seq-len", "8", "--vocab", "a,b,c", "--out", str(out)])
    == 2
  )
  assert "not a compiled RASP model" in capsys.readouterr().err


def test_int_vocab_and_numerical_output(capsys):
  assert (
    cli.main(
      [
        "--program",
        "frac_prevs",
        "--max-seq-len",
        "5",
        "--vocab",
        "1,2,3",
        "--token",
        "2",
        "--input",
        "2,1,2",
      ]
    )
    == 0
  )
  text = capsys.readouterr().out
  assert "model:  [1.0, 0.5, 0.666" in text


def test_causal_flag(capsys):
  assert (
    cli.main(
      [
        "--program",
        "frac_prevs",
        "--max-seq-len",
        "4",
        "--vocab",
        "a,x",
        "--token",
        "x",
        "--causal",
        "--input",
        "x,a",
      ]
    )
    == 0
  )
  assert "model:  [1.0, 0.5]" in capsys.readouterr().out


def test_needs_something_to_do():
  with pytest.raises(SystemExit):
    cli.main(["--program", "hist", "--max-seq-len", "4", "--vocab", "a,b"])


@pytest.mark.parametrize("name", programs.NAMES)
def test_every_library_program_builds_and_compiles(name):
  vocab = ["(", ")", "{", "}"] if "dyck" in name or name == "pair_balance" else ["a", "b", "c"]
  program = programs.build(name, vocab, 4)
  assert compile_rasp(program, vocab, 4).num_layers >= 1
