"""What the compression sweep writes besides results.json: results.md, accuracy_vs_d.png and the
W Wᵀ heatmaps (``wtw_<program>_d<d>.png``).

The heatmap is the D × D matrix W Wᵀ (W: D × d, row f = feature f's direction in the d-space), rows
and columns labelled with the residual features: its diagonal is each feature's squared norm (≈0:
dropped) and its off-diagonal entries are the overlaps between features (≠0: sharing directions).
This is the matrix of tracr's README figure (there ``w_emb`` is d × D, so it is their ``w_embᵀ
w_emb``).
"""

from __future__ import annotations

import pathlib

import numpy as np


def _plt():
  import matplotlib

  matplotlib.use("Agg")  # files only
  import matplotlib.pyplot as plt

  return plt


def heatmap_dims(entry: dict, threshold: float, requested=None) -> list[int]:
  """The d's that get a heatmap: ``requested``, else the smallest d whose median reaches the
  threshold, d = 8 (the paper's figure) and d = D, where swept."""
  swept = [p["d"] for p in entry["points"]]
  if requested:
    return [d for d in requested if d in swept]
  passing = [p["d"] for p in entry["points"] if p["median"] >= threshold]
  wanted = {min(passing)} if passing else set()
  wanted |= {8, entry["D"]}
  return sorted(d for d in wanted if d in swept)


def write(
  results: dict, workdir, *, Ws_dir=None, requested_dims=None, threshold: float = 0.99
) -> list[pathlib.Path]:
  workdir = pathlib.Path(workdir)
  Ws_dir = pathlib.Path(Ws_dir or workdir)
  written = [workdir / "results.md"]
  plt = _plt()
  lines = ["# Residual compression of compiled RASP models", ""]
  cfg = results["config"]["train"]
  lines += [
    f"Adam on W only; lr grid {list(cfg['lrs'])} (fixed before the run), {cfg['num_seeds']} seeds, "
    f"{cfg['steps']} steps, batch {cfg['batch_size']}, λ = {cfg['layer_weight']}, W init "
    f"{cfg['init']}. "
    f"Accuracy: fraction of test inputs whose decoded output equals the RASP evaluator's at every "
    f"position (numerical: within {results['config']['eval']['tolerance']}); per seed the lr with "
    "the "
    f"best validation accuracy. Wall time {results.get('seconds', 0):.0f} s.",
    "",
  ]
  fig, axes = plt.subplots(
    1, len(results["programs"]), figsize=(5.5 * len(results["programs"]), 4), squeeze=False
  )
  for ax, (name, entry) in zip(axes[0], results["programs"].items()):
    pts = entry["points"]
    lines += [
      f"## {name}",
      "",
      f"vocab {entry['vocab']}, max_seq_len {entry['max_seq_len']}, D = {entry['D']}, "
      f"{entry['output_encoding']} output; inputs train/val/test {entry['splits']}.",
      "",
      "| d | median acc | min | max | lr chosen per seed | layer cos | s |",
      "|---:|---:|---:|---:|---|---:|---:|",
    ]
    note = (
      "layer cos: per seed the lowest, over the sublayers that write anything, of the mean cosine "
      "between compressed and original sublayer outputs on test positions; median over seeds. A "
      "sublayer that writes a single direction (frac_prevs' MLP and head) has cosine ±1 whatever W "
      "is."
    )
    for p in pts:
      cos = np.asarray(p["layer_cos"])
      live = [np.min(c[c != 0]) if np.any(c != 0) else np.nan for c in cos]
      lines.append(
        f"| {p['d']} | {p['median']:.4f} | {p['min']:.4f} | {p['max']:.4f} | "
        f"{', '.join(f'{lr:g}' for lr in p['lr'])} | {np.nanmedian(live):.3f} | {p['seconds']:.0f} "
        "|"
      )
    passing = [p["d"] for p in pts if p["median"] >= threshold]
    lines += [
      "",
      note,
      "",
      f"Smallest d with median ≥ {threshold:.0%}: {min(passing) if passing else 'none'}.",
      "",
    ]
    ds = np.array([p["d"] for p in pts])
    ax.plot(ds, [p["median"] for p in pts], "o-", label="median over seeds")
    ax.fill_between(
      ds, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.25, label="min–max"
    )
    ax.axhline(threshold, color="gray", ls=":", lw=1)
    ax.axvline(entry["D"], color="gray", ls="--", lw=1)
    ax.set(
      title=f"{name} (D = {entry['D']})",
      xlabel="d (compressed width)",
      ylabel="test accuracy",
      ylim=(-0.02, 1.02),
    )
    ax.legend(loc="lower right")

    Ws = np.load(Ws_dir / f"W_{name}.npz")
    labels = entry["labels"]
    for d in heatmap_dims(entry, threshold, requested_dims):
      p = next(q for q in pts if q["d"] == d)
      W = Ws[f"d{d}"][p["shown_seed"]]
      written.append(
        _heatmap(
          plt,
          W,
          labels,
          workdir / f"wtw_{name}_d{d}.png",
          f"{name}: W Wᵀ at d = {d} (seed {p['shown_seed']}, test acc "
          f"{p['test_acc'][p['shown_seed']]:.3f})",
        )
      )
      dirs = p["directions"]
      lines += [
        f"### {name}, d = {d}: which features share directions (seed {p['shown_seed']})",
        "",
        f"Dropped (norm < {results['config']['eval']['drop_fraction']} × max): "
        f"{', '.join(dirs['dropped']) or 'none'}.",
        "",
        f"Pairs with |cos| ≥ {results['config']['eval']['cos_threshold']}: "
        + ("; ".join(f"{a} ~ {b} ({c:+.2f})" for a, b, c in dirs["shared"]) or "none")
        + ".",
        "",
        "Norms: " + ", ".join(f"{l} {n:.2f}" for l, n in dirs["norms"].items()) + ".",
        "",
      ]
  fig.tight_layout()
  fig.savefig(workdir / "accuracy_vs_d.png", dpi=120)
  plt.close(fig)
  written.append(workdir / "accuracy_vs_d.png")
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  return written


def _heatmap(plt, W_Dd: np.ndarray, labels, path: pathlib.Path, title: str) -> pathlib.Path:
  M = W_Dd @ W_Dd.T
  lim = max(float(np.abs(M).max()), 1e-6)
  size = 3 + 0.32 * len(labels)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
  ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
  ax.set_yticks(range(len(labels)), labels, fontsize=7)
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
