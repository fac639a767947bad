"""launch.train end to end in subprocesses: one-line errors, kill -9 and resume, checkpoint fallback."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from superpose.train import checkpoint
from superpose.train.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOKE = f"{REPO}/configs/lm/tiny.py:smoke"


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, *overrides):
  return [sys.executable, "-m", "launch.train", f"--config={SMOKE}", f"--workdir={workdir}",
          "--config.train.progress=False", *overrides]


def _run(workdir, *overrides, devices=1, timeout=300):
  return subprocess.run(_cmd(workdir, *overrides), cwd=REPO, env=_env(devices), capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.parametrize("override,message", [
    ("--config.train.stepz=3", "stepz"),
    ("--config.mesh.ici=(3,1,1)", "config.mesh: data×fsdp×tensor = 3×1×1 = 3 devices, but 1 are available"),
    ("--config.data.path=/nonexistent/corpus.jsonl", "error: data file not found: /nonexistent/corpus.jsonl"),
    ("--config.model.num_heads=3", "error: "),
])
def test_bad_input_fails_with_one_line(tmp_path, override, message):
  t0 = time.perf_counter()
  r = _run(tmp_path / "w", override)
  assert r.returncode != 0
  err_lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert len(err_lines) == 1, r.stderr[-2000:]
  assert message in err_lines[0]
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())
  assert time.perf_counter() - t0 < 60


def _rows(workdir):
  return [r for r in read_metrics(workdir) if "loss" in r]


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
  steps = ["--config.train.steps=40", "--config.train.checkpoint_every=10", "--config.train.eval_every=0"]
  ref, crash = tmp_path / "ref", tmp_path / "crash"
  assert _run(ref, *steps).returncode == 0

  proc = subprocess.Popen(_cmd(crash, *steps), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(r["step"] >= 23 for r in _rows(crash)):
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  last_ckpt = max(int(p.name) for p in (crash / "checkpoints").iterdir() if p.name.isdigit())
  assert 10 <= last_ckpt < 40

  r = _run(crash, *steps)
  assert r.returncode == 0, r.stderr[-3000:]
  starts = [row for row in read_metrics(crash) if row.get("event") == "start"]
  assert starts[-1]["resumed_from"] == starts[-1]["step"] == last_ckpt
  resumed = starts[-1]["step"]
  rows = read_metrics(crash)
  after = [row for row in rows[rows.index(starts[-1]) + 1:] if "loss" in row]
  assert after[0]["step"] == resumed + 1                  # first step after restart = checkpoint + 1
  ref_rows = {row["step"]: row for row in _rows(ref)}
  for row in after:                                       # same batches and same losses from there on
    assert row["batch_hash"] == ref_rows[row["step"]]["batch_hash"]
    assert row["loss"] == ref_rows[row["step"]]["loss"]

  # Final parameters are bit-identical to the uninterrupted run's.
  p_ref = _restore_params(ref)
  p_crash = _restore_params(crash)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_crash)):
    np.testing.assert_array_equal(a, b)


def _restore_params(workdir):
  from configs.lm import tiny
  from superpose.train import config as config_lib, lm, state as state_lib
  from superpose.train.mesh import make_mesh
  cfg = config_lib.to_dict(tiny.get_config("smoke"))
  task = lm.LMTask(cfg)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    return jax.device_get(checkpoint.load_params(workdir, abs_params))


def test_truncated_newest_checkpoint_falls_back(tmp_path):
  w = tmp_path / "w"
  assert _run(w, "--config.train.steps=10", "--config.train.checkpoint_every=5").returncode == 0
  newest = w / "checkpoints" / "10"
  files = sorted((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0 and "params" in str(p)),
                 key=lambda p: -p.stat().st_size)
  assert files
  with open(files[0], "r+b") as f:   # truncate the largest parameter data file
    f.truncate(files[0].stat().st_size // 3)
  r = _run(w, "--config.train.steps=12", "--config.train.checkpoint_every=5")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 10" in r.stderr and "falling back" in r.stderr, r.stderr[-3000:]
  starts = [row for row in read_metrics(w) if row.get("event") == "start"]
  assert starts[-1]["resumed_from"] == 5


def test_sigterm_saves_one_checkpoint_at_the_stop_step(tmp_path):
  w = tmp_path / "w"
  proc = subprocess.Popen(_cmd(w, "--config.train.steps=100000", "--config.train.checkpoint_every=1000",
                               "--config.train.eval_every=0"),
                          cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not any(r["step"] >= 5 for r in _rows(w)):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())
  last_logged = max(r["step"] for r in _rows(w))
  assert steps == [last_logged] and 5 <= last_logged < 1000
  assert f"stopping at step {last_logged} on SIGTERM" in err


def test_sample_from_a_trained_workdir(tmp_path):
  from configs.lm import tiny
  from flax import nnx
  from superpose import nn
  from superpose.data.tokenizers import ByteTokenizer
  from superpose.train import config as config_lib, state as state_lib
  from superpose.train.mesh import make_mesh

  w = tmp_path / "w"
  assert _run(w, "--config.train.steps=30").returncode == 0
  cmd = [sys.executable, "-m", "launch.sample", f"--workdir={w}", "--prompt=ROMEO:", "--prompt=To be, or",
         "--max_new_tokens=12", "--temperature=0"]
  r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  outs = r.stdout.split("-" * 40 + "\n")
  assert outs[0].startswith("ROMEO:") and outs[1].startswith("To be, or")

  # Greedy decoding through the KV cache (batched prompts of different lengths) equals greedy
  # decoding by repeated full forwards of one prompt at a time.
  tok = ByteTokenizer()
  cfg = nn.from_dict(config_lib.to_dict(tiny.get_config("smoke"))["model"])
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    graphdef, abs_params, _ = state_lib.split_model(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    params = checkpoint.load_params(w, abs_params)
    logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x).logits_BTV)
    for prompt, out in zip(["ROMEO:", "To be, or"], outs):
      ids = [tok.bos_id] + tok.encode(prompt)
      for _ in range(12):
        padded = np.zeros((1, cfg.max_seq_len), np.int32)
        padded[0, :len(ids)] = ids
        ids.append(int(np.argmax(logits(params, padded)[0, len(ids) - 1])))
      assert out[:-1] == prompt + tok.decode(ids[1 + len(prompt):])   # print() added one "\n"
