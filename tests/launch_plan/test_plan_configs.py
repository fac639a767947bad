"""launch.plan on every project's paper-size config, compiled for 8 and 64 fake CPU devices.

Run: pytest -p no:xdist -q tests/launch_plan   (about 2 minutes on 2 cores; `-m slow` adds Llama-3
8B on 256) The model sizes are the papers'; at 64 devices the batch of the superposed-experts (32)
and ICL (400) configs is raised to 64 rows so that it splits over data × fsdp, and the projects use
a data 8 × fsdp 8 mesh (Coconut's unrolled thought loop takes ~95 s to compile on fsdp 64 alone, see
the slow test).
"""

from __future__ import annotations

import json
import math

import pytest

from launch import plan
from launch import plan_report as rep

PROJECTS = {
  "superposed_experts": (
    "configs/superposed_experts/gpt2.py",
    {64: ["--config.train.batch_size=64"]},
  ),
  "continuous_cot": ("configs/continuous_cot/paper.py", {}),
  "icl_superposition": (
    "configs/icl_superposition/retrieval.py:paper",
    {64: ["--config.train.batch_size=64"]},
  ),
}
MESH = {8: "1,-1,1", 64: "8,-1,1"}
CASES = [(name, n) for n in (8, 64) for name in (*PROJECTS, "lm_125m")]


def _job(name: str, n: int) -> dict:
  if name == "lm_125m":  # the scale config's own layouts: FSDP over the host / the slice
    return plan.job("configs/lm/scale.py:125m_host" if n == 8 else "configs/lm/scale.py:125m", n)
  config, overrides = PROJECTS[name]
  return plan.job(config, n, ici=MESH[n], overrides=overrides.get(n, ()))


@pytest.fixture(scope="module")
def plans() -> dict:
  result = plan.run_plans([_job(name, n) for name, n in CASES], timeout=900)
  assert result["versions"]["jax"], result
  return dict(zip(CASES, result["plans"]))


@pytest.mark.parametrize("name,n", CASES, ids=[f"{name}-{n}" for name, n in CASES])
def test_plan_paper_config(plans, name, n):
  p = plans[(name, n)]
  assert "error" not in p, p.get("error")
  m = p["memory"]
  assert p["devices"] == n and math.prod(p["mesh"]["shape"].values()) == n
  for key in ("params", "opt_state", "temp", "argument", "peak"):
    assert m[key] > 0, (key, m)
  # The compiled program's arguments are exactly the sharded state and the batch.
  assert abs(m["argument"] - (m["params"] + m["opt_state"] + m["batch"])) <= 1024
  assert m["params"] < p["param_bytes_total"]  # sharded: each device holds less than the whole
  assert p["collectives"], "a multi-device mesh must communicate"
  assert p["collective_summary"]["total"]["bytes_per_step"] > 0
  w = p["largest_whole"]
  assert w is None or w["bytes"] <= rep.MiB, f"sharding hole: {w}"
  assert set(p["fits"]) == set(rep.CHIPS) and set(p["estimate"]) == set(rep.CHIPS)
  assert all(e["compute_s"] > 0 for e in p["estimate"].values())
  assert p["verdict"].startswith(f"**TPU v5p × {n} chips: ")
  # data × fsdp meshes: no SPMD "involuntary full rematerialization" (the embedding gathers once had
  # them)
  assert not [note for note in p["notes"] if "rematerialization" in note], p["notes"]
  text = rep.markdown(p)
  assert "memory_analysis" in text and "H200" in text


def test_plan_params_split_over_fsdp_and_tensor(plans):
  """Parameters are cut fsdp × tensor ways (the data axis replicates them), up to < 1 MiB of
  replicated biases and norm scales."""
  for (name, n), p in plans.items():
    shape = p["mesh"]["shape"]
    ways = shape["fsdp"] * shape["tensor"]
    assert p["memory"]["params"] <= p["param_bytes_total"] / ways + rep.MiB, (
      name,
      n,
      p["memory"]["params"],
      ways,
    )
  assert plans[("lm_125m", 64)]["memory"]["params"] < plans[("lm_125m", 8)]["memory"]["params"]


@pytest.mark.slow
def test_plan_llama8b_on_256(tmp_path):
  """Acceptance of issue 9: Llama-3 8B, FSDP 64 × tensor 4 on 256 fake devices (≈ 15 s, 0.8 GB
  RAM)."""
  out = tmp_path / "plan.json"
  assert (
    plan.main(
      ["--config", "configs/lm/scale.py:8b", "--devices", "256", "--chip", "v5p", "--out", str(out)]
    )
    == 0
  )
  p = json.loads(out.read_text())["plan"]
  assert p["params"] > 8.0e9 and p["mesh"]["shape"] == {"data": 1, "fsdp": 64, "tensor": 4}
  assert p["whole_over_1mib"] == [] and p["largest_whole"]["bytes"] <= rep.MiB
  assert p["memory"]["params"] * 256 <= p["param_bytes_total"] * 1.01
  assert p["collectives"] and p["fits"]["v5p"]["fits"] in (True, False)
  assert p["verdict"].startswith("**TPU v5p × 256 chips: ") and "GiB" in p["verdict"]


@pytest.mark.slow
def test_plan_coconut_on_fsdp64():
  p = plan.run_plans([plan.job("configs/continuous_cot/paper.py", 64, ici="1,-1,1")])["plans"][0]
  assert "error" not in p and p["memory"]["params"] < p["param_bytes_total"] / 32
