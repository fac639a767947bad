"""A new project needs no edit outside its own files: the toy trainer + config (≤ 60 lines) train,
resume, checkpoint, plan and sample through the shared launchers (WORKSPACE.md, "How to add a
project")."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).parent


def _run(*args, devices=1):
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
  }
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


def test_toy_project_trains_resumes_plans_and_samples(tmp_path, check_sampling):
  assert (
    sum(len(f.read_text().splitlines()) for f in (HERE / "trainer.py", HERE / "config.py")) <= 60
  )
  w = tmp_path / "toy"
  r = _run(
    "launch.train",
    "--config=tests/toy_project/config.py",
    f"--workdir={w}",
    "--config.train.steps=3",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(
    "launch.train", "--config=tests/toy_project/config.py", f"--workdir={w}"
  )  # resumes at step 4
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
  assert [x["resumed_from"] for x in rows if x.get("event") == "start"] == [-1, 3]
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6
  assert [x["step"] for x in rows if "eval/loss" in x] == [3, 6] and json.loads(
    (w / "config.json").read_text()
  )["toy"]
  plan = _run("launch.plan", "--config=tests/toy_project/config.py", "--devices=8", "--ici=2,2,2")
  assert plan.returncode == 0 and "tests.toy_project.trainer" in plan.stdout, plan.stderr[-3000:]
  check_sampling(w, "abcabcab")
