"""Two processes × four CPU devices (launch/multiprocess.sh, jax.distributed on localhost, gloo)
against one process × eight devices: the same 8-device mesh, so the same losses up to float
rounding.

The processes record, per step, which rows of the global batch their host data fills and a hash of
each row (``SUPERPOSE_RECORD_BATCHES``): process p must fill rows [4p, 4p + 4) with exactly the rows
that the one-process run reads there, so each process reads only its own slice. Also: resume of a
two-process checkpoint by two processes, SIGTERM to one process, and the launcher's handling of
failures and signals (with a stand-in interpreter). About 85 s on two cores.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from superpose.train import checkpoint
from superpose.train.loop import RECORD_BATCHES_ENV
from superpose.train.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch" / "multiprocess.sh"
SMOKE = f"{REPO}/configs/lm/tiny.py:smoke"
N = 4  # steps of the first run; the reference and the resumed run go to 2N
# A constant learning rate after a short warmup: the schedule does not depend on train.steps, so a
# run to N continued to 2N sees the learning rates of a run to 2N.
COMMON = [
  "--config.train.progress=False",
  "--config.optim.schedule=constant",
  "--config.optim.warmup_steps=2",
  f"--config.train.checkpoint_every={N}",
  f"--config.train.eval_every={N}",
]
RTOL = 1e-6


def _env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env[RECORD_BATCHES_ENV] = "1"
  return env


def _single(workdir, *overrides, timeout=300):
  """One process over eight CPU devices."""
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    *COMMON,
    *overrides,
  ]
  r = subprocess.run(
    cmd,
    cwd=REPO,
    env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _start(workdir, *overrides, stderr=subprocess.PIPE):
  """launch/multiprocess.sh: two processes of four devices; its own session, so that a failed test
  can kill it with its children."""
  cmd = [
    "bash",
    str(LAUNCHER),
    "--processes=2",
    "--devices=4",
    "--quiet",
    f"--python={sys.executable}",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    *COMMON,
    *overrides,
  ]
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=stderr,
    text=True,
    start_new_session=True,
  )


def _finish(proc, timeout=300):
  try:
    _, err = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  return proc.returncode, err


def _two(workdir, *overrides, timeout=300):
  rc, err = _finish(_start(workdir, *overrides), timeout)
  assert rc == 0, err[-3000:] + _logs(workdir)
  return err


def _logs(workdir) -> str:
  out = ""
  for p in sorted((pathlib.Path(workdir) / "logs").glob("process_*.log")):
    out += f"\n--- {p.name} (tail)\n" + "\n".join(p.read_text().splitlines()[-30:])
  return out


def _losses(workdir, key="loss") -> dict[int, float]:
  return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


def _batches(workdir) -> dict[tuple[int, int], dict]:
  """(step, process) → the rows that process filled at that step and their hashes (the last record
  of a step wins: a resumed run records its steps again)."""
  out = {}
  for p in (pathlib.Path(workdir) / "debug").glob("batches_process_*.jsonl"):
    for line in p.read_text().splitlines():
      r = json.loads(line)
      out[r["step"], r["process"]] = r
  return out


def _check_batches(two_dir, ref_dir, steps):
  two, ref = _batches(two_dir), _batches(ref_dir)
  for step in steps:
    whole = ref[step, 0]
    assert whole["processes"] == 1 and whole["rows"] == list(range(8))
    for p in (0, 1):
      mine = two[step, p]
      assert mine["processes"] == 2
      assert mine["rows"] == list(range(4 * p, 4 * p + 4)), (step, p, mine["rows"])
      assert mine["row_hashes"] == whole["row_hashes"][4 * p : 4 * p + 4], (step, p)


def _max_delta(a: dict, b: dict, steps) -> float:
  assert set(steps) <= set(a) and set(steps) <= set(b), (sorted(a), sorted(b))
  np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], rtol=RTOL)
  return max(abs(a[s] - b[s]) for s in steps)


def _params(step_dir):
  from configs.lm import tiny
  from superpose.train import config as config_lib, lm, state as state_lib
  from superpose.train.mesh import make_mesh

  task = lm.make_spec(config_lib.to_dict(tiny.get_config("smoke")))
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    return jax.device_get(checkpoint.load_params(step_dir, abs_params))


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_two_processes_equal_one_process_then_resume(tmp_path, record_property):
  """(a) N steps on 2 processes = the first N steps on 1 process, each process reading only its
      rows;
  (b) the 2-process checkpoint at N, resumed by 2 processes to 2N = 1 process to 2N. One test, so
  that pytest-xdist does not run the shared one-process reference twice."""
  ref, two = tmp_path / "one_process", tmp_path / "two_processes"
  _single(ref, f"--config.train.steps={2 * N}")
  _two(two, f"--config.train.steps={N}")

  run = json.loads((two / "run.json").read_text())
  assert run["devices"]["processes"] == 2 and run["devices"]["count"] == 8
  assert run["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  for p in (0, 1):
    log = (two / "logs" / f"process_{p}.log").read_text()
    assert f"jax.distributed: process {p} of 2, 4 local / 8 global devices" in log
  first = range(1, N + 1)
  delta = _max_delta(_losses(two), _losses(ref), first)
  eval_delta = _max_delta(_losses(two, "eval/loss"), _losses(ref, "eval/loss"), [N])
  _check_batches(two, ref, first)
  # The checkpoint that the two processes wrote together holds the one-process run's parameters.
  assert _steps(two) == [N]
  for a, b in zip(
    jax.tree.leaves(_params(two / "checkpoints" / str(N))),
    jax.tree.leaves(_params(ref / "checkpoints" / str(N))),
  ):
    # Adam turns last-bit gradient differences of near-zero parameters into ~lr-sized steps: 1.3e-6
    # seen on an AVX2-only host; a wrong row or shard would differ by the size of the parameters (≥
    # 1e-2).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  _two(two, f"--config.train.steps={2 * N}")
  starts = [r for r in read_metrics(two) if r.get("event") == "start"]
  assert [s["resumed_from"] for s in starts] == [-1, N]
  second = range(N + 1, 2 * N + 1)
  delta = max(delta, _max_delta(_losses(two), _losses(ref), second))
  eval_delta = max(
    eval_delta, _max_delta(_losses(two, "eval/loss"), _losses(ref, "eval/loss"), [2 * N])
  )
  _check_batches(two, ref, second)
  assert _steps(two) == [N, 2 * N]
  record_property("max_abs_loss_delta", delta)
  print(
    f"2 processes vs 1, steps 1..{2 * N} (resumed at {N}): max |Δ loss| {delta:.3g}, "
    f"max |Δ eval loss| {eval_delta:.3g}"
  )


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
  w = tmp_path / "w"
  err_path = tmp_path / "launcher.err"
  with open(err_path, "w") as err:
    proc = _start(
      w,
      "--config.train.steps=100000",
      "--config.train.checkpoint_every=1000",
      "--config.train.eval_every=0",
      stderr=err,
    )
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and max(_losses(w), default=0) < 3:
      time.sleep(0.05)
    assert proc.poll() is None, err_path.read_text()[-3000:] + _logs(w)
    pids = re.search(r"\(pids (\d+) (\d+)\)", err_path.read_text())
    os.kill(
      int(pids.group(2)), signal.SIGTERM
    )  # process 1 only; neither process 0 nor the launcher
    rc, _ = _finish(proc, timeout=180)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  err = err_path.read_text()
  assert rc == 0, err[-3000:] + _logs(w)  # the launcher's status: 0 only when both exited 0
  assert "2 processes finished, status 0" in err
  stops = {
    p: re.findall(
      r"stopping at step (\d+) on SIGTERM", (w / "logs" / f"process_{p}.log").read_text()
    )
    for p in (0, 1)
  }
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  stop = int(stops[0][0])
  assert _steps(w) == [stop]
  assert max(_losses(w)) == stop and 3 <= stop < 1000


@pytest.mark.slow
def test_a_dead_peer_ends_the_others_with_one_line(tmp_path):
  """kill -9 of process 1: process 0, waiting in a collective, notices within config.peer_timeout_s
  that its peer shows no sign of life and exits with status 5 and one line naming the newest
  checkpoint (instead of jax's abort with a C++ stack trace after the 100 s heartbeat timeout)."""
  w = tmp_path / "w"
  err_path = tmp_path / "launcher.err"
  with open(err_path, "w") as err:
    proc = _start(
      w,
      "--config.train.steps=100000",
      "--config.train.checkpoint_every=3",
      "--config.train.eval_every=0",
      "--config.peer_timeout_s=10",
      stderr=err,
    )
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and max(_losses(w), default=0) < 5:
      time.sleep(0.05)
    assert proc.poll() is None, err_path.read_text()[-3000:] + _logs(w)
    pids = re.search(r"\(pids (\d+) (\d+)\)", err_path.read_text())
    os.kill(int(pids.group(2)), signal.SIGKILL)
    t0 = time.time()
    rc, _ = _finish(proc, timeout=180)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  err = err_path.read_text()
  assert rc == 137, err[-3000:]  # the launcher reports the first failure: the kill
  assert "process 0 exited with status 5" in err, err[-3000:] + _logs(w)
  assert time.time() - t0 < 60  # not jax's 100 s heartbeat
  last = (w / "logs" / "process_0.log").read_text().strip().splitlines()[-1]
  newest = _steps(w)[-1]
  assert re.fullmatch(
    re.escape("error: process 0: process 1 of 2 has shown no sign of life for ")
    + r"1\d s"
    + re.escape(
      f" (dead or hung), so this process stops; the newest checkpoint on disk is step "
      f"{newest} ({w / 'checkpoints'}); rerun every process to resume"
    ),
    last,
  ), last
  assert "Traceback" not in (w / "logs" / "process_0.log").read_text()


# --- the launcher's own mechanics, with a stand-in interpreter (no JAX): fast.

FAKE_PYTHON = """#!/usr/bin/env bash
case "$FAKE_MODE" in
  fail) trap 'echo "stopped"; exit 143' TERM
        # Give the others time to install their trap before process 1 fails (slow, loaded machines).
        if [[ $JAX_PROCESS_ID == 1 ]]; then sleep 2; exit 3; fi ;;
  clean) trap 'echo "stopped"; exit 0' TERM ;;
esac
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS: $XLA_FLAGS | $*"
for i in $(seq 600); do sleep 0.1; done
exit 9
"""


def _fake(tmp_path, mode, *args):
  py = tmp_path / "python"
  py.write_text(FAKE_PYTHON)
  py.chmod(0o755)
  cmd = [
    "bash",
    str(LAUNCHER),
    "-n",
    "3",
    "-d",
    "2",
    "--quiet",
    "--port=12345",
    f"--python={py}",
    f"--workdir={tmp_path / 'w'}",
    *args,
  ]
  return subprocess.Popen(
    cmd,
    env=dict(os.environ, FAKE_MODE=mode),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )


def test_launcher_stops_the_others_when_one_fails(tmp_path):
  t0 = time.time()
  rc, err = _finish(_fake(tmp_path, "fail", "--config.x=1"), timeout=60)
  assert rc == 3, err  # the failed process's status
  assert "process 1 exited with status 3" in err and "stopping the other processes" in err
  logs = [(tmp_path / "w" / "logs" / f"process_{i}.log").read_text() for i in range(3)]
  assert "stopped" in logs[0] and "stopped" in logs[2]  # SIGTERM reached the survivors
  assert time.time() - t0 < 30
  first = logs[0].splitlines()[0]
  assert "process 0 of 3 at 127.0.0.1:12345" in first
  assert (
    "--xla_force_host_platform_device_count=2" in first
    and "--xla_force_host_platform_device_count=8" not in first
  )
  assert first.endswith(
    "-m launch.train --config.x=1 --workdir=" + str(tmp_path / "w") + " --config.distributed=true"
  )


def test_launcher_forwards_sigterm_and_exits_zero_after_a_clean_stop(tmp_path):
  proc = _fake(tmp_path, "clean")
  logs = [tmp_path / "w" / "logs" / f"process_{i}.log" for i in range(3)]
  deadline = time.time() + 30
  while time.time() < deadline and not all(p.exists() and p.read_text() for p in logs):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  rc, err = _finish(proc, timeout=60)
  assert rc == 0, err
  assert all(p.read_text().splitlines()[-1] == "stopped" for p in logs)
