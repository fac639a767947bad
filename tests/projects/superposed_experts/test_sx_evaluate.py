"""evaluate.py end to end on tiny random models saved as real checkpoints (seconds)."""
import json
import pathlib

import jax
import numpy as np
from flax import nnx

from projects.superposed_experts import data, evaluate
from projects.superposed_experts.model import Superposed
from projects.superposed_experts.train import superposed_config, superposed_section
from superpose.data.corpora import text as text_lib
from superpose.nn.testing import random_model
from superpose.train import checkpoint as ckpt_lib
from superpose.train.config import model_section
from superpose.train.lm import model_config

SEQ = 16
MODEL = dict(vocab_size=257, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=SEQ)


def _docs(alphabet: str, n: int, seed: int):
  rng = np.random.default_rng(seed)
  return [{"title": f"{alphabet[:3]}{seed}-{i}", "text": "".join(rng.choice(list(alphabet), 60))} for i in range(n)]


def write_domains(root: pathlib.Path, names=("english", "french")) -> dict:
  """Tiny domain files: each domain's documents are random strings over its own alphabet."""
  alphabets = {"english": "abcdefgh ", "french": "éèàùç ", "python": "(){}:=_ "}
  paths = {}
  for k, name in enumerate(names):
    for j, split in enumerate(text_lib.SPLITS):
      p = root / "domains" / name / f"{split}.jsonl.gz"
      p.parent.mkdir(parents=True, exist_ok=True)
      text_lib.write_jsonl_gz(p, _docs(alphabets[name], 40 if split == "train" else 12, 10 * k + j))
      paths.setdefault(split, []).append(str(p))
  return paths


def _save(workdir: pathlib.Path, config: dict, params) -> str:
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(config))
  with ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False) as ckpt:
    ckpt.save(1, {"params": params})
  return str(workdir)


def _pure(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def make_runs(root: pathlib.Path, seed: int, k: int = 2) -> dict:
  """Expert workdirs (random models) and a superposed workdir holding copies of them."""
  lm_cfg = {"trainer": "superpose.train.lm", "model": model_section("gpt2", **MODEL).to_dict()}
  experts = [random_model(model_config(lm_cfg), seed=10 * seed + i, scale=0.2) for i in range(k)]
  paths = [_save(root / f"seed{seed}" / f"expert{i}", lm_cfg, _pure(m)) for i, m in enumerate(experts)]
  sup_cfg = {**lm_cfg, "trainer": "projects.superposed_experts.train",
             "superposed": superposed_section(num_experts=k, ae_layers=(0,), train_ae_layers=(0,),
                                              bottleneck=8).to_dict()}
  sup = Superposed(superposed_config(sup_cfg), rngs=nnx.Rngs(seed))
  params = _pure(sup)
  params["experts"] = {str(i): _pure(m) for i, m in enumerate(experts)}
  return {"experts": paths, "superposed": {"superposed": _save(root / f"seed{seed}" / "sup", sup_cfg, params)}}


def test_evaluate_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate, "ROUTER_TRAIN", 16)
  monkeypatch.setattr(data, "VAL_SEQUENCES", 24)
  paths = write_domains(tmp_path / "data")
  layout = {"domains": ["english", "french"], "train_paths": paths["train"], "val_paths": paths["val"],
            "test_paths": paths["test"], "tokenizer": "bytes", "seq_len": SEQ, "eval_sequences": 40,
            "seeds": {str(s): make_runs(tmp_path / "runs", s) for s in (0, 1)}}
  work = tmp_path / "work"
  work.mkdir()
  (work / "pipeline.json").write_text(json.dumps(layout))
  logs = []
  results = evaluate.run(work, interp_steps=2, log=logs.append)
  table = results["methods"]
  # Every method on every domain, with the arithmetic that defines the headline.
  for m in ("base", "expert:french", "oracle", "router", "mixture uniform", "mixture best", "interp λ=0.5",
            "interp best", "superposed", "superposed α=0", "superposed α=1"):
    assert set(table[m]["ppl"]) == {"english", "french"}, m
  assert table["oracle"]["gap"]["mean"] == 1.0 and table["interp best"]["gap"]["mean"] == 0.0
  for s in ("0", "1"):
    info = results["per_seed"][s]["info"]
    ppl = results["per_seed"][s]["ppl"]
    assert ppl["oracle"] == {"english": ppl["base"]["english"], "french": ppl["expert:french"]["french"]}
    assert ppl["interp λ=0.0"] == ppl["base"] and ppl["interp λ=1.0"] == ppl["expert:french"]
    # The alphabets are disjoint, so the prefix router is (nearly) always right.
    assert min(info["router_accuracy"].values()) > 0.9
    # With the autoencoders bypassed, α = 0 / 1 is the base / the expert.
    assert info["bypass α=0 max |Δ log p| vs expert 0"] < 1e-4
    assert info["bypass α=1 max |Δ log p| vs expert 1"] < 1e-4
  assert (work / "results.md").read_text().count("| superposed") >= 1
  assert all(pathlib.Path(p).exists() for p in results["plots"]) and len(results["plots"]) == 3
  saved = sorted(p.name for p in (work / "eval_sequences").iterdir())
  assert saved == ["english.npy", "french.npy", "manifest.json"]
  # A second run reuses the cached sequences and per-seed scores.
  logs.clear()
  again = evaluate.run(work, interp_steps=2, log=logs.append)
  assert sum("cached evaluation" in line for line in logs) == 2
  assert again["methods"]["superposed"]["ppl"] == table["superposed"]["ppl"]


def test_three_experts_add_task_arithmetic_and_ties(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate, "ROUTER_TRAIN", 8)
  monkeypatch.setattr(data, "VAL_SEQUENCES", 16)
  names = ["english", "french", "python"]
  paths = write_domains(tmp_path / "data", names)
  layout = {"domains": names, "train_paths": paths["train"], "val_paths": paths["val"], "test_paths": paths["test"],
            "tokenizer": "bytes", "seq_len": SEQ, "eval_sequences": 20,
            "seeds": {"0": make_runs(tmp_path / "runs", 0, k=3)}}
  work = tmp_path / "work"
  work.mkdir()
  (work / "pipeline.json").write_text(json.dumps(layout))
  results = evaluate.run(work, interp_steps=1, log=lambda *a: None)
  table = results["methods"]
  for m in ("task arithmetic", "TIES", "superposed w=e0", "superposed w=e2", "expert:python"):
    assert set(table[m]["ppl"]) == set(names), m
  info = results["per_seed"]["0"]["info"]
  assert info["task arithmetic λ"] in evaluate.TA_LAMBDAS and info["TIES λ"] in evaluate.TIES_LAMBDAS
  assert info["bypass w=e2 max |Δ log p| vs expert 2"] < 1e-4
  assert np.asarray(results["per_seed"]["0"]["alphas"]["superposed"]).shape == (MODEL["num_layers"], 3)


def test_pipeline_stages_and_overrides(tmp_path):
  from projects.superposed_experts import pipeline
  overrides = pipeline.parse_overrides(["train.steps=5", "base:optim.lr=0.1", "superposed.ae_layers=(0,)"])
  assert overrides == {"*": ["--config.train.steps=5", "--config.superposed.ae_layers=(0,)"],
                       "base": ["--config.optim.lr=0.1"]}
  names = ("english", "french", "python")
  stages = pipeline.stage_commands("c.py", "superpose", tmp_path, 1, names, tmp_path / "d", True, overrides)
  assert [s for s, _ in stages] == ["base", "expert_french", "expert_python", "superpose", "blend_only", "router"]
  argv = dict(stages)
  w = tmp_path / "seed_1"
  assert f"--config.train.init_from={w / 'base'}" in argv["expert_python"]
  assert any(a.endswith("python/train.jsonl.gz") for a in argv["expert_python"] if a.startswith("--config.data.path"))
  experts = str((str(w / "base"), str(w / "expert_french"), str(w / "expert_python")))
  assert f"--config.superposed.experts={experts}" in argv["router"] and "--config=c.py:router" in argv["router"]
  assert "--config.seed=1" in argv["superpose"] and "--config.optim.lr=0.1" in argv["base"]
  given = pipeline.stage_commands("g.py", "", tmp_path, 0, names[:2], tmp_path / "d", False, {}, ["/a", "/b"])
  assert [s for s, _ in given] == ["superpose", "blend_only"] and "--config=g.py:" in dict(given)["superpose"]


def test_load_run_reads_hugging_face_gpt2_directories(tmp_path):
  from superpose.nn import hf_gpt2
  cfg = model_config({"model": model_section("gpt2", **MODEL).to_dict()})
  model = random_model(cfg, seed=3, scale=0.2)
  hf_gpt2.save_hf_gpt2(cfg, _pure(model), tmp_path / "gpt2")
  assert evaluate.is_hf_dir(tmp_path / "gpt2")
  graphdef, params, _ = evaluate.load_run(tmp_path / "gpt2")
  rows = np.arange(3 * (SEQ + 1)).reshape(3, SEQ + 1) % 200
  ours = evaluate.score(evaluate.lm_scorer(nnx.split(model)[0]), _pure(model), rows)[0]
  np.testing.assert_allclose(evaluate.score(evaluate.lm_scorer(graphdef), params, rows)[0], ours, atol=1e-5)
