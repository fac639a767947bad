"""Where the probability of a mixed prompt goes: the mass on the answer of EVERY task of the family.

  python -m projects.icl_superposition.task_mass --workdir workdirs/icl/mod_add_skewed \\
      --pairs plus2,plus6 plus1,plus3 plus6,plus8 --out workdirs/icl/task_mass [--prompts 100]

The calibration curves only look at the two tasks in the prompt, so probability on a third task's
answer counts as "elsewhere". Here, for fixed pairs (task 0, task 1) and d ∈ {0, 0.1, …, 1} (exactly
round(d·N) lines of task 0, the rest task 1, shuffled; the run's own N), every task's answer to the
query is scored (teacher-forced P(answer, "\\n"), the calibration protocol) and averaged over
``--prompts`` prompts. For the from-scratch families the tasks' answers to one query are distinct (8
distinct letters; x + k mod 10), so the masses add up to at most 1. For ``mod_add`` the table also
gives the circular mean offset k̄ of the mass (the k a model predicts "on average") beside the
interpolation d·k0 + (1 − d)·k1 along the shorter arc. Writes ``task_mass.json``, ``task_mass.md``
and one heat map per run and pair.

``--copy-source`` (mod_add, whose queries repeat context inputs): per prompt, which in-context line
with the query's input x the model's choice between the two answers agrees with — the last such
line, the first, or the majority of them — against the majority task of the whole prompt. A model
that copies the answer of one matching line agrees with that line's task on every prompt; one that
estimates the task from all lines follows the prompt majority.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from superpose.train.loader import load_model

from projects.icl_superposition import calibrate, chars, cli, scoring, tables, tasks as tasks_lib

DISTINCT_FAMILIES = ("retrieval", "mod_add")


def mass(
  model, config: dict, task0: str, task1: str, n_prompts: int, seed: int = 0, batch_size: int = 50
) -> dict:
  """{'tasks': family task names, 'd': mixing values, 'mass': (len(d), n_tasks) mean
  probabilities}."""
  family = config["icl"]["family"]
  if family not in DISTINCT_FAMILIES:
    raise ValueError(
      f"task_mass: family {family!r} can give two tasks the same answer; only "
      f"{', '.join(DISTINCT_FAMILIES)} are supported"
    )
  names = tasks_lib.FAMILIES[family].task_names
  for t in (task0, task1):
    if t not in names:
      raise ValueError(f"task_mass: {t!r} is not a task of {family} ({', '.join(names)})")
  n_examples = config["icl"]["n_examples"]
  rows = []
  for j, d in enumerate(calibrate.MIXING):
    prompts = calibrate.mixed_prompts(
      task0, task1, n_examples, d, n_prompts, np.random.default_rng([seed, j, 53]), mixing="exact"
    )
    answers = [tuple(tasks_lib.get_task(t).answer(p.query) for t in names) for p in prompts]
    s = scoring.score(
      model,
      [p.text for p in prompts],
      answers,
      chars.VOCAB.encode,
      prefix=[chars.VOCAB.bos_id],
      batch_size=min(batch_size, n_prompts),
      top_first=1,
    )
    rows.append(s.answer_prob.mean(0))
  return {"tasks": list(names), "d": list(calibrate.MIXING), "mass": np.asarray(rows)}


def copy_source(
  model, config: dict, task0: str, task1: str, n_prompts: int, seed: int = 0, batch_size: int = 50
) -> list[dict]:
  """mod_add: per d (0 < d < 1), how often argmax(P(task 0 answer), P(task 1 answer)) names the task
  of the last / first / majority of the in-context lines whose input is the query's, and of the
  prompt's majority."""
  if config["icl"]["family"] != "mod_add":
    raise ValueError("copy_source: only mod_add repeats the query's input in the context")
  n_examples = config["icl"]["n_examples"]
  rows = []
  for j, d in enumerate(calibrate.MIXING):
    if not 0 < d < 1:
      continue
    prompts = calibrate.mixed_prompts(
      task0, task1, n_examples, d, n_prompts, np.random.default_rng([seed, j, 59]), mixing="exact"
    )
    matches = [[lab for (x, _), lab in zip(p.examples, p.labels) if x == p.query] for p in prompts]
    keep = [i for i, m in enumerate(matches) if m]
    if not keep:
      continue
    prompts, matches = [prompts[i] for i in keep], [matches[i] for i in keep]
    s = scoring.score(
      model,
      [p.text for p in prompts],
      [p.answers for p in prompts],
      chars.VOCAB.encode,
      prefix=[chars.VOCAB.bos_id],
      batch_size=min(batch_size, len(prompts)),
      top_first=1,
    )
    choice = np.argmax(s.answer_prob, axis=1)  # 0 = task 0's answer, 1 = task 1's
    frac1 = np.array([np.mean(m) for m in matches])
    decided = frac1 != 0.5
    prompt_major = 0 if d > 0.5 else 1 if d < 0.5 else -1
    rows.append(
      {
        "d": d,
        "prompts": len(prompts),
        "mean_matches": float(np.mean([len(m) for m in matches])),
        "last": float(np.mean(choice == [m[-1] for m in matches])),
        "first": float(np.mean(choice == [m[0] for m in matches])),
        "match_majority": float(np.mean(choice[decided] == (frac1[decided] > 0.5)))
        if decided.any()
        else None,
        "prompt_majority": float(np.mean(choice == prompt_major)) if prompt_major >= 0 else None,
      }
    )
  return rows


def _circular(k: np.ndarray, w: np.ndarray, period: int = 10) -> float:
  """Circular weighted mean of offsets k (mod ``period``), in [0, period)."""
  ang = 2 * np.pi * np.asarray(k, float) / period
  z = (np.asarray(w) * np.exp(1j * ang)).sum()
  return float(np.round(np.angle(z) / (2 * np.pi) * period % period, 6) % period)


def offsets(res: dict, task0: str, task1: str) -> list[dict]:
  """mod_add: per d, the circular mean offset of the mass and the interpolation of the two tasks'
  k."""
  ks = np.array([int(t.removeprefix("plus")) for t in res["tasks"]])
  k0, k1 = int(task0.removeprefix("plus")), int(task1.removeprefix("plus"))
  diff = (k0 - k1 + 5) % 10 - 5  # k0 − k1 along the shorter arc
  out = []
  for d, m in zip(res["d"], res["mass"]):
    out.append(
      {
        "d": d,
        "mean_offset": _circular(ks, m),
        "interpolated": float((k1 + d * diff) % 10),
        "argmax_task": res["tasks"][int(np.argmax(m))],
      }
    )
  return out


def plot(name: str, res: dict, task0: str, task1: str, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  im = ax.imshow(
    res["mass"],
    aspect="auto",
    origin="lower",
    vmin=0,
    vmax=1,
    cmap="viridis",
    extent=(-0.5, len(res["tasks"]) - 0.5, -0.05, 1.05),
  )
  ax.set_xticks(range(len(res["tasks"])), res["tasks"], rotation=45, fontsize=7)
  for t, c in ((task0, "C1"), (task1, "C3")):
    ax.axvline(res["tasks"].index(t), color=c, lw=1, ls="--")
  ax.set(xlabel="answer of task", ylabel=f"d = fraction of {task0} lines")
  ax.set_title(
    f"{name}\nmass per task, {task0} × {task1}", fontsize=9
  )  # two lines: run names are long
  fig.colorbar(im, ax=ax, label="mean probability")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = []
  for name, runs in results.items():
    for pair, res in runs["pairs"].items():
      task0, task1 = pair.split(",")
      lines += [
        f"### {name}: {task0} (fraction d) × {task1} ({runs['prompts']} prompts per d, exact "
        "mixing)",
        "",
        "| d | "
        + " | ".join(res["tasks"])
        + (" | mean offset | interpolated |" if "offsets" in res else " |"),
        "|---" * (len(res["tasks"]) + 1 + 2 * ("offsets" in res)) + "|",
      ]
      for i, (d, m) in enumerate(zip(res["d"], res["mass"])):
        cells = " | ".join(
          f"**{x:.2f}**" if t in (task0, task1) else f"{x:.2f}" for t, x in zip(res["tasks"], m)
        )
        extra = ""
        if "offsets" in res:
          o = res["offsets"][i]
          extra = f" {o['mean_offset']:.1f} | {o['interpolated']:.1f} |"
        lines.append(f"| {d:.1f} | {cells} |" + extra)
      lines.append("")
      if res.get("copy_source"):
        fmt = lambda v: "–" if v is None else f"{v:.2f}"
        lines += [
          f"Copy source ({task0} × {task1}): the fraction of prompts whose choice between the two "
          "answers "
          "is the task of the last / first / majority of the lines with the query's input, or of "
          "the "
          "prompt's majority.",
          "",
          "| d | prompts | matching lines | last | first | majority of matching | prompt majority "
          "|",
          "|---|---|---|---|---|---|---|",
        ]
        lines += [
          f"| {r['d']:.1f} | {r['prompts']} | {r['mean_matches']:.1f} | {r['last']:.2f} | "
          f"{r['first']:.2f} | "
          f"{fmt(r['match_majority'])} | {fmt(r['prompt_majority'])} |"
          for r in res["copy_source"]
        ]
        lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", nargs="+", required=True, help="training run directories")
  ap.add_argument(
    "--pairs", nargs="+", required=True, help="task pairs TASK0,TASK1 (e.g. plus2,plus6)"
  )
  ap.add_argument("--out", required=True)
  ap.add_argument("--prompts", type=int, default=100)
  ap.add_argument(
    "--tables-dir", default=None, help="icl_tables directory (default ../shared/data/icl_tables)"
  )
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--copy-source", action="store_true", help="mod_add: which matching line the choice follows"
  )
  args = ap.parse_args(argv)
  if args.tables_dir:
    tables.set_tables_dir(args.tables_dir)

  def analyse_pairs(out: pathlib.Path) -> dict:
    results = {}
    pairs = []
    for p in args.pairs:
      if p.count(",") != 1:
        raise ValueError(f"--pairs: {p!r} is not TASK0,TASK1")
      pairs.append(tuple(p.split(",")))
    for wd in args.workdir:
      run = load_model(wd)
      config, model = run.config, run.model
      name = pathlib.Path(wd).name
      runs = {"workdir": str(wd), "prompts": args.prompts, "pairs": {}}
      for task0, task1 in pairs:
        res = mass(model, config, task0, task1, args.prompts, args.seed)
        if config["icl"]["family"] == "mod_add":
          res["offsets"] = offsets(res, task0, task1)
        if args.copy_source:
          res["copy_source"] = copy_source(model, config, task0, task1, args.prompts, args.seed)
        plot(name, res, task0, task1, out / f"task_mass_{name}_{task0}_{task1}.png")
        runs["pairs"][f"{task0},{task1}"] = {**res, "mass": res["mass"].tolist()}
        print(f"{name} {task0}×{task1} done", file=sys.stderr, flush=True)
      results[name] = runs
    return results

  return cli.run(args.out, "task_mass", analyse_pairs, markdown)


if __name__ == "__main__":
  sys.exit(main())
