"""Task vectors of a from-scratch model (spec §3): extraction, every layer's effect, convex
combinations vs real mixed prompts.

  python -m projects.icl_superposition.task_vectors --workdir ~/runs/icl/mod_add_skewed_d96_s0 \\
      --out DIR

1. v_t[ℓ] = the residual stream after block ℓ at the final ``>`` of a single-task prompt, averaged
   over ``--prompts`` prompts of task t (the run's number of lines), for the run's test pair
   (retrieve2, retrieve6), or the family's tasks 2 and 6 when the run evaluates random pairs (plus2,
   plus6).
2. Every layer: v_t[ℓ] is written over the residual stream after block ℓ at the ``>`` of a
   query-only prompt ``<bos>x>`` (``--prompts`` queries); reported per layer: cos(v_0, v_1),
   P(answer of t) with v_t, P(answer of t) with the OTHER task's vector, and the move from the
   zero-shot prior (the unpatched query-only prompt) toward the patched task's answer, mean over t
   of P(ans_t | v_t) − P(ans_t | no patch), with a 95 % bootstrap interval over the queries, and the
   task-specific part, mean over t of P(ans_t | v_t) − P(ans_t | v_other) (a patch that only erases
   the prior moves both tasks alike). The chosen layer ℓ* has the largest move. (Choosing by the
   largest P(answer) instead keeps whatever the zero-shot prior already gives, e.g. a block-0 patch
   with cos(v_0, v_1) ≈ 1 that changes nothing.)
3. Convex combinations (1 − λ)·v_0 + λ·v_1 at ℓ*, λ ∈ linspace(0, 1, 30): P(answer of task 0),
   P(answer of task 1), P(elsewhere) on the query-only prompts, beside real mixed prompts with a
   fraction 1 − λ of task-0 lines (7 values of λ, bernoulli mixing as in calibrate.py).
Writes task_vectors.json, task_vectors.md and task_vectors_<run>.png.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from superpose.train.loader import load_model

from projects.icl_superposition import calibrate, chars, cli, mixtures, scoring, tasks as tasks_lib

LAMBDAS = np.linspace(0.0, 1.0, 30)
ICL_LAMBDAS = np.linspace(0.0, 1.0, 7)


def _score(model, prompts, **kw):
  return scoring.score(
    model,
    [p.text for p in prompts],
    [p.answers for p in prompts],
    chars.VOCAB.encode,
    prefix=[chars.VOCAB.bos_id],
    batch_size=kw.pop("batch_size", 50),
    **kw,
  )


def query_only(task0: str, task1: str, n: int, rng: np.random.Generator) -> list[tasks_lib.Prompt]:
  """Zero-example prompts ``x1..x8>`` whose answers are (task 0's, task 1's)."""
  return [tasks_lib.multi_task_prompt([task0, task1], [0.5, 0.5], 0, rng) for _ in range(n)]


def extract(model, task: str, n_examples: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """(L+1, D) mean residual stream at the final separator over ``n`` single-task prompts ([0] =
  embeddings)."""
  prompts = [tasks_lib.single_task_prompt(task, n_examples, rng) for _ in range(n)]
  s = _score(model, prompts, want_hidden=True)
  return s.last_hidden.mean(axis=1)


def analyse(model, config: dict, n: int = 100, seed: int = 0) -> dict:
  task0, task1 = calibrate.evaluation_pair(config)
  if (
    task0 == "random"
  ):  # a fixed pair for vectors: the family's tasks 2 and 6 (retrieve2/6, plus2/6)
    names = tasks_lib.FAMILIES[config["icl"]["family"]].task_names
    task0, task1 = names[2], names[6]
  n_examples = config["icl"]["n_examples"]
  rng = np.random.default_rng([seed, 5])
  vecs = {t: extract(model, t, n_examples, n, rng) for t in (task0, task1)}
  queries = query_only(task0, task1, n, rng)
  zero_p = _score(model, queries).answer_prob  # (n, 2)
  zero = zero_p.mean(0)
  by_layer = []
  for layer in range(model.cfg.num_layers):
    with_v = [
      _score(model, queries, patch_layer=layer, patch=vecs[t][layer + 1]).answer_prob
      for t in (task0, task1)
    ]
    move = ((with_v[0][:, 0] - zero_p[:, 0]) + (with_v[1][:, 1] - zero_p[:, 1])) / 2  # per query
    by_layer.append(
      {
        "layer": layer,
        "p_task0_with_v0": float(with_v[0][:, 0].mean()),
        "p_task1_with_v1": float(with_v[1][:, 1].mean()),
        "p_task0_with_v1": float(with_v[1][:, 0].mean()),
        "p_task1_with_v0": float(with_v[0][:, 1].mean()),
        "move": float(move.mean()),
        "move_ci95": mixtures.bootstrap_ci([move], seed=seed),
        "specific": float(
          ((with_v[0][:, 0] - with_v[1][:, 0]) + (with_v[1][:, 1] - with_v[0][:, 1])).mean() / 2
        ),
        "cosine": _cos(vecs[task0][layer + 1], vecs[task1][layer + 1]),
      }
    )
  best = max(by_layer, key=lambda r: r["move"])["layer"]
  interp = []
  for lam in LAMBDAS:
    v = (1 - lam) * vecs[task0][best + 1] + lam * vecs[task1][best + 1]
    p = _score(model, queries, patch_layer=best, patch=v).answer_prob
    interp.append(
      {
        "lambda": float(lam),
        "p_task0": float(p[:, 0].mean()),
        "p_task1": float(p[:, 1].mean()),
        "p_other": float(1 - p.sum(1).mean()),
      }
    )
  icl = []
  for j, lam in enumerate(ICL_LAMBDAS):
    prompts = calibrate.mixed_prompts(
      task0, task1, n_examples, float(1 - lam), n, np.random.default_rng([seed, j, 41])
    )
    p = _score(model, prompts).answer_prob
    icl.append(
      {
        "lambda": float(lam),
        "p_task0": float(p[:, 0].mean()),
        "p_task1": float(p[:, 1].mean()),
        "p_other": float(1 - p.sum(1).mean()),
      }
    )
  return {
    "tasks": [task0, task1],
    "prompts": n,
    "zero_shot": {"p_task0": float(zero[0]), "p_task1": float(zero[1])},
    "by_layer": by_layer,
    "best_layer": best,
    "embedding_cosine": _cos(vecs[task0][0], vecs[task1][0]),
    "interpolation": interp,
    "icl": icl,
  }


def _cos(a, b) -> float:
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def plot(name: str, res: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  layers = [r["layer"] for r in res["by_layer"]]
  axes[0].plot(
    layers, [r["p_task0_with_v0"] for r in res["by_layer"]], "o-", label="P(task 0 answer | v0)"
  )
  axes[0].plot(
    layers, [r["p_task1_with_v1"] for r in res["by_layer"]], "o-", label="P(task 1 answer | v1)"
  )
  axes[0].axhline(res["zero_shot"]["p_task0"], color="C0", ls=":", label="zero-shot, no patch")
  axes[0].axhline(res["zero_shot"]["p_task1"], color="C1", ls=":")
  axes[0].axvline(res["best_layer"], color="k", lw=0.6, ls="--", label="chosen (largest move)")
  axes[0].set(
    xlabel="patched after block", ylabel="probability", title=f"{name}: patch layer", ylim=(0, 1)
  )
  axes[0].legend(fontsize=7)
  for ax, key, title in (
    (axes[1], "interpolation", f"(1−λ)·v0 + λ·v1 at block {res['best_layer']}"),
    (axes[2], "icl", "real mixed prompts (1−λ task-0 lines)"),
  ):
    lam = [r["lambda"] for r in res[key]]
    ax.stackplot(
      lam,
      [r["p_task0"] for r in res[key]],
      [r["p_task1"] for r in res[key]],
      [max(r["p_other"], 0.0) for r in res[key]],
      labels=[f"task 0 ({res['tasks'][0]})", f"task 1 ({res['tasks'][1]})", "elsewhere"],
      colors=["C0", "C1", "0.8"],
    )
    ax.set(xlabel="λ", ylim=(0, 1), xlim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="center right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = []
  for name, r in results.items():
    t0, t1 = r["tasks"]
    lines += [
      f"### {name}: task vectors of {t0} (v0) and {t1} (v1), {r['prompts']} prompts each",
      "",
      f"zero-shot (no patch): P({t0} answer) {r['zero_shot']['p_task0']:.3f}, P({t1} answer) "
      f"{r['zero_shot']['p_task1']:.3f}; chosen layer (largest move toward the patched task's "
      "answer): "
      f"after block {r['best_layer']}",
      "",
      "| patched after block | cos(v0, v1) | P(ans0 \\| v0) | P(ans1 \\| v1) | P(ans0 \\| v1) | "
      "P(ans1 \\| v0) | "
      "move from zero-shot [95 %] | own − other vector |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["by_layer"]:
      lo, hi = row["move_ci95"]
      lines.append(
        f"| {row['layer']}{' (chosen)' if row['layer'] == r['best_layer'] else ''} | "
        f"{row['cosine']:.3f} | "
        f"{row['p_task0_with_v0']:.3f} | {row['p_task1_with_v1']:.3f} | "
        f"{row['p_task0_with_v1']:.3f} | "
        f"{row['p_task1_with_v0']:.3f} | {row['move']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
        f"{row['specific']:+.3f} |"
      )
    lines += [
      "",
      "| λ | patched P0 / P1 / elsewhere | real mixed prompt P0 / P1 / elsewhere |",
      "|---|---|---|",
    ]
    by_lam = {round(x["lambda"], 3): x for x in r["interpolation"]}
    for x in r["icl"]:
      near = min(by_lam, key=lambda k: abs(k - x["lambda"]))
      p = by_lam[near]
      lines.append(
        f"| {x['lambda']:.2f} (patched λ={near:.2f}) | {p['p_task0']:.3f} / {p['p_task1']:.3f} / "
        f"{p['p_other']:.3f} | {x['p_task0']:.3f} / {x['p_task1']:.3f} / {x['p_other']:.3f} |"
      )
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", nargs="+", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--prompts", type=int, default=100)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  def analyse_runs(out: pathlib.Path) -> dict:
    results = {}
    for wd in args.workdir:
      run = load_model(wd)
      config, model = run.config, run.model
      name = pathlib.Path(wd).name
      results[name] = analyse(model, config, args.prompts, args.seed)
      plot(name, results[name], out / f"task_vectors_{name}.png")
      print(
        f"{name}: chosen layer {results[name]['best_layer']} (largest move toward the patched "
        "answer)",
        flush=True,
      )
    return results

  return cli.run(args.out, "task_vectors", analyse_runs, markdown)


if __name__ == "__main__":
  sys.exit(main())
