"""evaluate.py end to end on tiny random models saved as real checkpoints (seconds)."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from projects.superposed_experts import data, evaluate
from projects.superposed_experts.train import SuperposedSpec, superposed_section
from superpose.data.corpora import text as text_lib
from superpose.nn.testing import random_model
from superpose.train import checkpoint as ckpt_lib
from superpose.train.config import base_config, model_section
from superpose.train.lm import model_config

SEQ = 16
MODEL = dict(vocab_size=257, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=SEQ)


def _docs(alphabet: str, n: int, seed: int):
  rng = np.random.default_rng(seed)
  return [
    {"title": f"{alphabet[:3]}{seed}-{i}", "text": "".join(rng.choice(list(alphabet), 60))}
    for i in range(n)
  ]


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
  """Expert workdirs (random models) and, holding copies of them, a superposed, a merge and a trunk
  run."""
  lm_cfg = {**base_config().to_dict(), "model": model_section("gpt2", **MODEL).to_dict()}
  lm_cfg["train"]["seq_len"] = SEQ
  experts = [random_model(model_config(lm_cfg), seed=10 * seed + i, scale=0.2) for i in range(k)]
  paths = [
    _save(root / f"seed{seed}" / f"expert{i}", lm_cfg, _pure(m)) for i, m in enumerate(experts)
  ]
  learned = {}
  for name, section in (
    ("superposed", dict(ae_layers=(0,), train_ae_layers=(0,), bottleneck=8)),
    ("merge", dict(method="merge")),
    ("trunk_r2", dict(method="trunk", rank=2, gate_hidden=4)),
  ):
    cfg = {
      **base_config().to_dict(),
      **lm_cfg,
      "trainer": "projects.superposed_experts.train",
      "seed": seed,
      "superposed": superposed_section(
        num_experts=k, domains=("english", "french", "python")[:k], **section
      ).to_dict(),
    }
    cfg["train"]["seq_len"] = SEQ
    cfg["optim"] = {
      **cfg["optim"],
      "frozen": ("trunk/.*", "teachers/.*") if "trunk" in name else ("experts/.*",),
    }
    task = SuperposedSpec(cfg)
    params = _pure(task.make_model())
    if task.method == "trunk":
      params["trunk"] = _pure(experts[0])
    else:
      params["experts"] = {str(i): _pure(m) for i, m in enumerate(experts)}
    learned[name] = _save(root / f"seed{seed}" / name, cfg, params)
  return {"experts": paths, "learned": learned}


def _layout(tmp_path, names, seeds, eval_sequences, k):
  paths = write_domains(tmp_path / "data", names)
  layout = {
    "domains": list(names),
    "train_paths": paths["train"],
    "val_paths": paths["val"],
    "test_paths": paths["test"],
    "tokenizer": "bytes",
    "seq_len": SEQ,
    "eval_sequences": eval_sequences,
    "seeds": {str(s): make_runs(tmp_path / "runs", s, k) for s in seeds},
  }
  work = tmp_path / "work"
  work.mkdir()
  (work / "pipeline.json").write_text(json.dumps(layout))
  return work


def test_evaluate_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate, "ROUTER_TRAIN", 16)
  monkeypatch.setattr(evaluate, "ROUTER_PREFIX", 8)
  monkeypatch.setattr(evaluate, "SWITCH_SEQUENCES", 8)
  monkeypatch.setattr(data, "VAL_SEQUENCES", 24)
  work = _layout(tmp_path, ("english", "french"), (0, 1), 40, 2)
  logs = []
  results = evaluate.run(work, interp_steps=2, log=logs.append)
  T = results["table"]["methods"]
  groups = {
    "english",
    "french",
    "english→french/1",
    "english→french/2",
    "french→english/1",
    "french→english/2",
  }
  for m in (
    "base",
    "expert:french",
    "oracle",
    "router",
    "mixture uniform",
    "mixture best",
    "posterior mixture",
    "fixed share",
    "interp best",
    "task arithmetic",
    "superposed",
    "merge",
    "trunk_r2",
    "trunk_r2 (oracle gate)",
  ):
    assert set(T[m]["nll"]) == groups, m
  assert T["oracle"]["gap"]["value"] == 1.0 and T["interp best"]["gap"]["value"] == 0.0
  # Oracle routing is each domain's own expert, also on each half of a switch sequence.
  for g, m in (
    ("english", "base"),
    ("french", "expert:french"),
    ("english→french/1", "base"),
    ("english→french/2", "expert:french"),
    ("french→english/1", "expert:french"),
  ):
    assert T["oracle"]["nll"][g]["value"] == T[m]["nll"][g]["value"], g
  assert T["expert:french"]["forgetting"]["french"]["value"] == 0.0
  for s in ("0", "1"):
    info = results["info"][s]
    assert min(info["router_accuracy"].values()) > 0.8  # the alphabets are disjoint (8 tokens read)
    assert (
      info["bypass expert 0 max |Δ log p|"] < 1e-4 and info["bypass expert 1 max |Δ log p|"] < 1e-4
    )
    assert set(info["gates"]) == {"trunk_r2"} and set(info["alphas"]) == {"superposed", "merge"}
  # Costs: one model 1×, the ensembles K×, the paper's model about K× (FLOPs, no bench.json here).
  C = results["costs"]
  assert C["merge"]["flops_ratio"] == 1.0 and C["posterior mixture"]["flops_ratio"] == 2.0
  assert (
    1.0 < C["trunk_r2"]["flops_ratio"] < C["superposed"]["flops_ratio"] < 2.0
  )  # the head is shared
  assert C["merge"]["param_bytes"] * 2 == C["posterior mixture"]["param_bytes"]
  text = (work / "results.md").read_text()
  assert "## Who wins at each cost" in text and "one trunk" in text and "posterior mixture" in text
  assert all(pathlib.Path(p).exists() for p in results["plots"]) and len(results["plots"]) == 4
  saved = sorted(p.name for p in (work / "eval_sequences").iterdir())
  assert saved == ["english.npy", "french.npy", "manifest.json"]
  # A second run reuses the cached sequences and per-seed scores.
  logs.clear()
  again = evaluate.run(work, interp_steps=2, log=logs.append)
  assert sum("cached evaluation" in line for line in logs) == 2
  assert again["table"]["methods"]["superposed"]["nll"] == T["superposed"]["nll"]


# K = 3 through the same code as K = 2 (test_evaluate_end_to_end); 40-50 s on 2 cores
@pytest.mark.slow
def test_three_experts_add_ties(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate, "ROUTER_TRAIN", 8)
  monkeypatch.setattr(evaluate, "ROUTER_PREFIX", 8)
  monkeypatch.setattr(evaluate, "SWITCH_SEQUENCES", 4)
  monkeypatch.setattr(data, "VAL_SEQUENCES", 16)
  names = ("english", "french", "python")
  work = _layout(tmp_path, names, (0,), 20, 3)
  results = evaluate.run(work, interp_steps=1, log=lambda *a: None)
  T = results["table"]["methods"]
  for m in ("task arithmetic", "TIES", "expert:python", "trunk_r2"):
    assert {"english", "french", "python", "english→python/2"} <= set(T[m]["nll"]), m
  info = results["info"]["0"]
  assert (
    info["task arithmetic λ"] in evaluate.TA_LAMBDAS and info["TIES λ"] in evaluate.TIES_LAMBDAS
  )
  assert info["bypass expert 2 max |Δ log p|"] < 1e-4
  assert np.asarray(info["alphas"]["superposed"]).shape == (MODEL["num_layers"], 3)
  assert results["costs"]["fixed share"]["flops_ratio"] == 3.0


def test_pipeline_stages_and_overrides(tmp_path):
  from projects.superposed_experts import pipeline

  overrides = pipeline.parse_overrides(
    ["train.steps=5", "base:optim.lr=0.1", "superposed.ae_layers=(0,)"]
  )
  assert overrides == {
    "*": ["--config.train.steps=5", "--config.superposed.ae_layers=(0,)"],
    "base": ["--config.optim.lr=0.1"],
  }
  names = ("english", "french", "python")
  experts = dict(pipeline.expert_commands("c.py", tmp_path, names, tmp_path / "d", overrides))
  assert list(experts) == ["base", "expert_french", "expert_python"]
  assert f"--config.train.init_from={tmp_path / 'experts' / 'base'}" in experts["expert_python"]
  assert any(
    a.endswith("python/train.jsonl.gz")
    for a in experts["expert_python"]
    if a.startswith("--config.data.path")
  )
  assert (
    "--config.seed=0" in experts["expert_french"] and "--config.optim.lr=0.1" in experts["base"]
  )
  stages = ["superposed", "superposed_tf", "blend_only", "merge", "trunk_r4", "superposed_router"]
  learned = dict(
    pipeline.learned_commands(
      "c.py", tmp_path, 1, names, tmp_path / "d", ["/a", "/b", "/c"], stages, overrides
    )
  )
  assert list(learned) == stages
  assert "--config.superposed.experts=('/a', '/b', '/c')" in learned["merge"]
  assert (
    "--config=c.py:router" in learned["superposed_router"]
    and "--config=c.py:teacher_forced" in learned["superposed_tf"]
  )
  assert (
    "--config.superposed.rank=4" in learned["trunk_r4"]
    and "--config=c.py:trunk" in learned["trunk_r4"]
  )
  assert (
    "--config.seed=1" in learned["superposed"]
    and f"--workdir={tmp_path / 'seed_1' / 'merge'}" in learned["merge"]
  )
  assert pipeline.trunk_overrides("trunk_r16_novec_nokd") == [
    "--config.superposed.rank=16",
    "--config.superposed.delta_vectors=none",
    "--config.superposed.distill_weight=0.0",
  ]
  with pytest.raises(ValueError, match="trunk_r<rank>"):
    pipeline.trunk_overrides("trunk_r8_wide")


def test_load_model_reads_hugging_face_gpt2_directories(tmp_path):
  from superpose.nn import hf_gpt2
  from superpose.train.loader import load_model

  cfg = model_config({"model": model_section("gpt2", **MODEL).to_dict()})
  model = random_model(cfg, seed=3, scale=0.2)
  hf_gpt2.save_hf_gpt2(cfg, _pure(model), tmp_path / "gpt2")
  assert hf_gpt2.is_hf_dir(tmp_path / "gpt2") and not hf_gpt2.is_hf_dir(tmp_path)
  loaded = load_model(tmp_path / "gpt2")
  graphdef, params = loaded.graphdef, loaded.params
  assert loaded.config == {"hf": str(tmp_path / "gpt2")} and loaded.spec is None
  rows = np.arange(3 * (SEQ + 1)).reshape(3, SEQ + 1) % 200
  ours = evaluate.score(evaluate.lm_scorer(nnx.split(model)[0]), _pure(model), rows)[0]
  np.testing.assert_allclose(
    evaluate.score(evaluate.lm_scorer(graphdef), params, rows)[0], ours, atol=1e-5
  )
