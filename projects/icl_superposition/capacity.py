"""More tasks in one prompt, and model size: r, per-prompt KL, TV and P(elsewhere) against K and
size (spec §5).

  python -m projects.icl_superposition.capacity \\
      --workdir d48=~/runs/icl/mod_add_uniform_d48_s0,~/runs/icl/mod_add_uniform_d48_s1 d96=... \\
      d192=... \\
      --out DIR [--prompts 300] [--ks 1,2,3,4,5] [--shares uniform,dirichlet]

Each ``--workdir`` entry is one model size, its training seeds joined by commas (``NAME=dir1,dir2``;
see ``calibrate``). For K ∈ ``--ks`` and each share law, ``--prompts`` prompts (the same prompts for
every model: a paired comparison across sizes) with K distinct tasks of the run's family drawn per
prompt and the run's number of lines: ``uniform`` shares 1/K each (exact counts), ``dirichlet``
shares drawn from Dirichlet(1, …, 1) and the lines' tasks drawn with them (multinomial counts). K =
1 (single-task prompts) gives the single-task accuracy. Per prompt (``mixtures``): P(answer of each
task), r (task answers among the K most likely complete outputs; the greedy completions of the K + 2
most likely first tokens are the candidates), KL(s ‖ P) against the realised shares, TV(s, P) and
P(elsewhere); the diagonal, soft-oracle and one-hot-oracle rows on the same prompts. Intervals:
bootstrap over seeds and prompts. Writes ``capacity.json``, ``capacity.md`` and ``capacity.png``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from superpose.train.loader import load_model

from projects.icl_superposition import calibrate, chars, cli, mixtures, scoring, tasks as tasks_lib

SHARES = ("uniform", "dirichlet")
REFERENCES = mixtures.REFERENCES + (mixtures.GUESS,)


def k_prompts(
  family: str, k: int, shares: str, n_examples: int, n: int, rng: np.random.Generator
) -> tuple[list[tasks_lib.Prompt], np.ndarray]:
  """``n`` prompts of ``k`` distinct random tasks of ``family`` and their nominal shares (n, k)."""
  names = tasks_lib.FAMILIES[family].task_names
  if not 1 <= k <= len(names):
    raise ValueError(f"K={k}: {family} has {len(names)} tasks")
  if shares not in SHARES:
    raise ValueError(f"shares {shares!r}: one of {', '.join(SHARES)}")
  prompts, nominal = [], []
  for _ in range(n):
    chosen = [names[int(i)] for i in rng.choice(len(names), size=k, replace=False)]
    if shares == "uniform":
      w = np.full(k, 1.0 / k)
      fractions = list(w)
    else:
      w = rng.dirichlet(np.ones(k))
      fractions = list(rng.multinomial(n_examples, w) / n_examples)
    prompts.append(tasks_lib.multi_task_prompt(chosen, fractions, n_examples, rng))
    nominal.append(w)
  return prompts, np.asarray(nominal)


def parameter_count(model) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def conditions(ks, share_laws) -> list[tuple[int, str]]:
  return [(k, law) for k in ks for law in share_laws if not (k == 1 and law != "uniform")]


def evaluate(
  model, config: dict, k: int, shares: str, n: int, seed: int = 0, batch_size: int = 50
) -> dict:
  family, n_examples = config["icl"]["family"], config["icl"]["n_examples"]
  prompts, nominal = k_prompts(
    family, k, shares, n_examples, n, np.random.default_rng([seed, k, SHARES.index(shares), 71])
  )
  s = scoring.score(
    model,
    [p.text for p in prompts],
    [p.answers for p in prompts],
    chars.VOCAB.encode,
    prefix=[chars.VOCAB.bos_id],
    batch_size=min(batch_size, n),
    top_first=k + 2,
  )
  return {
    "pred": mixtures.from_scores(s),
    "shares": mixtures.shares_of(prompts, k),
    "nominal": nominal,
  }


def analyse(
  per_seed: list[dict], seed: int = 0, draws: int = 2000, n_outputs: int | None = None
) -> dict:
  """Summaries of the model (its seeds pooled) and of the reference predictors on the first seed's
  prompts (every seed sees the same prompts)."""
  out = {
    "model": mixtures.summarize(
      [mixtures.per_prompt(e["pred"], e["shares"]) for e in per_seed], draws=draws, seed=seed
    )
  }
  first = per_seed[0]
  refs = mixtures.references(
    first["nominal"], first["shares"], np.random.default_rng([seed, 83]), n_outputs
  )
  for name, pred in refs.items():
    out[name] = mixtures.summarize(
      [mixtures.per_prompt(pred, first["shares"])], draws=draws, seed=seed
    )
  out["p_answers"] = [float(x) for x in np.concatenate([e["pred"].p for e in per_seed]).mean(0)]
  return out


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
  panels = (
    ("r", "r / K (task answers in the top K)", True),
    ("kl", "per-prompt KL(s ‖ P), median", False),
    ("tv", "per-prompt TV(s, P)", False),
    ("other", "P(elsewhere)", False),
  )
  sizes = list(results["models"])
  for ax, (key, title, per_k) in zip(axes, panels):
    for i, size in enumerate(sizes):
      for law, style in (("uniform", "-"), ("dirichlet", "--")):
        pts = [(c["k"], c["models"][size]) for c in results["conditions"] if c["shares"] == law]
        if not pts:
          continue
        ks = np.array([k for k, _ in pts], float)
        stat = "median" if key == "kl" else "mean"
        m = np.array([e[key][stat] for _, e in pts])
        lo, hi = np.array(
          [e[key][f"{stat}_ci95" if stat == "median" else "ci95"] for _, e in pts]
        ).T
        scale = ks if per_k else 1.0
        ax.errorbar(
          ks + 0.04 * (i - 1),
          m / scale,
          yerr=[(m - lo) / scale, (hi - m) / scale],
          color=f"C{i}",
          ls=style,
          marker="o",
          ms=3,
          capsize=2,
          label=f"{size}, {law}",
        )
    for ref_name, color, keys in (
      ("one-hot oracle", "0.5", ("tv", "r")),
      (mixtures.GUESS, "0.75", ("r", "tv")),
    ):
      if key not in keys:
        continue
      for law, style in (("uniform", "-"), ("dirichlet", "--")):
        ref = [
          (c["k"], c[ref_name][key]["mean"])
          for c in results["conditions"]
          if c["shares"] == law and ref_name in c
        ]
        if ref:
          ks = np.array([k for k, _ in ref], float)
          ax.plot(
            ks,
            np.array([v for _, v in ref]) / (ks if per_k else 1.0),
            ls=style,
            color=color,
            lw=1,
            label=f"{ref_name}, {law}",
          )
    ax.set(xlabel="K tasks in the prompt", title=title)
    ax.set_xticks(sorted({c["k"] for c in results["conditions"]}))
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = [
    f"{results['prompts']} prompts per condition and seed (the same prompts for every size); "
    "intervals: "
    "bootstrap over seeds and prompts. KL against the realised shares; r of K.",
    "",
    "| model | seeds | parameters |",
    "|---|---|---|",
  ]
  for size, m in results["models"].items():
    lines.append(f"| {size} | {len(m['workdirs'])} | {m['parameters']:,} |")
  lines += [
    "",
    "| K | shares | predictor | r (of K) [95 %] | KL median [95 %] | mean KL | TV [95 %] | "
    "P(elsewhere) [95 %] | mean P(answer) per task |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in results["conditions"]:
    rows = [(size, e) for size, e in c["models"].items()] + [
      (name, c[name]) for name in REFERENCES if name in c
    ]
    for name, e in rows:
      is_model = name in results["models"]
      pa = ", ".join(f"{x:.2f}" for x in e["p_answers"]) if "p_answers" in e else ""
      lines.append(
        f"| {c['k']} | {c['shares']} | {'**' + name + '**' if is_model else name} | "
        f"{mixtures.fmt_ci(e['r'], digits=2)} | {mixtures.fmt_ci(e['kl'], 'median', 2)} | "
        f"{mixtures.fmt(e['kl']['mean'], 2)} | {mixtures.fmt_ci(e['tv'])} | "
        f"{mixtures.fmt_ci(e['other'])} | {pa} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--workdir", nargs="+", required=True, help="one entry per model size: NAME=seed_dir1,seed_dir2"
  )
  ap.add_argument("--out", required=True)
  ap.add_argument("--prompts", type=int, default=300)
  ap.add_argument("--ks", default="1,2,3,4,5")
  ap.add_argument("--shares", default="uniform,dirichlet")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--add",
    action="store_true",
    help="add these models to OUT/capacity.json (same prompts, conditions and seed) instead of "
    "starting anew",
  )
  args = ap.parse_args(argv)

  def analyse_sizes(out: pathlib.Path) -> dict:
    ks = [int(k) for k in args.ks.split(",")]
    laws = [x for x in args.shares.split(",") if x]
    bad = [x for x in laws if x not in SHARES]
    if bad:
      raise ValueError(f"--shares {','.join(bad)}: one of {', '.join(SHARES)}")
    groups = calibrate.run_groups(args.workdir)
    loaded = {name: [load_model(d) for d in dirs] for name, dirs in groups}
    families = {run.config["icl"]["family"] for runs in loaded.values() for run in runs}
    if len(families) != 1:
      raise ValueError(
        f"runs of different families ({', '.join(sorted(families))}) cannot share prompts"
      )
    family = next(iter(families))
    n_outputs = mixtures.OUTPUTS.get(family)
    conds = conditions(ks, laws)
    results = {
      "prompts": args.prompts,
      "seed": args.seed,
      "family": family,
      "conditions": [{"k": k, "shares": law, "models": {}} for k, law in conds],
      "models": {},
    }
    if args.add:
      results = json.loads((out / "capacity.json").read_text())
      have = [(c["k"], c["shares"]) for c in results["conditions"]]
      if (
        have != conds
        or results["prompts"] != args.prompts
        or results.get("seed") != args.seed
        or results.get("family") != family
      ):
        raise ValueError(
          f"--add: {out / 'capacity.json'} was made with other conditions, prompts, seed or family"
        )
    for name, dirs in groups:
      results["models"][name] = {
        "workdirs": dirs,
        "parameters": parameter_count(loaded[name][0].model),
      }
    bar = tqdm(
      total=len(conds) * sum(len(r) for r in loaded.values()),
      desc="capacity",
      unit="condition",
      file=sys.stderr,
    )
    for entry in results["conditions"]:
      k, law = entry["k"], entry["shares"]
      for name, runs in loaded.items():
        evals = []
        for run in runs:
          evals.append(evaluate(run.model, run.config, k, law, args.prompts, args.seed))
          bar.update(1)
        res = analyse(evals, seed=args.seed, n_outputs=n_outputs)
        entry["models"][name] = {**res["model"], "p_answers": res["p_answers"]}
        for ref in REFERENCES:
          entry[ref] = res[ref]
      print(
        "  ".join(
          f"K={k} {law} {name}: r {e['r']['mean']:.2f} TV {e['tv']['mean']:.3f} "
          f"other {e['other']['mean']:.3f}"
          for name, e in entry["models"].items()
        ),
        flush=True,
      )
    bar.close()
    return results

  return cli.run(
    args.out,
    "capacity",
    analyse_sizes,
    markdown,
    lambda results, out: plot(results, out / "capacity.png"),
  )


if __name__ == "__main__":
  sys.exit(main())
