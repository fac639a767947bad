"""PNG plots of an evaluation (``evaluate.run`` calls :func:`write_all`): blend weights per layer for
each seed, each method's perplexity per domain, and perplexity along the interpolation line."""
from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")          # files only: no display on the machines this runs on
  import matplotlib.pyplot as plt
  return plt


def write_all(results: Mapping, workdir: str | pathlib.Path, log=print) -> list[str]:
  """Writes the plots into ``workdir``; returns their paths (none, with a message, without matplotlib)."""
  try:
    plt = _pyplot()
  except ImportError:
    log("matplotlib is not installed (pip install matplotlib): no plots written")
    return []
  workdir = pathlib.Path(workdir)
  paths = [alphas(plt, results, workdir / "alphas.png"), perplexities(plt, results, workdir / "perplexity.png")]
  if len(results["domains"]) == 2:
    paths.append(interpolation(plt, results, workdir / "interpolation.png"))
  return [str(p) for p in paths if p]


def alphas(plt, results: Mapping, path: pathlib.Path):
  """One panel per superposed method: the weight of each expert ≥ 1 per layer, one line per seed
  (a 2-D blend is shown by its mean over hidden dimensions)."""
  seeds = results["seeds"]
  methods = sorted({m for s in seeds for m in results["per_seed"][s]["alphas"]})
  if not methods:
    return None
  names = results["domains"]
  fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.4), squeeze=False)
  for ax, m in zip(axes[0], methods):
    for i, s in enumerate(seeds):
      a = np.asarray(results["per_seed"][s]["alphas"].get(m, []), np.float64)
      if a.size == 0:
        continue
      curves = {names[1]: a if a.ndim == 1 else a.mean(-1)} if len(names) == 2 else \
          {names[k]: a[:, k] for k in range(len(names))}
      for j, (label, y) in enumerate(curves.items()):
        ax.plot(np.arange(len(y)), y, marker="o", color=f"C{j}", alpha=0.5 + 0.5 * (i + 1) / len(seeds),
                label=f"{label}" if i == 0 else None)
    ax.set_xticks(np.arange(len(np.asarray(results["per_seed"][seeds[0]]["alphas"].get(m, [0])))))
    ax.set(title=m, xlabel="layer", ylabel="weight of expert" if len(names) > 2 else f"α (weight of {names[1]})",
           ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"learned blend weights per layer ({len(seeds)} seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def perplexities(plt, results: Mapping, path: pathlib.Path):
  """One panel per domain: every method but the interpolation grid points, mean with min–max bars."""
  names, table = results["domains"], results["methods"]
  order = [m for m in results["order"] if not m.startswith("interp ") or m == "interp best"]
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 0.32 * len(order) + 1.5), squeeze=False)
  y = np.arange(len(order))
  for ax, d in zip(axes[0], names):
    st = [table[m]["ppl"][d] for m in order]
    mean = np.array([s["mean"] for s in st])
    err = np.array([[s["mean"] - s["min"] for s in st], [s["max"] - s["mean"] for s in st]])
    colors = ["C3" if m.startswith("superposed") else "C2" if m in ("oracle", "router") or m.startswith("mixture")
              else "C0" for m in order]
    ax.barh(y, mean, xerr=err, color=colors, alpha=0.8, capsize=2)
    ax.axvline(table["oracle"]["ppl"][d]["mean"], color="k", lw=0.8, ls="--")
    ax.set_yticks(y, order if ax is axes[0][0] else [""] * len(order), fontsize=8)
    ax.invert_yaxis()
    lo = 0.95 * min(mean)
    ax.set_xlim(lo, max(mean + err[1]) * 1.02)
    ax.set(title=f"{d}: perplexity (lower is better)", xlabel="perplexity")
    ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def interpolation(plt, results: Mapping, path: pathlib.Path):
  """Two experts: perplexity along (1 − λ)θ_base + λθ_expert, with the other methods as levels."""
  names, table = results["domains"], results["methods"]
  grid = sorted((float(m.split("=")[1]), m) for m in table if m.startswith("interp λ="))
  if not grid:
    return None
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, d in zip(axes[0], names):
    lam = [l for l, _ in grid]
    ax.plot(lam, [table[m]["ppl"][d]["mean"] for _, m in grid], marker="o", color="C0", label="interpolation")
    for j, m in enumerate(("superposed", "blend_only", "mixture best", "router", "oracle")):
      if m in table:
        ax.axhline(table[m]["ppl"][d]["mean"], color=f"C{j + 1}", ls="--", lw=1, label=m)
    for s in results["seeds"]:
      best = results["per_seed"][s]["info"]["best_interp"][1]
      ax.axvline(best, color="C0", lw=0.6, alpha=0.5)
    ax.set(title=f"{d} (thin lines: best λ per seed)", xlabel="λ (weight of the expert)", ylabel="perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
