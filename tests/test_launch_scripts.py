"""The launch scripts' --dry-run output: every command they would run, one per line, and nothing
run."""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TRAIN = ["--config", "configs/lm/tiny.py", "--workdir", "/mnt/shared/run"]
PERF_FLAGS = [
  "--xla_gpu_enable_latency_hiding_scheduler=true",
  "--xla_gpu_enable_triton_gemm=false",
  "--xla_gpu_all_reduce_combine_threshold_bytes=67108864",
  "--xla_gpu_enable_pipelined_all_gather=true",
  "--xla_gpu_enable_while_loop_double_buffering=true",
]


@pytest.fixture
def no_tools(tmp_path):
  """A PATH whose gcloud, nvidia-smi and tar only leave a mark: a dry run must not call any of
  them."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "nvidia-smi", "tar"):
    (bin_dir / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/called-{tool}\n")
    (bin_dir / tool).chmod(0o755)
  yield {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
  assert not list(tmp_path.glob("called-*")), "a dry run called an external tool"
  assert not list(tmp_path.glob("*.tgz"))


def _run(script, *args, env=None, check=True):
  r = subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    env={**os.environ, "PYTHON": sys.executable, **(env or {})},
  )
  if check:
    assert r.returncode == 0, r.stderr
  return r


def _dry(script, *args, env=None):
  return _run(script, "--dry-run", *args, env=env).stdout.splitlines()


def _remote(line):
  """The --command=... of a gcloud ssh line."""
  return next(
    w.removeprefix("--command=")
    for w in shlex.split(line.removesuffix(" &"))
    if w.startswith("--command=")
  )


def _env_of(line):
  """KEY=VALUE words of an `env K=V ... program` line."""
  words = shlex.split(line)
  assert words[0] == "env", line
  return dict(w.split("=", 1) for w in words[1 : words.index(sys.executable)])


@pytest.mark.parametrize("script", ["tpu.sh", "gpu.sh", "multiprocess.sh"])
def test_help(script):
  r = _run(script, "--help")
  assert r.stdout.startswith("Usage: launch/" + script) and "--dry-run" in r.stdout


# --- tpu.sh


def test_tpu_all_creates_copies_installs_and_runs_on_every_worker(no_tools):
  env = {**no_tools, "TPU_NAME": "lm", "TPU_ZONE": "europe-west4-a"}
  lines = _dry(
    "tpu.sh", "--project", "proj", "--accelerator", "v4-32", "all", "--", *TRAIN, env=env
  )
  where = "--zone=europe-west4-a --project=proj"
  assert (
    lines[0] == f"gcloud compute tpus tpu-vm create lm {where} --accelerator-type=v4-32 "
    "--version=tpu-ubuntu2204-base"
  )
  assert lines[1].startswith(
    f"tar -czf {no_tools['TMPDIR']}/lm-tree.tgz -C {REPO} --exclude=./.git"
  )
  assert (
    lines[2]
    == f"gcloud compute tpus tpu-vm scp {no_tools['TMPDIR']}/lm-tree.tgz lm:superpose.tgz {where} "
    "--worker=all"
  )
  ssh = [l for l in lines if " ssh " in l]
  assert len(lines) == 6 and ssh == lines[3:]
  for line in ssh:
    assert shlex.split(line)[:8] == [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "lm",
      *where.split(),
    ]
    assert shlex.split(line)[8] == "--worker=all" and shlex.split(line)[9].startswith("--command=")
  assert (
    _remote(ssh[0])
    == "mkdir -p superpose && tar -xzf superpose.tgz -C superpose && rm superpose.tgz"
  )
  assert "pip install -q -e '.[tpu]' -c constraints/py311.txt" in _remote(ssh[1])
  assert "python3.11 -m venv .venv" in _remote(ssh[1])
  assert _remote(ssh[2]) == "cd superpose && .venv/bin/python -m launch.train " + " ".join(TRAIN)


def test_tpu_multislice_queued_resource_with_megascale_variables(no_tools):
  lines = _dry(
    "tpu.sh",
    "--name",
    "ms",
    "--accelerator",
    "v5litepod-16",
    "--slices",
    "2",
    "--env",
    "FOO=1",
    "all",
    "--",
    *TRAIN,
    env=no_tools,
  )
  qr = "gcloud compute tpus queued-resources"
  assert lines[0] == (
    f"{qr} create ms --zone=us-central2-b --accelerator-type=v5litepod-16 "
    "--runtime-version=v2-alpha-tpuv5-lite --node-count=2 --node-prefix=ms"
  )
  assert lines[1] == f"{qr} describe ms --zone=us-central2-b '--format=value(state.state)'"
  for line in lines:
    if " ssh " in line or " scp " in line:
      assert "--worker=all" in line and (
        " --node=all " in line or " --node=0 " in line or " --node=1 " in line
      )
  assert any(l.startswith(f"{qr} scp ") and "--node=all --worker=all" in l for l in lines)
  runs = [l for l in lines if l.endswith(" &")]
  assert len(runs) == 2 and lines[-1] == "wait"
  assert lines[-4].startswith("COORDINATOR_IP=$(gcloud compute tpus tpu-vm describe ms-0 ")
  for slice_id, line in enumerate(runs):
    assert f" --node={slice_id} --worker=all " in line
    words = shlex.split(_remote(line))
    assert words[:3] == ["cd", "superpose", "&&"] and words[3] == "env"
    env = dict(w.split("=", 1) for w in words[4 : words.index(".venv/bin/python")])
    assert env == {
      "MEGASCALE_COORDINATOR_ADDRESS": "$COORDINATOR_IP:8080",
      "MEGASCALE_PORT": "8080",
      "MEGASCALE_NUM_SLICES": "2",
      "MEGASCALE_SLICE_ID": str(slice_id),
      "FOO": "1",
    }
    assert words[words.index(".venv/bin/python") :] == [
      ".venv/bin/python",
      "-m",
      "launch.train",
      *TRAIN,
      "--config.mesh.dcn=(2,1,1)",
    ]


def test_tpu_keeps_a_dcn_mesh_given_by_the_user(no_tools):
  lines = _dry(
    "tpu.sh", "--slices", "2", "run", "--", *TRAIN, "--config.mesh.dcn=(1,2,1)", env=no_tools
  )
  for line in lines[1:-1]:
    assert _remote(line).count("--config.mesh.dcn") == 1 and "(1,2,1)" in _remote(line)


@pytest.mark.parametrize(
  "args,expected",
  [
    (["delete"], "gcloud compute tpus tpu-vm delete t --zone=us-central2-b --quiet"),
    (
      ["--queued", "delete"],
      "gcloud compute tpus queued-resources delete t --zone=us-central2-b --force --quiet",
    ),
    (
      ["--queued", "--spot", "create"],
      "gcloud compute tpus queued-resources create t --zone=us-central2-b "
      "--accelerator-type=v4-8 --runtime-version=tpu-ubuntu2204-base --spot --node-id=t",
    ),
    (
      ["--accelerator", "v6e-8", "create"],
      "gcloud compute tpus tpu-vm create t --zone=us-central2-b "
      "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e",
    ),
    (["status"], "gcloud compute tpus tpu-vm describe t --zone=us-central2-b"),
  ],
)
def test_tpu_single_commands(no_tools, args, expected):
  assert _dry("tpu.sh", "--name", "t", *args, env=no_tools)[0] == expected


@pytest.mark.parametrize(
  "args",
  [
    ["frobnicate"],
    ["run", "--config", "x"],
    ["--slices", "0", "run"],
    ["--python", "3.9", "install"],
    ["--accelerator", "v9-8", "create"],
    [],
  ],
)
def test_tpu_bad_arguments_fail_before_doing_anything(no_tools, args):
  r = _run("tpu.sh", "--dry-run", *args, env=no_tools, check=False)
  assert r.returncode == 2 and r.stdout == ""


# --- gpu.sh


def test_gpu_one_process_over_all_gpus(no_tools):
  lines = _dry(
    "gpu.sh", "--gpus", "2", *TRAIN, env={**no_tools, "XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
  )
  assert len(lines) == 3
  flags = shlex.split(lines[0].removeprefix("export XLA_FLAGS="))[0].split()
  assert all(f in flags for f in PERF_FLAGS)
  assert flags[-1] == "--xla_dump_to=/tmp/dump"  # the caller's flags come last and win
  assert lines[1] == "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"
  assert lines[2] == f"env CUDA_VISIBLE_DEVICES=0,1 {sys.executable} -m launch.train " + " ".join(
    TRAIN
  )


def test_gpu_one_process_per_gpu_through_jax_distributed(no_tools):
  lines = _dry(
    "gpu.sh",
    "--gpus",
    "0,1,2,3",
    "--per-gpu",
    "--xla-preset",
    "deterministic",
    *TRAIN,
    env=no_tools,
  )
  assert "--xla_gpu_deterministic_ops=true" in lines[0]
  procs = [l for l in lines if l.startswith("env ")]
  assert len(procs) == 4
  coordinators = set()
  for i, line in enumerate(procs):
    env = _env_of(line)
    assert env["CUDA_VISIBLE_DEVICES"] == str(i) and env["JAX_PROCESS_ID"] == str(i)
    assert env["JAX_NUM_PROCESSES"] == "4" and "JAX_PLATFORMS" not in env and "XLA_FLAGS" not in env
    coordinators.add(env["JAX_COORDINATOR_ADDRESS"])
    assert line.endswith(f"--config.distributed=true > /mnt/shared/run/logs/process_{i}.log 2>&1 &")
  assert len(coordinators) == 1


def test_gpu_processes_share_the_gpus_in_blocks(no_tools):
  lines = _dry(
    "gpu.sh",
    "--gpus",
    "4,5,6,7",
    "--processes",
    "2",
    "--xla-preset",
    "none",
    *TRAIN,
    env={**no_tools, "XLA_FLAGS": ""},
  )
  assert not any(l.startswith("export XLA_FLAGS") for l in lines)
  assert [_env_of(l)["CUDA_VISIBLE_DEVICES"] for l in lines if l.startswith("env ")] == [
    "4,5",
    "6,7",
  ]
  assert (
    _run(
      "gpu.sh", "--dry-run", "--gpus", "0,1,2", "--processes", "2", *TRAIN, check=False
    ).returncode
    == 2
  )


def test_gpu_flag_preset_is_known_to_the_installed_xla(no_tools):
  """XLA aborts on an unknown flag; every jaxlib registers the GPU flags, so a CPU run checks
  them."""
  line = _dry("gpu.sh", "--gpus", "1", "--xla-preset", "deterministic", *TRAIN, env=no_tools)[0]
  flags = shlex.split(line.removeprefix("export XLA_FLAGS="))[0]
  r = subprocess.run(
    [sys.executable, "-c", "import jax; jax.numpy.zeros(2).block_until_ready(); print('ok')"],
    env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --- multiprocess.sh


def test_multiprocess_starts_n_cpu_processes_with_their_env(tmp_path):
  w = tmp_path / "w"
  lines = _dry(
    "multiprocess.sh",
    "-n",
    "3",
    "-d",
    "2",
    "--port",
    "4567",
    "--config",
    "configs/lm/tiny.py:smoke",
    f"--workdir={w}",
    "--config.train.steps=3",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1"},
  )
  assert lines[0] == f"mkdir -p {w}/logs"
  assert lines[-2] == f"tail -n +1 -f {w}/logs/process_0.log &" and lines[-1] == "wait"
  procs = lines[1:-2]
  assert len(procs) == 3
  for i, line in enumerate(procs):
    env = _env_of(line)
    assert env == {
      "PYTHONUNBUFFERED": "1",
      "JAX_PLATFORMS": "cpu",
      "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
      "XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2",
      "JAX_COORDINATOR_ADDRESS": "127.0.0.1:4567",
      "JAX_NUM_PROCESSES": "3",
      "JAX_PROCESS_ID": str(i),
    }
    program = shlex.split(line)[len(env) + 1 :]
    assert program == [
      sys.executable,
      "-m",
      "launch.train",
      "--config",
      "configs/lm/tiny.py:smoke",
      "--config.train.steps=3",
      f"--workdir={w}",
      "--config.distributed=true",
      ">",
      f"{w}/logs/process_{i}.log",
      "2>&1",
      "&",
    ]
  assert not w.exists()  # a dry run creates nothing


def test_multiprocess_picks_a_free_port_and_needs_a_workdir(tmp_path):
  lines = _dry("multiprocess.sh", "--quiet", f"--workdir={tmp_path}")
  ports = {_env_of(l)["JAX_COORDINATOR_ADDRESS"] for l in lines if l.startswith("env ")}
  assert len(ports) == 1 and int(ports.pop().split(":")[1]) > 0
  assert lines[-1] == "wait" and not any(l.startswith("tail") for l in lines)
  for bad in (["--config", "x"], ["-n", "0", "--workdir", "w"], ["-d", "x", "--workdir", "w"]):
    r = _run("multiprocess.sh", "--dry-run", *bad, check=False)
    assert r.returncode == 2 and r.stdout == "", bad
