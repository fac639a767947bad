"""launch.train end to end in subprocesses: one-line errors and exit statuses, kill -9 and resume,
checkpoint fallback over broken and corrupt steps, the workdir's config as the contract of a
resume."""

import hashlib
import json
import os
import pathlib
import shutil
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
  return [
    sys.executable,
    "-m",
    "launch.train",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    "--config.train.progress=False",
    *overrides,
  ]


def _run(workdir, *overrides, devices=1, timeout=300):
  return subprocess.run(
    _cmd(workdir, *overrides),
    cwd=REPO,
    env=_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]


@pytest.mark.parametrize(
  "override,message,devices",
  [
    ("--config.train.stepz=3", "stepz", 1),
    (
      "--config.mesh.ici=(3,1,1)",
      "config.mesh: data×fsdp×tensor = 3×1×1 = 3 devices, but 1 are available",
      1,
    ),
    (
      "--config.data.path=/nonexistent/corpus.jsonl",
      "error: data file not found: /nonexistent/corpus.jsonl",
      1,
    ),
    (
      "--config.model.num_heads=3",
      "error: invalid model config: model.head_dim=None: d_model=64 is not divisible",
      1,
    ),
    ("--config.optim.lr=-1e-3", "error: config.optim.lr=-0.001: must be a number > 0", 1),  # F2
    (
      "--config.train.batch_size=6",
      "error: config.train.batch_size=6 is not divisible by the data-parallel size 4 (data 4)",
      4,
    ),  # F3
    (
      "--config.train.accum_steps=0",
      "error: config.train.accum_steps=0: must be an integer ≥ 1",
      1,
    ),  # F4
    (
      "--config.train.batch_size=0",
      "error: config.train.batch_size=0: must be an integer ≥ 1",
      1,
    ),  # F4
  ],
)
def test_bad_input_fails_with_one_line(tmp_path, override, message, devices):
  t0 = time.perf_counter()
  r = _run(tmp_path / "w", override, devices=devices)
  assert r.returncode == 2, r.stderr[-2000:]
  err_lines = _error_lines(r.stderr)
  assert len(err_lines) == 1, r.stderr[-2000:]
  assert message in err_lines[0]
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()  # nothing written for a refused run
  assert time.perf_counter() - t0 < 60


def test_workdir_that_is_a_file_fails_with_one_line(tmp_path):
  """F5 (a workdir that is not writable: test_workdir.py, which can fake it for root too)."""
  (tmp_path / "w").write_text("not a directory")
  r = _run(tmp_path / "w")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert _error_lines(r.stderr) == [f"error: workdir {tmp_path / 'w'} is a file, not a directory"]


def test_verbose_adds_the_traceback(tmp_path):
  r = subprocess.run(
    _cmd(tmp_path / "w", "--config.optim.lr=0", "--verbose"),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 2 and "Traceback" in r.stderr
  assert r.stderr.strip().splitlines()[-1] == "error: config.optim.lr=0.0: must be a number > 0"


def _rows(workdir):
  return [r for r in read_metrics(workdir) if "loss" in r]


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
  steps = [
    "--config.train.steps=40",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=0",
  ]
  ref, crash = tmp_path / "ref", tmp_path / "crash"
  assert _run(ref, *steps).returncode == 0

  proc = subprocess.Popen(
    _cmd(crash, *steps), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
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
  logged = [row["step"] for row in _rows(crash)]
  assert logged == list(range(1, 41))  # each step once (F10): the re-run steps replace
  starts = [row for row in read_metrics(crash) if row.get("event") == "start"]
  assert starts[-1]["resumed_from"] == starts[-1]["step"] == last_ckpt
  resumed = starts[-1]["step"]
  rows = read_metrics(crash)
  after = [row for row in rows[rows.index(starts[-1]) + 1 :] if "loss" in row]
  assert after[0]["step"] == resumed + 1  # first step after restart = checkpoint + 1
  ref_rows = {row["step"]: row for row in _rows(ref)}
  for row in after:  # same batches and same losses from there on
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
  task = lm.make_spec(cfg)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    return jax.device_get(checkpoint.load_params(workdir, abs_params))


TEN = ("--config.train.steps=10", "--config.train.checkpoint_every=5")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 10-step run with checkpoints 5 and 10; tests take copies."""
  w = tmp_path_factory.mktemp("trained") / "w"
  r = _run(w, *TEN)
  assert r.returncode == 0, r.stderr[-3000:]
  return w


def _copy(trained, tmp_path):
  w = tmp_path / "w"
  shutil.copytree(trained, w)
  return w


def _digest(workdir):
  """Every file under a workdir, with a hash of its bytes."""
  return {
    str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest()
    for p in sorted(pathlib.Path(workdir).rglob("*"))
    if p.is_file()
  }


def _largest_params_file(step_dir):
  return max(
    (p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
    key=lambda p: p.stat().st_size,
  )


def test_truncated_newest_checkpoint_falls_back(trained, tmp_path):
  w = _copy(trained, tmp_path)
  newest = w / "checkpoints" / "10"
  files = sorted(
    (p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0 and "params" in str(p)),
    key=lambda p: -p.stat().st_size,
  )
  assert files
  with open(files[0], "r+b") as f:  # truncate the largest parameter data file
    f.truncate(files[0].stat().st_size // 3)
  r = _run(w, "--config.train.steps=12", "--config.train.checkpoint_every=5")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 10" in r.stderr and "falling back" in r.stderr, r.stderr[-3000:]
  assert "Traceback" not in r.stderr  # orbax's echoes of the failed reads are dropped
  starts = [row for row in read_metrics(w) if row.get("event") == "start"]
  assert starts[-1]["resumed_from"] == 5


def test_flipped_bytes_in_the_newest_checkpoint_fall_back(trained, tmp_path):
  """F1: 16 bytes flipped inside a parameter data file read back as other numbers without an error
  from orbax; the content checksum finds it, the step is skipped with the reason and the previous
  one used."""
  w = _copy(trained, tmp_path)
  data = _largest_params_file(w / "checkpoints" / "10")
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
  data.write_bytes(bytes(raw))
  r = _run(w, "--config.train.steps=12", "--config.train.checkpoint_every=5")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 10" in r.stderr and "checksum mismatch in ['params']" in r.stderr, (
    r.stderr[-3000:]
  )
  assert "falling back" in r.stderr
  starts = [row for row in read_metrics(w) if row.get("event") == "start"]
  assert starts[-1]["resumed_from"] == 5
  assert [row["step"] for row in _rows(w)] == list(
    range(1, 13)
  )  # F10: steps 6..10 once, from this run


def test_no_readable_checkpoint_ends_with_one_line(trained, tmp_path):
  """F9: every step broken (a data file deleted from each): one line, status 4, nothing changed on
  disk."""
  w = _copy(trained, tmp_path)
  for step in (5, 10):
    _largest_params_file(w / "checkpoints" / str(step)).unlink()
  before = _digest(w)
  r = _run(w, *TEN)
  assert r.returncode == 4, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
  err = _error_lines(r.stderr)
  assert len(err) == 1 and err[0].startswith(
    f"error: no readable checkpoint in {w / 'checkpoints'}"
  ), err
  assert "step 10: " in err[0] and "step 5: " in err[0]
  assert _digest(w) == before


@pytest.mark.parametrize(
  "overrides,keys",
  [
    (
      ("--config.model.activation=relu", "--config.model.attn_scale=one"),  # F6
      "model.activation ('gelu_tanh' → 'relu'), model.attn_scale ('default' → 'one')",
    ),
    (("--config.model.d_model=128",), "model.d_model (64 → 128)"),  # F7
    (
      ("--config.data.val_documents=3", "--config.train.allow_changes=True"),
      "data.val_documents (2 → 3)",
    ),
  ],
)
def test_resume_with_another_config_is_refused_and_writes_nothing(
  trained, tmp_path, overrides, keys
):
  w = _copy(trained, tmp_path)
  before = _digest(w)
  r = _run(w, *TEN, *overrides)
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  err = _error_lines(r.stderr)
  assert len(err) == 1 and f"cannot change on resume: {keys}." in err[0], err
  assert _digest(w) == before  # config.json and run.json still the run's own


def test_state_preserving_changes_resume_only_with_the_flag(trained, tmp_path):
  w = _copy(trained, tmp_path)
  before = _digest(w)
  r = _run(
    w, "--config.train.steps=12", "--config.train.checkpoint_every=5", "--config.optim.lr=1e-3"
  )
  assert r.returncode == 2
  assert _error_lines(r.stderr) == [
    f"error: workdir {w} holds a run with another config: optim.lr (0.003 → 0.001); "
    "rerun with --config.train.allow_changes=True to continue it with these values"
  ]
  assert _digest(w) == before
  r = _run(
    w,
    "--config.train.steps=12",
    "--config.train.checkpoint_every=5",
    "--config.optim.lr=1e-3",
    "--config.train.allow_changes=True",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  start = [row for row in read_metrics(w) if row.get("event") == "start"][-1]
  assert start["resumed_from"] == 10
  assert start["config_changes"] == {
    "optim.lr": [0.003, 0.001],
    "train.allow_changes": [False, True],
    "train.steps": [10, 12],
  }
  assert json.loads((w / "config.json").read_text())["optim"]["lr"] == 0.001  # the record follows


def test_non_finite_loss_ends_with_one_line_saying_what_is_on_disk(tmp_path):
  """F8: status 3, no traceback, and no "last good checkpoint" where none was saved."""
  w = tmp_path / "w"
  r = _run(
    w,
    "--config.optim.lr=1e6",
    "--config.train.checkpoint_every=1000",
    "--config.train.eval_every=0",
  )
  assert r.returncode == 3, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  err = _error_lines(r.stderr)
  assert len(err) == 1 and err[0].startswith("error: non-finite loss or gradient at step "), err
  assert err[0].endswith(
    f"no checkpoint on disk in {w / 'checkpoints'} (none was saved before this step)"
  )
  assert "last good" not in r.stderr
  assert not (w / "checkpoints").exists() or not any((w / "checkpoints").iterdir())


def test_metrics_are_rewritten_from_the_resumed_step(trained, tmp_path):
  """F10: a run that logged steps 6..10 but whose checkpoint 10 never reached the disk (killed
  during the save) resumes at 5; metrics.jsonl then holds each step once, the later ones from the
  resumed run."""
  w = _copy(trained, tmp_path)
  shutil.rmtree(w / "checkpoints" / "10")
  old = {row["step"]: row["time"] for row in _rows(w)}
  r = _run(w, *TEN)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = _rows(w)
  assert [row["step"] for row in rows] == list(range(1, 11))
  assert all(row["time"] == old[row["step"]] for row in rows if row["step"] <= 5)
  assert all(row["time"] > old[10] for row in rows if row["step"] > 5)
  evals = [row["step"] for row in read_metrics(w) if "eval/loss" in row]
  assert evals == [10]


def test_sigterm_saves_one_checkpoint_at_the_stop_step(tmp_path):
  w = tmp_path / "w"
  proc = subprocess.Popen(
    _cmd(
      w,
      "--config.train.steps=100000",
      "--config.train.checkpoint_every=1000",
      "--config.train.eval_every=0",
    ),
    cwd=REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
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


def test_print_config_shows_every_resolved_key_with_its_doc():
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    "--config=configs/icl_superposition/mod_add.py:smoke",
    "--print_config",
    "--config.train.steps=7",
  ]
  r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert any(
    line.startswith("train.steps = 7 ") and line.endswith("# optimizer steps") for line in lines
  )
  assert any(line.startswith("icl.family = 'mod_add'") for line in lines)
  bad = subprocess.run(
    cmd + ["--config.optim.lr=-1.0"],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode == 2 and "config.optim.lr=-1.0" in bad.stderr


def test_sample_from_a_trained_workdir(tmp_path):
  from configs.lm import tiny
  from flax import nnx
  from superpose import nn
  from superpose.data.tokenizers import ByteTokenizer
  from superpose.train import config as config_lib, state as state_lib
  from superpose.train.mesh import make_mesh

  w = tmp_path / "w"
  assert _run(w, "--config.train.steps=30").returncode == 0
  cmd = [
    sys.executable,
    "-m",
    "launch.sample",
    f"--workdir={w}",
    "--prompt=ROMEO:",
    "--prompt=To be, or",
    "--max_new_tokens=12",
    "--temperature=0",
  ]
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
    graphdef, abs_params, _ = state_lib.split_model(
      lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0)), mesh
    )
    params = checkpoint.load_params(w, abs_params)
    logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x).logits_BTV)
    for prompt, out in zip(["ROMEO:", "To be, or"], outs):
      ids = [tok.bos_id] + tok.encode(prompt)
      for _ in range(12):
        padded = np.zeros((1, cfg.max_seq_len), np.int32)
        padded[0, : len(ids)] = ids
        ids.append(int(np.argmax(logits(params, padded)[0, len(ids) - 1])))
      assert out[:-1] == prompt + tok.decode(ids[1 + len(prompt) :])  # print() added one "\n"
