"""Task superposition of any model superpose.nn loads, on the paper's LLM task families (spec §1).

  python -m projects.icl_superposition.llm_eval --family add_translate --hf-gpt2 DIR --tokenizer \\
      gpt2 \\
      --prompts 100 --out workdirs/icl/llm_gpt2
  python -m projects.icl_superposition.llm_eval --family AB --workdir RUN --tokenizer icl_chars ...

Model: ``--hf-gpt2 DIR`` (an HF GPT-2 checkpoint, imported by superpose.nn.hf_gpt2) or ``--workdir
RUN`` (any training run of this repository). Prompts: the family's tasks in exact proportions
(uniform, or ``--fractions``), ``n_examples`` lines (the paper's 20·K unless ``--examples``), random
order, a fresh query; the template ``{lines}\\n{query}``. Per task: the teacher-forced P(answer |
prompt) with no end token (spec §1.3; no renormalisation) as a mean with a 95% interval;
P(elsewhere) = 1 − Σ; KL(target ‖ P) with target the in-context proportions; r = task answers among
the model's K most likely complete outputs (first-token top-M with greedy completion to "\\n", see
scoring.py). Writes llm_<family>.json/.md/.png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Callable, Sequence

import numpy as np

from superpose.data import tokenizers
from superpose.train.loader import load_model

from projects.icl_superposition import scoring, tables, tasks as tasks_lib
from projects.icl_superposition import chars  # noqa: F401  (registers the "icl_chars" tokenizer)


def evaluate_family(
  model,
  encode: Callable[[str], Sequence[int]],
  family: str,
  n_prompts: int,
  rng: np.random.Generator,
  *,
  fractions: Sequence[float] | None = None,
  n_examples: int | None = None,
  prefix: Sequence[int] = (),
  batch_size: int = 16,
  top_first: int = 4,
  max_new: int | None = None,
) -> dict:
  fam = tasks_lib.FAMILIES[family]
  k = len(fam.tasks)
  fractions = list(fractions) if fractions else [1.0 / k] * k
  prompts = [tasks_lib.family_prompt(fam, rng, n_examples, fractions) for _ in range(n_prompts)]
  s = scoring.score(
    model,
    [p.text for p in prompts],
    [p.answers for p in prompts],
    encode,
    prefix=prefix,
    answer_terminator=False,
    batch_size=batch_size,
    top_first=top_first,
    max_new=max_new,
  )
  counts = np.asarray(tasks_lib.example_counts(fractions, n_examples or fam.n_examples), float)
  target = counts / counts.sum()
  kl = scoring.kl_target_model(np.broadcast_to(target, s.answer_prob.shape), s.answer_logp)
  return {
    "family": family,
    "tasks": list(fam.task_names),
    "fractions": target.tolist(),
    "n_examples": n_examples or fam.n_examples,
    "prompts": n_prompts,
    "p_task": {t: scoring.mean_ci(s.answer_prob[:, i]) for i, t in enumerate(fam.task_names)},
    "mean_log_p_task": {t: float(s.answer_logp[:, i].mean()) for i, t in enumerate(fam.task_names)},
    "p_other": scoring.mean_ci(s.other),
    "kl": scoring.mean_ci(kl),
    "r": scoring.mean_ci(s.r),
    "example_prompt": prompts[0].text[-200:],
    "example_answers": list(prompts[0].answers),
  }


def markdown(res: dict, model_name: str) -> str:
  lines = [
    f"### {model_name} on {res['family']} ({res['prompts']} prompts, {res['n_examples']} examples, "
    f"proportions {', '.join(f'{f:.2f}' for f in res['fractions'])})",
    "",
    "| task | P(answer) ± 95% |",
    "|---|---|",
  ]
  for t, v in res["p_task"].items():
    lines.append(f"| {t} | {v['mean']:.4f} ± {v['ci95']:.4f} |")
  lines += [
    f"| elsewhere | {res['p_other']['mean']:.4f} |",
    "",
    f"KL(target ‖ P) = {res['kl']['mean']:.3f} ± {res['kl']['ci95']:.3f}; "
    f"r = {res['r']['mean']:.2f} of {len(res['tasks'])} task answers among the "
    f"top-{len(res['tasks'])} outputs",
    "",
  ]
  return "\n".join(lines)


def plot(res: dict, model_name: str, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(res["p_task"]) + ["elsewhere"]
  means = [v["mean"] for v in res["p_task"].values()] + [res["p_other"]["mean"]]
  errs = [v["ci95"] for v in res["p_task"].values()] + [0.0]
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
  ax.bar(
    names, means, yerr=errs, color=[f"C{i}" for i in range(len(names) - 1)] + ["0.7"], capsize=3
  )
  for i, f in enumerate(res["fractions"]):
    ax.plot([i - 0.4, i + 0.4], [f, f], "k:", lw=1)
  ax.set(
    ylabel="probability",
    ylim=(0, 1),
    title=f"{model_name}: {res['family']} (dotted: in-context proportion)",
  )
  plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf-gpt2", help="HF GPT-2 checkpoint directory")
  src.add_argument("--workdir", help="a training run of this repository")
  ap.add_argument(
    "--tokenizer", default="gpt2", help="registered tokenizer (gpt2, bytes, icl_chars, ...)"
  )
  ap.add_argument("--family", required=True, choices=tuple(tasks_lib.FAMILIES))
  ap.add_argument("--prompts", type=int, default=100)
  ap.add_argument(
    "--examples", type=int, default=None, help="in-context lines (default: the paper's 20·K)"
  )
  ap.add_argument(
    "--fractions", default="", help="comma-separated task proportions (default uniform)"
  )
  ap.add_argument(
    "--bos", action="store_true", help="put the tokenizer's BOS id before every prompt"
  )
  ap.add_argument("--batch-size", type=int, default=16)
  ap.add_argument("--tables-dir", default=None)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  if args.tables_dir:
    tables.set_tables_dir(args.tables_dir)
  try:
    tok = tokenizers.get_tokenizer(args.tokenizer)
    path = (
      args.hf_gpt2 or args.workdir
    )  # load_model reads either (an HF GPT-2 directory or any run)
    model, name = load_model(path).model, pathlib.Path(path).name
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else None
    res = evaluate_family(
      model,
      tok.encode,
      args.family,
      args.prompts,
      np.random.default_rng(args.seed),
      fractions=fractions,
      n_examples=args.examples,
      batch_size=args.batch_size,
      prefix=[tok.bos_id] if args.bos and tok.bos_id is not None else (),
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  res["model"] = name
  (out / f"llm_{args.family}.json").write_text(json.dumps(res, indent=1))
  md = markdown(res, name)
  (out / f"llm_{args.family}.md").write_text(md)
  plot(res, name, out / f"llm_{args.family}.png")
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
