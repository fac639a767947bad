"""Mixed-prompt evaluation of from-scratch models (spec §2.4): calibration curves beside the reference runs.

  python -m projects.icl_superposition.calibrate --workdir workdirs/icl/uniform workdirs/icl/skewed \\
      --out workdirs/icl/calibration [--prompts 1000] [--mixing bernoulli|exact]

For each mixing value d ∈ {0, 0.1, …, 1}: ``--prompts`` prompts whose in-context lines are each task 0
(``config.icl.test_pair[0]``, retrieve2; ``random``: a random pair of the family's tasks per prompt, as the
paper's mod-10 runs) with probability d and task 1 (retrieve6) otherwise (``bernoulli``,
the reference code's protocol; ``exact`` uses exactly round(d·N) lines of task 0), with the run's own
number of lines; a fresh query. Per d: mean P(answer of task 0), P(answer of task 1) (each the teacher-forced
P(letter, "\\n")) with 95% intervals (1.96 standard errors), P(elsewhere) = 1 − their sum, KL(target ‖ P) with
target (d, 1 − d), and r (task answers among the top-2 complete outputs). Reference: the run of
``from_scratch_reference/icl_pretraining_calibration_curves.csv`` named by ``--reference`` (default: copy /
copy_9010 for uniform / skewed retrieval training, bias_add_simple / bias_add_simple_9010 for mod_add) and the
mean |Δ| to it over the 22 points, with a 95 % interval from resampling the prompts (``compare``). Writes
``calibration.json``, ``calibration.md``, one PNG per run and, for several runs, ``calibration_runs.png`` (P(task 0)
of every run in one plot).
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import numpy as np
from flax import nnx

from superpose import nn
from superpose.nn import config as nn_config
from superpose.train import checkpoint as ckpt_lib
from superpose.train.config import ConfigError

from projects.icl_superposition import chars, scoring, tables, tasks as tasks_lib

MIXING = tuple(round(0.1 * i, 1) for i in range(11))
REFERENCE_RUNS = {("retrieval", "uniform"): "eval_copy_6_384_6_mix_1",
                  ("retrieval", "skewed"): "eval_copy_9010_6_384_6_mix_1",
                  ("mod_add", "uniform"): "eval_bias_add_simple_6_384_6_mix_1",
                  ("mod_add", "skewed"): "eval_bias_add_simple_9010_6_384_6_mix_1"}


def load_run(workdir: str | pathlib.Path) -> tuple[dict, nnx.Module]:
  """(config, model with the newest checkpoint's parameters) of any training run of this repository."""
  workdir = pathlib.Path(workdir)
  config = ckpt_lib.run_config(workdir)
  cfg = nn_config.from_dict(config["model"])
  graphdef, params = ckpt_lib.restore_module(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0)),
                                             ckpt_lib.checkpoint_dir(workdir))
  return config, nnx.merge(graphdef, params)


def mixed_prompts(task0: str, task1: str, n_examples: int, d: float, n: int, rng: np.random.Generator,
                  mixing: str = "bernoulli", family: str | None = None) -> list[tasks_lib.Prompt]:
  """``n`` prompts with task 0 at fraction d; ``answers == (answer of task 0, answer of task 1)``.
  ``task0 == task1 == 'random'``: a fresh pair of distinct tasks of ``family`` per prompt."""
  out = []
  names = tasks_lib.FAMILIES[family].task_names if task0 == "random" else None
  for _ in range(n):
    if names is not None:
      task0, task1 = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    k0 = int(rng.binomial(n_examples, d)) if mixing == "bernoulli" else int(round(d * n_examples))
    out.append(tasks_lib.multi_task_prompt([task0, task1], [k0 / n_examples, 1 - k0 / n_examples], n_examples, rng))
  return out


def evaluation_pair(config: dict) -> tuple[str, str]:
  pair = config["icl"]["test_pair"]
  if pair == "random":
    return "random", "random"
  task0, task1 = pair.split(",")
  return task0, task1


def curve(model, config: dict, n_prompts: int, seed: int = 0, mixing: str = "bernoulli",
          batch_size: int = 50, progress: bool = True) -> list[dict]:
  task0, task1 = evaluation_pair(config)
  n_examples, family = config["icl"]["n_examples"], config["icl"]["family"]
  rows = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n_prompts * len(MIXING), desc="calibration", unit="prompt", file=sys.stderr)
  for j, d in enumerate(MIXING):
    rng = np.random.default_rng([seed, j, 31])
    prompts = mixed_prompts(task0, task1, n_examples, d, n_prompts, rng, mixing, family)
    s = scoring.score(model, [p.text for p in prompts], [p.answers for p in prompts], chars.VOCAB.encode,
                      prefix=[chars.VOCAB.bos_id], batch_size=batch_size, top_first=4,
                      progress=bar.update if bar else None)
    p0, p1, other = s.answer_prob[:, 0], s.answer_prob[:, 1], s.other
    kl = scoring.kl_target_model(np.stack([np.full(n_prompts, d), np.full(n_prompts, 1 - d)], 1), s.answer_logp)
    stats = {key: scoring.mean_ci(x) for key, x in
             (("p_task0", p0), ("p_task1", p1), ("p_other", other), ("kl", kl), ("r", s.r))}
    rows.append({"d": d, **stats, "n": n_prompts, "samples": np.stack([p0, p1], 1)})  # per prompt, for `compare`
  if bar:
    bar.close()
  return rows


def reference_curve(run: str, path: str | pathlib.Path | None = None) -> dict[float, tuple[float, float, float]]:
  path = pathlib.Path(path) if path else tables.tables_dir() / "from_scratch_reference" / "icl_pretraining_calibration_curves.csv"
  if not path.exists():
    raise FileNotFoundError(f"{path}: the reference curves (../shared/data/icl_tables/from_scratch_reference)")
  out = {}
  with path.open() as f:
    for row in csv.DictReader(f):
      if row["run_name"] == run:
        out[round(float(row["p_task0_in_context"]), 1)] = (float(row["mean_P_ans_task0"]),
                                                         float(row["mean_P_ans_task1"]), float(row["mean_P_other"]))
  if not out:
    raise ValueError(f"{path}: no run named {run!r}")
  return out


def compare(rows: list[dict], ref: dict, draws: int = 2000, seed: int = 0) -> dict:
  """Mean over the mixing values of |P_ours − P_ref| for task 0 and task 1 (and both together).

  Rows that carry their per-prompt ``samples`` ((n, 2) P(task 0), P(task 1); what ``curve`` returns) also give
  ``mean_abs_delta_ci95``: the 2.5 / 97.5 percentiles of the mean |Δ| over ``draws`` bootstrap resamples of the
  prompts (independently per mixing value, P(task 0) and P(task 1) resampled together)."""
  pts = [r for r in rows if r["d"] in ref]
  d0 = [abs(r["p_task0"]["mean"] - ref[r["d"]][0]) for r in pts]
  d1 = [abs(r["p_task1"]["mean"] - ref[r["d"]][1]) for r in pts]
  out = {"mean_abs_delta_task0": float(np.mean(d0)), "mean_abs_delta_task1": float(np.mean(d1)),
         "mean_abs_delta": float(np.mean(d0 + d1)), "max_abs_delta": float(max(d0 + d1)), "points": len(d0)}
  if pts and all("samples" in r for r in pts):
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for r in pts:
      x = np.asarray(r["samples"], np.float64)
      means = x[rng.integers(0, len(x), (draws, len(x)))].mean(1)           # (draws, 2)
      total += np.abs(means - np.asarray(ref[r["d"]][:2])).sum(1)
    lo, hi = np.percentile(total / (2 * len(pts)), [2.5, 97.5])
    out["mean_abs_delta_ci95"] = [float(lo), float(hi)]
  return out


def plot(name: str, rows: list[dict], ref: dict | None, ref_name: str, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  d = np.array([r["d"] for r in rows])
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for key, label, color in (("p_task0", "P(answer of task 0)", "C0"),
                            ("p_task1", "P(answer of task 1)", "C1"),
                            ("p_other", "P(elsewhere)", "C7")):
    m = np.array([r[key]["mean"] for r in rows])
    e = np.array([r[key]["ci95"] for r in rows])
    ax.errorbar(d, m, yerr=e, color=color, marker="o", ms=3, capsize=2, label=label)
  if ref:
    ds = sorted(ref)
    ax.plot(ds, [ref[x][0] for x in ds], "--", color="C0", alpha=0.6, label=f"reference {ref_name}")
    ax.plot(ds, [ref[x][1] for x in ds], "--", color="C1", alpha=0.6)
  ax.plot([0, 1], [0, 1], ":", color="k", lw=0.8, label="calibrated (P = d)")
  ax.set(xlabel="d = fraction of task-0 lines in context", ylabel="probability", ylim=(-0.02, 1.02),
         title=f"task superposition: {name}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def overlay(results: dict, path: pathlib.Path) -> None:
  """P(answer of task 0) against d for several runs in one plot; each reference curve once (black, own line style)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  refs_drawn = set()
  for i, (name, res) in enumerate(results.items()):
    rows = res["rows"]
    ax.errorbar([r["d"] for r in rows], [r["p_task0"]["mean"] for r in rows],
                yerr=[r["p_task0"]["ci95"] for r in rows], color=f"C{i}", marker="o", ms=3, capsize=2,
                label=f"{name} (mean |Δ| {res['compare']['mean_abs_delta']:.3f})")
    if res["reference"] not in refs_drawn:
      style = ("--", "-.", (0, (5, 1, 1, 1, 1, 1)))[len(refs_drawn) % 3]     # one line style per reference run
      refs_drawn.add(res["reference"])
      ref = sorted((float(d), v[0]) for d, v in res["reference_curve"].items())
      ax.plot([d for d, _ in ref], [p for _, p in ref], linestyle=style, color="k", alpha=0.6,
              label=f"reference {res['reference']}")
  ax.plot([0, 1], [0, 1], ":", color="k", lw=0.8, label="calibrated (P = d)")
  ax.set(xlabel="d = fraction of task-0 lines in context", ylabel="P(answer of task 0)", ylim=(-0.02, 1.02),
         title="task superposition: runs side by side")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = []
  for name, res in results.items():
    cmp_ = res.get("compare")
    lines += [f"### {name} ({res['workdir']}, {res['rows'][0]['n']} prompts per d, {res['mixing']} mixing)", ""]
    if cmp_:
      ci = cmp_.get("mean_abs_delta_ci95")
      lines += [f"reference {res['reference']}: mean |Δ| = {cmp_['mean_abs_delta']:.3f}"
                + (f" (95 % bootstrap {ci[0]:.3f}–{ci[1]:.3f})" if ci else "") + " "
                f"(task 0 {cmp_['mean_abs_delta_task0']:.3f}, task 1 {cmp_['mean_abs_delta_task1']:.3f}; "
                f"max {cmp_['max_abs_delta']:.3f}) over {cmp_['points']} mixing values", ""]
    lines += ["| d | P(task 0) ± 95% | P(task 1) ± 95% | P(elsewhere) | KL(target‖P) | r (of 2) | reference P0 / P1 |",
              "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
      ref = res.get("reference_curve", {}).get(str(r["d"]))
      lines.append(f"| {r['d']:.1f} | {r['p_task0']['mean']:.3f} ± {r['p_task0']['ci95']:.3f} | "
                   f"{r['p_task1']['mean']:.3f} ± {r['p_task1']['ci95']:.3f} | {r['p_other']['mean']:.3f} | "
                   f"{r['kl']['mean']:.3f} | {r['r']['mean']:.2f} | "
                   + (f"{ref[0]:.3f} / {ref[1]:.3f} |" if ref else "– |"))
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", nargs="+", required=True, help="training run directories")
  ap.add_argument("--out", required=True)
  ap.add_argument("--prompts", type=int, default=1000)
  ap.add_argument("--mixing", choices=("bernoulli", "exact"), default="bernoulli")
  ap.add_argument("--reference", default="", help="reference run name (default: by the run's task_weights)")
  ap.add_argument("--tables-dir", default=None, help="icl_tables directory (default ../shared/data/icl_tables)")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.tables_dir:
    tables.set_tables_dir(args.tables_dir)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = {}
  try:
    for wd in args.workdir:
      config, model = load_run(wd)
      name = pathlib.Path(wd).name
      rows = curve(model, config, args.prompts, args.seed, args.mixing)
      ref_name = args.reference or REFERENCE_RUNS[config["icl"]["family"], config["icl"]["task_weights"]]
      ref = reference_curve(ref_name)
      cmp_ = compare(rows, ref)
      rows = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
      results[name] = {"workdir": str(wd), "mixing": args.mixing, "rows": rows, "reference": ref_name,
                       "reference_curve": {str(k): v for k, v in ref.items()}, "compare": cmp_}
      plot(name, rows, ref, ref_name, out / f"calibration_{name}.png")
      print(f"{name}: mean |Δ| to {ref_name} = {cmp_['mean_abs_delta']:.3f} "
            f"(95 % {cmp_['mean_abs_delta_ci95'][0]:.3f}–{cmp_['mean_abs_delta_ci95'][1]:.3f}); "
            f"P(elsewhere) max {max(r['p_other']['mean'] for r in rows):.3f}", flush=True)
  except (FileNotFoundError, ValueError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if len(results) > 1:
    overlay(results, out / "calibration_runs.png")
  (out / "calibration.json").write_text(json.dumps(results, indent=1))
  (out / "calibration.md").write_text(markdown(results))
  print(markdown(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
