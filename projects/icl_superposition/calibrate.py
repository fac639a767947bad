"""Mixed-prompt evaluation of from-scratch models (spec §2.4): calibration curves, per-prompt
measures and the trivial predictors scored by the same code.

  python -m projects.icl_superposition.calibrate --workdir \\
      ~/runs/icl/mod_add_uniform_d96_s0,~/runs/icl/mod_add_uniform_d96_s1 \\
      --out DIR [--prompts 1000] [--mixing bernoulli|exact] [--conditions standard,inside,absent]

A ``--workdir`` entry is one run, or several training seeds of one recipe joined by commas
(``NAME=dir1,dir2`` names it; otherwise the first directory's name without its ``_s<seed>``);
intervals then resample seeds and prompts. For each mixing value d ∈ {0, 0.1, …, 1}: ``--prompts``
prompts per seed whose in-context lines are each task 0 (``config.icl.test_pair[0]``, retrieve2;
``random``: a random pair of the family's tasks per prompt, as the paper's mod-10 runs) with
probability d and task 1 otherwise (``bernoulli``, the reference code's protocol; ``exact`` uses
round(d·N) lines of task 0), then a fresh query. Scored per prompt (``mixtures``): P(answer of task
0 / 1) (each the teacher-forced P(letter, "\\n")), P(elsewhere), KL(s ‖ P) against the prompt's
realised shares s, the total variation TV(s, P) and r (task answers among the top-2 complete
outputs). The same numbers for the three reference predictors on the same prompts (diagonal P = d,
soft oracle P = s, one-hot oracle), and each predictor's mean |Δ| to the reference curve of
``from_scratch_reference/`` named by ``--reference`` (default: copy / copy_9010 for uniform / skewed
retrieval training, bias_add_simple / bias_add_simple_9010 for mod_add; ``compare``). Per-prompt
summaries pool the mixed prompts (0 < d < 1).

Conditions: ``standard`` (the run's N lines, then the query: line N + 1, one past the trained row),
``inside`` (N − 1 lines: the query is line N, inside the trained row length), ``absent`` (mod_add: N
lines none of which has the query's digit as input, so no line can be copied). Writes
``calibration.json``, ``calibration.md``, ``calibration_<run>_<condition>.png`` (the curve, and
per-prompt P(task 0 | answered) histograms) and, for several runs, ``calibration_runs.png``.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import re
import sys

import numpy as np

from superpose.train.loader import load_model

from projects.icl_superposition import chars, cli, mixtures, scoring, tables, tasks as tasks_lib

MIXING = tuple(round(0.1 * i, 1) for i in range(11))
REFERENCE_RUNS = {
  ("retrieval", "uniform"): "eval_copy_6_384_6_mix_1",
  ("retrieval", "skewed"): "eval_copy_9010_6_384_6_mix_1",
  ("mod_add", "uniform"): "eval_bias_add_simple_6_384_6_mix_1",
  ("mod_add", "skewed"): "eval_bias_add_simple_9010_6_384_6_mix_1",
}


CONDITIONS = ("standard", "inside", "absent")
REFERENCE_PROMPTS = 1000  # prompts per point of the reference curves (spec §2.5)


def mixed_prompts(
  task0: str,
  task1: str,
  n_examples: int,
  d: float,
  n: int,
  rng: np.random.Generator,
  mixing: str = "bernoulli",
  family: str | None = None,
  query_absent: bool = False,
) -> list[tasks_lib.Prompt]:
  """``n`` prompts with task 0 at fraction d; ``answers == (answer of task 0, answer of task 1)``.
  ``task0 == task1 == 'random'``: a fresh pair of distinct tasks of ``family`` per prompt."""
  out = []
  names = tasks_lib.FAMILIES[family].task_names if task0 == "random" else None
  for _ in range(n):
    if names is not None:
      task0, task1 = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    k0 = int(rng.binomial(n_examples, d)) if mixing == "bernoulli" else int(round(d * n_examples))
    out.append(
      tasks_lib.multi_task_prompt(
        [task0, task1],
        [k0 / n_examples, 1 - k0 / n_examples],
        n_examples,
        rng,
        query_absent=query_absent,
      )
    )
  return out


def evaluation_pair(config: dict) -> tuple[str, str]:
  pair = config["icl"]["test_pair"]
  if pair == "random":
    return "random", "random"
  task0, task1 = pair.split(",")
  return task0, task1


def condition_setup(config: dict, condition: str) -> tuple[int, bool]:
  """(lines per prompt, query absent from the context) of an evaluation condition."""
  n_examples, family = config["icl"]["n_examples"], config["icl"]["family"]
  if condition not in CONDITIONS:
    raise ValueError(f"unknown condition {condition!r} (known: {', '.join(CONDITIONS)})")
  if condition == "absent" and family != "mod_add":
    raise ValueError(
      f"condition 'absent' is a mod_add control; {family} queries are never in the context"
    )
  if condition == "inside" and n_examples < 2:
    raise ValueError("condition 'inside' needs runs trained on ≥ 2 lines")
  return (n_examples - 1 if condition == "inside" else n_examples), condition == "absent"


def curve(
  model,
  config: dict,
  n_prompts: int,
  seed: int = 0,
  mixing: str = "bernoulli",
  condition: str = "standard",
  batch_size: int = 50,
  progress: bool = True,
) -> list[dict]:
  """Per mixing value d: {'d', 'p' (n, 2), 'r' (n,), 'shares' (n, 2) realised, 'nominal' (n, 2)} of
  one model."""
  task0, task1 = evaluation_pair(config)
  family = config["icl"]["family"]
  n_examples, absent = condition_setup(config, condition)
  rows = []
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(
      total=n_prompts * len(MIXING),
      desc=f"calibration ({condition})",
      unit="prompt",
      file=sys.stderr,
    )
  for j, d in enumerate(MIXING):
    rng = np.random.default_rng([seed, j, 31])
    prompts = mixed_prompts(
      task0, task1, n_examples, d, n_prompts, rng, mixing, family, query_absent=absent
    )
    s = scoring.score(
      model,
      [p.text for p in prompts],
      [p.answers for p in prompts],
      chars.VOCAB.encode,
      prefix=[chars.VOCAB.bos_id],
      batch_size=batch_size,
      top_first=4,
      progress=bar.update if bar else None,
    )
    pred = mixtures.from_scores(s)
    rows.append(
      {
        "d": d,
        "p": pred.p,
        "r": pred.r,
        "shares": mixtures.shares_of(prompts, 2),
        "nominal": np.tile([d, 1.0 - d], (n_prompts, 1)),
      }
    )
  if bar:
    bar.close()
  return rows


def reference_curve(
  run: str, path: str | pathlib.Path | None = None
) -> dict[float, tuple[float, float, float]]:
  path = (
    pathlib.Path(path)
    if path
    else tables.tables_dir() / "from_scratch_reference" / "icl_pretraining_calibration_curves.csv"
  )
  if not path.exists():
    raise FileNotFoundError(
      f"{path}: the reference curves (../shared/data/icl_tables/from_scratch_reference)"
    )
  out = {}
  with path.open() as f:
    for row in csv.DictReader(f):
      if row["run_name"] == run:
        out[round(float(row["p_task0_in_context"]), 1)] = (
          float(row["mean_P_ans_task0"]),
          float(row["mean_P_ans_task1"]),
          float(row["mean_P_other"]),
        )
  if not out:
    raise ValueError(f"{path}: no run named {run!r}")
  return out


def compare(
  rows: list[dict],
  ref: dict,
  draws: int = 2000,
  seed: int = 0,
  ref_prompts: int | None = REFERENCE_PROMPTS,
) -> dict:
  """Distance of a calibration curve to a reference curve over the mixing values, task 0 and task 1.

  ``mean_abs_delta`` is the mean of |P̄_ours − P_ref| over the 2 × 11 points (the number earlier
  tables quote). Sampling noise biases it up (|·| of a noisy difference is positive even when the
  curves agree), so rows that carry per-prompt ``samples`` ((n, 2) P(task 0), P(task 1), or a list
  of such arrays, one per training seed) also give ``rms_gap``: sqrt of mean[(P̄ − P_ref)² − v̂ −
  v_ref], an unbiased estimate of the mean squared gap (clipped at 0), with v̂ the bootstrap
  variance of P̄ (resampling seeds, when several — one choice per draw for every d — and prompts
  within each seed) and v_ref = P_ref(1 − P_ref)/``ref_prompts``, the largest variance a mean of
  ``ref_prompts`` probabilities can have (the reference runs' per-prompt values are not published;
  ``None`` takes the reference as exact). ``rms_gap_ci95`` is the basic bootstrap interval of the
  squared gap (the draws' deviations from their mean reflected about the estimate; reference points
  drawn from N(P_ref, v_ref) in each draw), clipped at 0, then square-rooted; it reaches 0 when the
  curves cannot be told apart. ``mean_abs_delta_ci95``: the percentile interval of the mean |Δ| over
  the same draws (it inherits the upward bias); ``noise_rms``: sqrt of the mean of v̂ + v_ref."""
  pts = [r for r in rows if r["d"] in ref]
  d0 = [abs(r["p_task0"]["mean"] - ref[r["d"]][0]) for r in pts]
  d1 = [abs(r["p_task1"]["mean"] - ref[r["d"]][1]) for r in pts]
  out = {
    "mean_abs_delta_task0": float(np.mean(d0)),
    "mean_abs_delta_task1": float(np.mean(d1)),
    "mean_abs_delta": float(np.mean(d0 + d1)),
    "max_abs_delta": float(max(d0 + d1)),
    "points": len(d0),
  }
  if not pts or not all("samples" in r for r in pts):
    return out
  rng = np.random.default_rng(seed)
  per_seed = [
    r["samples"] if isinstance(r["samples"], (list, tuple)) else [r["samples"]] for r in pts
  ]
  n_seeds = len(per_seed[0])
  chosen = rng.integers(0, n_seeds, (draws, n_seeds)) if n_seeds > 1 else np.zeros((draws, 1), int)
  abs_total, sq_total, sq_hat, noise = np.zeros(draws), np.zeros(draws), 0.0, 0.0
  for groups, r in zip(per_seed, pts):
    means = np.stack(
      [np.asarray(g, np.float64)[rng.integers(0, len(g), (draws, len(g)))].mean(1) for g in groups]
    )  # (seeds, draws, 2)
    pooled = means[chosen.T, np.arange(draws)[None, :]].mean(0)  # (draws, 2)
    target = np.asarray(ref[r["d"]][:2], np.float64)
    observed = np.array([r["p_task0"]["mean"], r["p_task1"]["mean"]])
    v = pooled.var(0) + (
      np.clip(target * (1 - target), 0, None) / ref_prompts if ref_prompts else 0.0
    )
    drawn = target + (
      rng.normal(size=(draws, 2)) * np.sqrt(v - pooled.var(0)) if ref_prompts else 0.0
    )
    abs_total += np.abs(pooled - drawn).sum(1)
    sq_total += ((pooled - drawn) ** 2 - v).sum(1)
    sq_hat += float(((observed - target) ** 2 - v).sum())
    noise += float(v.sum())
  n = 2 * len(pts)
  sq_hat, sq_total = sq_hat / n, sq_total / n
  q_lo, q_hi = np.percentile(sq_total, [2.5, 97.5])
  out["mean_abs_delta_ci95"] = [float(x) for x in np.percentile(abs_total / n, [2.5, 97.5])]
  out["rms_gap"] = float(np.sqrt(max(sq_hat, 0.0)))
  center = (
    sq_total.mean()
  )  # the bootstrap world's truth, mean[(P̄ − P_ref)²]: the draws are unbiased for it
  out["rms_gap_ci95"] = [
    float(np.sqrt(max(sq_hat - (q_hi - center), 0.0))),
    float(np.sqrt(max(sq_hat + (center - q_lo), 0.0))),
  ]
  out["noise_rms"] = float(np.sqrt(noise / n))
  return out


def analyse(
  curves: list[list[dict]],
  ref: dict | None,
  seed: int = 0,
  draws: int = 2000,
  n_outputs: int | None = None,
) -> dict:
  """Every predictor (the model, over its seeds' ``curve``s, and the references on the same
  prompts): per-d means with intervals, per-prompt summaries over the mixed prompts, and ``compare``
  to ``ref``."""
  rng = np.random.default_rng([seed, 97])
  names = mixtures.REFERENCES + ((mixtures.GUESS,) if n_outputs else ())
  preds: dict[str, list[list[mixtures.Predictions]]] = {"model": [], **{k: [] for k in names}}
  for c in curves:
    preds["model"].append([mixtures.Predictions(p=row["p"], r=row["r"]) for row in c])
    refs = [mixtures.references(row["nominal"], row["shares"], rng, n_outputs) for row in c]
    for name in names:
      preds[name].append([x[name] for x in refs])
  out = {}
  for name, by_seed in preds.items():
    rows, mixed = [], []
    for j, d in enumerate(MIXING):
      metrics = [
        mixtures.per_prompt(seed_preds[j], c[j]["shares"]) for seed_preds, c in zip(by_seed, curves)
      ]
      p_groups = [seed_preds[j].p for seed_preds in by_seed]
      row = {"d": d, "n": int(sum(len(g) for g in p_groups)), "samples": p_groups}
      for key, col in (("p_task0", 0), ("p_task1", 1)):
        x = [g[:, col] for g in p_groups]
        row[key] = {
          "mean": float(np.mean(np.concatenate(x))),
          "ci95": mixtures.bootstrap_ci(x, draws=draws // 4, seed=seed),
        }
      row.update(
        {k: float(np.mean(np.concatenate([m[k] for m in metrics]))) for k in ("other", "tv", "r")}
      )
      row["kl_median"] = float(np.median(np.concatenate([m["kl"] for m in metrics])))
      rows.append(row)
      if 0 < d < 1:
        mixed.append(metrics)
    pooled = [
      {k: np.concatenate([m[s_][k] for m in mixed]) for k in mixtures.METRICS}
      for s_ in range(len(curves))
    ]
    res = {
      "rows": rows,
      "per_prompt": mixtures.summarize(pooled, draws=draws, seed=seed),
      "max_other": max(r["other"] for r in rows),
    }
    if ref:
      res["compare"] = compare(rows, ref, draws=draws, seed=seed)
    for r in rows:
      del r["samples"]
    out[name] = res
  first = out["model"]["rows"]
  out["model"]["single_task"] = [first[0]["p_task1"]["mean"], first[-1]["p_task0"]["mean"]]
  out["model"]["single_task_per_seed"] = [
    [float(c[0]["p"][:, 1].mean()), float(c[-1]["p"][:, 0].mean())] for c in curves
  ]
  return out


def plot(
  name: str,
  res: dict,
  ref: dict | None,
  ref_name: str,
  curves: list[list[dict]],
  path: pathlib.Path,
) -> None:
  """Left: P(task 0), P(task 1), P(elsewhere) against d with the reference curve and the diagonal.
  Right: the per-prompt P(task 0) / (P(task 0) + P(task 1)) at d = 0.3, 0.5, 0.7 (all seeds), beside
  the realised shares (what the soft oracle gives): a superposing model piles up near the share, a
  committing one at 0 and 1."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = res["model"]["rows"]
  d = np.array([r["d"] for r in rows])
  fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4))
  for key, label, color in (
    ("p_task0", "P(answer of task 0)", "C0"),
    ("p_task1", "P(answer of task 1)", "C1"),
  ):
    m = np.array([r[key]["mean"] for r in rows])
    lo, hi = np.array([r[key]["ci95"] for r in rows]).T
    ax.errorbar(d, m, yerr=[m - lo, hi - m], color=color, marker="o", ms=3, capsize=2, label=label)
  ax.plot(d, [r["other"] for r in rows], "o-", color="C7", ms=3, label="P(elsewhere)")
  if ref:
    ds = sorted(ref)
    ax.plot(ds, [ref[x][0] for x in ds], "--", color="C0", alpha=0.6, label=f"reference {ref_name}")
    ax.plot(ds, [ref[x][1] for x in ds], "--", color="C1", alpha=0.6)
  ax.plot([0, 1], [0, 1], ":", color="k", lw=0.8, label="diagonal (P = d)")
  ax.set(
    xlabel="d = fraction of task-0 lines in context",
    ylabel="probability",
    ylim=(-0.02, 1.02),
    title=name,
  )
  ax.legend(fontsize=7)
  bins = np.linspace(0, 1, 21)
  shown = [dv for dv in (0.3, 0.5, 0.7) if dv in MIXING] or [dv for dv in MIXING if 0 < dv < 1][:3]
  for i, dv in enumerate(shown):
    j = MIXING.index(dv)
    p = np.concatenate([c[j]["p"] for c in curves])
    share = np.concatenate([c[j]["shares"][:, 0] for c in curves])
    split = p[:, 0] / np.maximum(p.sum(1), 1e-12)
    hx.hist(
      split,
      bins=bins,
      histtype="step",
      color=f"C{i}",
      lw=1.5,
      density=True,
      label=f"model, d = {dv}",
    )
    hx.hist(
      share,
      bins=bins,
      histtype="stepfilled",
      color=f"C{i}",
      alpha=0.15,
      density=True,
      label=f"realised share (soft oracle), d = {dv}",
    )
  hx.set(
    xlabel="per prompt: P(task 0) / (P(task 0) + P(task 1))",
    ylabel="density",
    title="per-prompt split of the answered mass",
  )
  hx.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def overlay(results: dict, path: pathlib.Path) -> None:
  """P(answer of task 0) against d for several runs (their standard condition) in one plot; each
  reference curve once (black, own line style)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 4))
  refs_drawn = set()
  for i, (name, res) in enumerate(results.items()):
    cond = res["conditions"].get("standard") or next(iter(res["conditions"].values()))
    rows = cond["model"]["rows"]
    m = np.array([r["p_task0"]["mean"] for r in rows])
    lo, hi = np.array([r["p_task0"]["ci95"] for r in rows]).T
    delta = cond["model"].get("compare", {}).get("mean_abs_delta")
    ax.errorbar(
      [r["d"] for r in rows],
      m,
      yerr=[m - lo, hi - m],
      color=f"C{i}",
      marker="o",
      ms=3,
      capsize=2,
      label=name + (f" (mean |Δ| {delta:.3f})" if delta is not None else ""),
    )
    if res.get("reference") and res["reference"] not in refs_drawn:
      style = ("--", "-.", (0, (5, 1, 1, 1, 1, 1)))[
        len(refs_drawn) % 3
      ]  # one line style per reference run
      refs_drawn.add(res["reference"])
      ref = sorted((float(d), v[0]) for d, v in res["reference_curve"].items())
      ax.plot(
        [d for d, _ in ref],
        [p for _, p in ref],
        linestyle=style,
        color="k",
        alpha=0.6,
        label=f"reference {res['reference']}",
      )
  ax.plot([0, 1], [0, 1], ":", color="k", lw=0.8, label="diagonal (P = d)")
  ax.set(
    xlabel="d = fraction of task-0 lines in context",
    ylabel="P(answer of task 0)",
    ylim=(-0.02, 1.02),
    title="task superposition: runs side by side",
  )
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summary_table(name: str, cond: dict, ref_name: str | None) -> list[str]:
  """One row per predictor: the curve's distance to the reference and the per-prompt measures."""
  lines = [
    f"| {name} | mean \\|Δ\\| to {ref_name or '–'} | RMS gap, noise-corrected [95 %] | per-prompt "
    "KL(s‖P) "
    "median [95 %] | mean KL | TV(s, P) [95 %] | r (of 2) [95 %] | P(elsewhere) [95 %] | max over "
    "d |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for pred, res in cond.items():
    pp, cmp_ = res["per_prompt"], res.get("compare")
    delta = gap = "–"
    if cmp_:
      delta = f"{cmp_['mean_abs_delta']:.3f}"
      if "rms_gap" in cmp_:
        lo, hi = cmp_["rms_gap_ci95"]
        gap = f"{cmp_['rms_gap']:.3f} [{lo:.3f}, {hi:.3f}]"
    label = f"**{pred}**" if pred == "model" else pred
    lines.append(
      f"| {label} | {delta} | {gap} | {mixtures.fmt_ci(pp['kl'], 'median', 2)} | "
      f"{mixtures.fmt(pp['kl']['mean'], 2)} | {mixtures.fmt_ci(pp['tv'])} | "
      f"{mixtures.fmt_ci(pp['r'], digits=2)} | {mixtures.fmt_ci(pp['other'])} | "
      f"{res['max_other']:.3f} |"
    )
  return lines


def markdown(results: dict) -> str:
  lines = []
  for name, res in results.items():
    for condition, cond in res["conditions"].items():
      model = cond["model"]
      lines += [
        f"### {name} — {condition} ({len(res['workdirs'])} seed(s): {', '.join(res['workdirs'])}; "
        f"{res['prompts']} prompts per d per seed, {res['mixing']} mixing, "
        f"{res['lines'][condition]} lines)",
        "",
        f"single-task P(answer): {model['single_task'][0]:.3f} (task 1 at d = 0) / "
        f"{model['single_task'][1]:.3f} (task 0 at d = 1). Per-prompt columns pool the mixed "
        "prompts "
        "(0 < d < 1); KL against the realised shares s.",
        "",
      ]
      lines += summary_table("predictor", cond, res.get("reference")) + [""]
      if len(res["workdirs"]) > 1:
        pp = model["per_prompt"]
        lines += [
          "per seed: single-task "
          + " · ".join(f"{a:.3f} / {b:.3f}" for a, b in model["single_task_per_seed"])
          + "; "
          + "; ".join(
            f"{k} " + " · ".join(f"{x:.3f}" for x in pp[k]["per_seed"])
            for k in ("tv", "r", "other")
          ),
          "",
        ]
      ref = res.get("reference_curve", {})
      lines += [
        "| d | P(task 0) [95 %] | P(task 1) [95 %] | P(elsewhere) | KL median | TV | r (of 2) | "
        "reference P0 / P1 |",
        "|---|---|---|---|---|---|---|---|",
      ]
      for r in model["rows"]:
        rf = ref.get(str(r["d"]))
        p0, p1 = r["p_task0"], r["p_task1"]
        lines.append(
          f"| {r['d']:.1f} | {p0['mean']:.3f} [{p0['ci95'][0]:.3f}, {p0['ci95'][1]:.3f}] | "
          f"{p1['mean']:.3f} [{p1['ci95'][0]:.3f}, {p1['ci95'][1]:.3f}] | {r['other']:.3f} | "
          f"{r['kl_median']:.2f} | {r['tv']:.3f} | {r['r']:.2f} | "
          + (f"{rf[0]:.3f} / {rf[1]:.3f} |" if rf else "– |")
        )
      lines.append("")
  return "\n".join(lines)


def run_groups(specs: list[str]) -> list[tuple[str, list[str]]]:
  """``--workdir`` entries → (name, [directories]); see the module docstring."""
  out = []
  for spec in specs:
    name, _, dirs = spec.rpartition("=")
    paths = [x for x in dirs.split(",") if x]
    if not paths:
      raise ValueError(f"--workdir {spec!r}: no directory")
    if not name:
      base = pathlib.Path(paths[0]).name
      name = re.sub(r"_s\d+$", "", base) if len(paths) > 1 else base
    out.append((name, paths))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--workdir",
    nargs="+",
    required=True,
    help="training run directories; seeds of one recipe joined by commas, optionally "
    "NAME=dir1,dir2",
  )
  ap.add_argument("--out", required=True)
  ap.add_argument("--prompts", type=int, default=1000, help="prompts per mixing value and seed")
  ap.add_argument("--mixing", choices=("bernoulli", "exact"), default="bernoulli")
  ap.add_argument(
    "--conditions", default="standard", help=f"comma-separated, of {', '.join(CONDITIONS)}"
  )
  ap.add_argument(
    "--reference", default="", help="reference run name (default: by the run's task_weights)"
  )
  ap.add_argument(
    "--tables-dir", default=None, help="icl_tables directory (default ../shared/data/icl_tables)"
  )
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.tables_dir:
    tables.set_tables_dir(args.tables_dir)

  def analyse_runs(out: pathlib.Path) -> dict:
    results = {}
    conditions = [c for c in args.conditions.split(",") if c]
    for name, dirs in run_groups(args.workdir):
      loaded = [load_model(wd) for wd in dirs]
      config = loaded[0].config
      ref_name = (
        args.reference or REFERENCE_RUNS[config["icl"]["family"], config["icl"]["task_weights"]]
      )
      ref = reference_curve(ref_name)
      res = {
        "workdirs": dirs,
        "mixing": args.mixing,
        "prompts": args.prompts,
        "reference": ref_name,
        "reference_curve": {str(k): v for k, v in ref.items()},
        "conditions": {},
        "lines": {},
      }
      for condition in conditions:
        res["lines"][condition] = condition_setup(config, condition)[0]
        curves = [
          curve(run.model, run.config, args.prompts, args.seed, args.mixing, condition)
          for run in loaded
        ]
        cond = analyse(
          curves, ref, seed=args.seed, n_outputs=mixtures.OUTPUTS.get(config["icl"]["family"])
        )
        res["conditions"][condition] = cond
        plot(
          f"{name} ({condition})",
          cond,
          ref,
          ref_name,
          curves,
          out / f"calibration_{name}_{condition}.png",
        )
        m = cond["model"]
        print(
          f"{name} [{condition}]: mean |Δ| to {ref_name} {m['compare']['mean_abs_delta']:.3f}, RMS "
          "gap "
          f"{m['compare']['rms_gap']:.3f}; per-prompt TV {m['per_prompt']['tv']['mean']:.3f} "
          f"(one-hot oracle {cond['one-hot oracle']['per_prompt']['tv']['mean']:.3f}); "
          f"P(elsewhere) max {m['max_other']:.3f}",
          flush=True,
        )
      results[name] = res
    return results

  def overlay_runs(results: dict, out: pathlib.Path) -> None:
    if len(results) > 1:
      overlay(results, out / "calibration_runs.png")

  return cli.run(args.out, "calibration", analyse_runs, markdown, overlay_runs)


if __name__ == "__main__":
  sys.exit(main())
