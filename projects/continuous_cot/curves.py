"""Learning curves of continuous-CoT runs from their metrics.jsonl: one figure and one Markdown
table.

    python -m projects.continuous_cot.curves --workdir RUN [RUN ...] --out DIR [--name NAME]

Panels: the training loss (Coconut: the drawn label's NLL; CoT / No-CoT: the loss over their
supervised tokens; a 100-step moving average, stage starts marked), full-vocabulary accuracy,
two-candidate accuracy, the fraction of answers that are a candidate, and hop-1/2/3 accuracy (the
argmax after the root / thought or path node k − 1 is a depth-k node on a shortest path), all on the
run's generated validation split, with the floors (always the first candidate, more ancestors) as
dashed lines. The table gives every evaluation's numbers with 95 % Wilson intervals, rows seen, real
tokens seen and training wall time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from projects.continuous_cot import metrics as metrics_lib
from projects.continuous_cot import rows as rows_lib

PANELS = (
  ("acc", "full-vocabulary accuracy"),
  ("acc_two", "two-candidate accuracy"),
  ("is_cand", "answer is a candidate"),
  ("hop1", "hop-1 accuracy"),
  ("hop2", "hop-2 accuracy"),
  ("hop3", "hop-3 accuracy"),
)


def read_run(workdir: str | pathlib.Path) -> dict:
  """Training and evaluation rows of one run, its config, and its eval set size."""
  workdir = pathlib.Path(workdir)
  rows = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
    if line.strip()
  ]
  config = json.loads((workdir / "config.json").read_text())
  train = [r for r in rows if "grad_norm" in r]
  evals = [r for r in rows if "eval/acc" in r]
  progress = workdir / "progress.json"
  return {
    "name": workdir.name,
    "config": config,
    "train": train,
    "evals": evals,
    "progress": json.loads(progress.read_text()) if progress.exists() else {},
  }


def _moving(x: np.ndarray, w: int) -> np.ndarray:
  if len(x) < w:
    return x
  c = np.cumsum(np.insert(x, 0, 0.0))
  return np.concatenate([c[1:w] / np.arange(1, w), (c[w:] - c[:-w]) / w])


def eval_size(config: dict) -> int:
  """Validation problems a run evaluated on: its eval_limit, or the whole validation file."""
  c = config["cot"]
  path = pathlib.Path(c["data_dir"]) / c["valid_file"]
  if not path.exists():
    if c.get("eval_limit"):
      return int(c["eval_limit"])
    raise SystemExit(
      f"curves: {path} not found and eval_limit is 0: the evaluation size is unknown"
    )
  n = len(json.loads(path.read_text()))
  return min(n, c["eval_limit"]) if c.get("eval_limit") else n


def stage_starts(config: dict) -> list[int]:
  """Coconut's stage starts (stages 1..4, the graph_4 hop counts) for runs staged by steps; by
  epochs the training-set size would be needed, and none are marked."""
  c = config["cot"]
  if c["method"] != "coconut" or c.get("steps_per_stage", 0) <= 0:
    return []
  cot = {"stage0_steps": 0, **c}
  return rows_lib.stage_starts(cot, config["train"]["steps"], 4, config["train"]["batch_size"], 1)


def table(runs: Sequence[dict], n_eval: int) -> str:
  keys = [k for k, _ in PANELS]
  head = (
    "| run | step | rows seen | real tokens seen | "
    + " | ".join(metrics_lib.LABELS.get(k, k) for k in keys)
    + " |"
  )
  lines = [head, "|---" * (len(keys) + 4) + "|"]
  for run in runs:
    batch = run["config"]["train"]["batch_size"]
    tokens = {r["step"]: r.get("data/row_tokens", 0.0) * batch for r in run["train"]}
    for r in run["evals"]:
      seen = sum(v for s, v in tokens.items() if s <= r["step"])
      cells = [
        metrics_lib.cell(int(round(r[f"eval/{k}"] * n_eval)), n_eval) if f"eval/{k}" in r else "–"
        for k in keys
      ]
      lines.append(
        f"| {run['name']} | {r['step']} | {r['step'] * batch:,} | {seen / 1e6:.1f}M | "
        + " | ".join(cells)
        + " |"
      )
  return "\n".join(lines)


def plot(runs: Sequence[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, grid = plt.subplots(2, 4, figsize=(13, 6.4))
  axes = list(grid.flat)
  axes[-1].axis("off")
  for run in runs:
    steps = np.array([r["step"] for r in run["train"]])
    nll = np.array([r.get("label_nll", r["loss"]) for r in run["train"]], float)
    (line,) = axes[0].plot(steps, _moving(nll, 100), lw=1, label=run["name"])
    for s in stage_starts(run["config"]):
      axes[0].axvline(s, color=line.get_color(), lw=0.5, ls=":")
    es = [r["step"] for r in run["evals"]]
    for ax, (key, _) in zip(axes[1:], PANELS):
      vals = [r.get(f"eval/{key}", np.nan) for r in run["evals"]]
      ax.plot(es, vals, marker="o", ms=3, color=line.get_color())
  axes[0].set_title("training loss, nats (Coconut: the label NLL)", fontsize=9)
  axes[0].legend(fontsize=7)
  floors = runs[0]["evals"][-1] if runs and runs[0]["evals"] else {}
  for ax, (key, title) in zip(axes[1:], PANELS):
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    if key in ("acc", "acc_two"):
      for f, style in (("floor_first", "--"), ("floor_ancestors", "-.")):
        if f"eval/{f}" in floors:
          ax.axhline(
            floors[f"eval/{f}"], color="grey", ls=style, lw=0.8, label=metrics_lib.LABELS.get(f, f)
          )
  axes[1].legend(fontsize=6)
  for ax in axes[:-1]:
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m projects.continuous_cot.curves",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--workdir", nargs="+", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--name", default="curves")
  args = parser.parse_args(argv)
  runs = [read_run(w) for w in args.workdir]
  n_eval = eval_size(runs[0]["config"])
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plot(runs, out / f"{args.name}.png")
  text = table(runs, n_eval)
  walls = ", ".join(
    f"{r['name']} {r['progress'].get('wall_time_s', float('nan')) / 60:.1f} min to step "
    f"{r['progress'].get('step', '?')}"
    for r in runs
  )
  (out / f"{args.name}.md").write_text(text + f"\n\nTraining wall time (progress.json): {walls}\n")
  print(text)
  print(f"wrote {out / args.name}.png and .md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
