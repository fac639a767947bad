"""Metrics sinks: JSONL (always), TensorBoard event files, and run metadata. Process 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from importlib import metadata as importlib_metadata
from typing import Any, Mapping

import jax

log = logging.getLogger(__name__)

PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "grain",
  "ml-collections",
  "tensorstore",
  "numpy",
)


def _scalar(v: Any) -> Any:
  if isinstance(v, (bool, str)):
    return v
  if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
    return int(v)
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)


def _drop_after(path: pathlib.Path, step: int) -> int:
  """Rewrite ``path`` (JSONL) without the rows of steps after ``step``; returns how many were
  dropped."""
  kept, dropped = [], 0
  for line in path.read_text("utf-8").splitlines():
    if not line.strip():
      continue
    try:
      row_step = json.loads(line).get("step", 0)
    except ValueError:  # a line torn by a kill mid-write
      dropped += 1
      continue
    if isinstance(row_step, int) and row_step > step:
      dropped += 1
    else:
      kept.append(line)
  if dropped:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), "utf-8")
    os.replace(tmp, path)  # a kill during the rewrite leaves the old file whole
  return dropped


class MetricWriter:
  """``write(step, {name: value})`` to ``metrics.jsonl`` and TensorBoard under ``workdir``.

  ``start_step``: the step the run (re)starts from. Rows of later steps — written by an earlier
  attempt that got further than its last checkpoint — are removed from ``metrics.jsonl`` and purged
  from TensorBoard, so that every step appears once, with the values of the run that continues."""

  def __init__(
    self, workdir: str | os.PathLike, tensorboard: bool = True, start_step: int | None = None
  ):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if start_step is not None and self.path.exists():
      dropped = _drop_after(self.path, start_step)
      if dropped:
        log.info(
          "metrics.jsonl: dropped %d rows after step %d (the run continues from there)",
          dropped,
          start_step,
        )
    self._file = open(self.path, "a", buffering=1)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter

        purge = {"purge_step": start_step + 1} if start_step else {}
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), **purge)
      except ImportError:  # optional dependency
        log.warning("tensorboardX is not installed; writing JSONL metrics only")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: _scalar(v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, float):
          self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._file:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_commit() -> str | None:
  here = pathlib.Path(__file__).resolve().parent
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
    )
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=here,
      capture_output=True,
      text=True,
      timeout=5,
    ).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return None
  return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for p in PACKAGES:
    try:
      out[p] = importlib_metadata.version(p)
    except importlib_metadata.PackageNotFoundError:
      pass
  return out


def write_run_metadata(
  workdir: str | os.PathLike, config: Mapping, mesh, extra: Mapping | None = None
) -> None:
  """``run.json``: config, versions, git commit, mesh and devices; one file per (re)start."""
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = jax.devices()
  meta = {
    "argv": sys.argv,
    "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "git_commit": git_commit(),
    "versions": versions(),
    "hostname": platform.node(),
    "mesh": {k: int(v) for k, v in mesh.shape.items()},
    "devices": {
      "count": len(devices),
      "kind": devices[0].device_kind,
      "platform": devices[0].platform,
      "processes": jax.process_count(),
    },
    "config": config,
  }
  meta.update(extra or {})
  (workdir / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
  (workdir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
