"""PNG plots of an evaluation (``evaluate.run`` calls :func:`write_all`): mean NLL against cost, NLL
per domain, the learned blend / merge weights per layer, and the gate per token on switch
sequences."""

from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np

from projects.superposed_experts.report import cost_of, label


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # files only: no display on the machines this runs on
  import matplotlib.pyplot as plt

  return plt


def write_all(results: Mapping, workdir: str | pathlib.Path, log=print) -> list[str]:
  """Writes the plots into ``workdir``; returns their paths (none, with a message, without
  matplotlib)."""
  try:
    plt = _pyplot()
  except ImportError:
    log("matplotlib is not installed (pip install matplotlib): no plots written")
    return []
  workdir = pathlib.Path(workdir)
  paths = [
    nll_vs_cost(plt, results, workdir / "nll_vs_cost.png"),
    per_domain(plt, results, workdir / "nll.png"),
    alphas(plt, results, workdir / "alphas.png"),
    switching(plt, results, workdir / "switch_gate.png"),
  ]
  return [str(p) for p in paths if p]


def _color(m: str) -> str:
  if m.startswith("trunk"):
    return "C3"
  if m in ("superposed", "superposed_tf", "blend_only", "superposed_router"):
    return "C1"
  if m in ("oracle", "router", "posterior mixture", "fixed share") or m.startswith("mixture"):
    return "C2"
  return "C0"


def nll_vs_cost(plt, results: Mapping, path: pathlib.Path):
  """Mean NLL (95 % interval) against the time per token in units of one expert's.

  Each point carries a number, listed beside the axes with its methods (methods at the same point,
  equal to 3 decimals of cost and NLL, share it); a cost known only from FLOPs (no benchmark of that
  forward) is an open marker."""
  T, costs = results["table"]["methods"], results["costs"]
  points = {}  # (x, y) rounded -> [methods]
  for m in results["order"]:
    points.setdefault(
      (round(cost_of(costs[m]), 3), round(T[m]["mean_nll"]["value"], 3)), []
    ).append(m)
  fig, ax = plt.subplots(figsize=(11, 5.5))
  lines = []
  for i, ((x, y), methods) in enumerate(
    sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][0])), start=1
  ):
    m = methods[0]
    v = T[m]["mean_nll"]
    measured = bool(costs[m].get("measured_ratio"))
    ax.errorbar(
      x,
      v["value"],
      yerr=[[v["value"] - v["low"]], [v["high"] - v["value"]]],
      fmt="o",
      color=_color(m),
      capsize=2,
      ms=4,
      mfc=None if measured else "white",
    )
    ax.annotate(
      str(i), (x, y), xytext=(3, 1), textcoords="offset points", fontsize=6, color=_color(m)
    )
    names = " = ".join(label(k).strip("*") for k in methods)
    lines.append(f"{i:>2}  {y:.3f} @ {x:.2f}×{'' if measured else ' (FLOPs)'}  {names}")
  ax.text(
    1.02,
    1.0,
    "\n".join(["  #  mean NLL @ cost  method"] + lines),
    transform=ax.transAxes,
    va="top",
    ha="left",
    fontsize=6.5,
    family="monospace",
  )
  measured = any(c.get("measured_ratio") for c in costs.values())
  ax.set(
    xlabel="time per token ÷ one expert's"
    + (" (measured; open marker: FLOPs)" if measured else " (FLOPs)"),
    ylabel="mean NLL over domains (nats/token)",
    title=f"NLL vs cost, {len(results['domains'])} domains, {len(results['seeds'])} seeds",
  )
  ax.grid(alpha=0.3)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def per_domain(plt, results: Mapping, path: pathlib.Path):
  names, T = results["domains"], results["table"]["methods"]
  order = results["order"]
  fig, axes = plt.subplots(
    1, len(names), figsize=(5 * len(names), 0.3 * len(order) + 1.5), squeeze=False
  )
  y = np.arange(len(order))
  for ax, d in zip(axes[0], names):
    st = [T[m]["nll"][d] for m in order]
    mean = np.array([s["value"] for s in st])
    err = np.array([[s["value"] - s["low"] for s in st], [s["high"] - s["value"] for s in st]])
    ax.barh(y, mean, xerr=err, color=[_color(m) for m in order], alpha=0.8, capsize=2)
    ax.axvline(T["oracle"]["nll"][d]["value"], color="k", lw=0.8, ls="--")
    ax.set_yticks(
      y, [label(m).strip("*") for m in order] if ax is axes[0][0] else [""] * len(order), fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlim(0.97 * min(mean), max(mean + err[1]) * 1.01)
    ax.set(title=f"{d}: NLL (lower is better)", xlabel="nats/token")
    ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def alphas(plt, results: Mapping, path: pathlib.Path):
  """One panel per learned blend or merge: the weight of each expert ≥ 1 per layer, a line per seed
  — the teacher-forced run shows the α that training never moved, the sequential one every α
  trained."""
  seeds, names = results["seeds"], results["domains"]
  methods = sorted({m for s in seeds for m in results["info"][s]["alphas"]})
  if not methods:
    return None
  fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
  for ax, m in zip(axes[0], methods):
    for i, s in enumerate(seeds):
      a = np.asarray(results["info"][s]["alphas"].get(m, []), np.float64)
      if a.size == 0:
        continue
      if m == "merge":  # λ (groups, K − 1): embedding, blocks (the last with the head)
        curves = {names[k + 1]: a[:, k] for k in range(a.shape[1])}
      elif len(names) == 2:
        curves = {names[1]: a if a.ndim == 1 else a.mean(-1)}
      else:
        curves = {names[k]: a[:, k] for k in range(len(names))}
      for j, (lab, yv) in enumerate(curves.items()):
        ax.plot(
          np.arange(len(yv)),
          yv,
          marker="o",
          color=f"C{j}",
          alpha=0.4 + 0.6 * (i + 1) / len(seeds),
          label=lab if i == 0 else None,
        )
    ax.set(
      title=label(m).strip("*"),
      xlabel="embedding, then blocks" if m == "merge" else "layer",
      ylabel="λ (task-vector weight)" if m == "merge" else "weight of expert",
    )
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"learned weights per layer ({len(seeds)} seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def switching(plt, results: Mapping, path: pathlib.Path):
  """Per switch pair (rows) and seed 0's first sequence: the one-trunk gate per token beside the
  posterior mixture's weights; the dashed line is where the domain changes."""
  info = results["info"][results["seeds"][0]]
  gates = info.get("gates", {})
  pairs = results["switch_pairs"]
  panels = [("posterior mixture", info["posterior_trace"])] + [(m, g) for m, g in gates.items()]
  names = results["domains"]
  fig, axes = plt.subplots(
    len(pairs), len(panels), figsize=(4.2 * len(panels), 2.4 * len(pairs)), squeeze=False
  )
  for i, p in enumerate(pairs):
    for j, (m, trace) in enumerate(panels):
      ax = axes[i][j]
      probs = np.asarray(trace[p]["probs"])[0]  # [T, K]
      for k in range(probs.shape[-1]):
        ax.plot(probs[:, k], color=f"C{k}", lw=1, label=names[k])
      ax.axvline(trace[p]["switch"], color="k", ls="--", lw=0.8)
      ax.set(
        ylim=(-0.03, 1.03),
        title=f"{label(m).strip('*')}: {p}",
        xlabel="target position",
        ylabel="weight",
      )
      ax.title.set_fontsize(8)
      ax.grid(alpha=0.3)
      if i == 0 and j == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
