"""The distribution is the library only, and the README's "reuse the libraries" example runs against
the installed wheel: built here (offline, no build isolation), installed into a fresh virtual
environment whose third-party packages come from this one, run from a folder outside the
checkout."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = pathlib.Path(__file__).with_name("reuse_example.py")


def _run(cmd, **kw):
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
  assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
  return r.stdout


def test_wheel_holds_the_library_and_the_example_trains_from_it(tmp_path):
  src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
  shutil.copytree(
    REPO / "libs", src / "libs", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
  )
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  _run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(tmp_path / "dist"),
      str(src),
    ]
  )
  (wheel,) = (tmp_path / "dist").glob("superpose-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split("/")[0] for n in names} == {
    "superpose",
    wheel.name.split("-py")[0] + ".dist-info",
  }
  assert (
    "superpose/data/samples/shakespeare.jsonl.gz" in names and "superpose/train/loop.py" in names
  )

  # A fresh venv: the wheel in its own site-packages, jax & co. reached through a .pth line (not
  # this checkout: the editable install's finder lives in a .pth file that a plain path line does
  # not run).
  _run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")])
  python = tmp_path / "venv" / "bin" / "python"
  site = pathlib.Path(
    _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
  )
  (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  _run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--no-deps",
      "--no-index",
      "-q",
      "--target",
      str(site),
      str(wheel),
    ]
  )
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  out = tmp_path / "outside"
  out.mkdir()
  where = _run(
    [
      str(python),
      "-c",
      "import superpose, importlib.util as u; print(superpose.__file__); "
      "print([n for n in ('projects', 'launch', 'configs') if u.find_spec(n)])",
    ],
    cwd=out,
    env=env,
  )
  assert where.splitlines() == [str(site / "superpose" / "__init__.py"), "[]"]

  assert len(EXAMPLE.read_text().splitlines()) <= 40
  printed = _run([str(python), str(EXAMPLE), str(out / "run")], cwd=out, env=env)
  assert "trained 30 steps on 8 devices" in printed
  losses = [
    json.loads(line)["loss"]
    for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
    if '"loss"' in line
  ]
  assert len(losses) == 30 and losses[-1] < losses[0] - 0.1


def test_readme_shows_the_example():
  assert EXAMPLE.read_text().strip() in (REPO / "README.md").read_text()
