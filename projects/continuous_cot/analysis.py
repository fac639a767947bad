"""The superposition signature of continuous thoughts (spec §3.6; RS Tables 1 and 5).

    python -m projects.continuous_cot.analysis --model construction --data ../shared/data/prosqa \\
        --out /tmp/sig \
        [--split graph4 --split graph4_shuffled] [--limit N]
    python -m projects.continuous_cot.analysis --workdir workdirs/cot_scaled/coconut --out \\
        /tmp/sig_trained

``--workdir`` reads a trained Coconut run at the checkpoint its selection.json names (as
evaluate.py) and analyses it with its own prompt layout, layer 2, all heads summed.

For a model and its prompt layout, :func:`trace` runs the gold-hop thoughts (KV-cached, then one
full forward with the thoughts in place that returns the attention probabilities) and returns, per
problem, the thoughts and the attention rows of the positions that produce them. Step i (1-based) is
the position t0+i−1 (the root for i = 1, else latent slot i−1): its post-final-norm state is [t_i]
and its attention is the "final pass with n_step = i−1 latents" of the RS notebook (causality makes
the two equal).

Node groups at step i (spec §3.6, the notebook's walk-based sets; nested, so every frontier node is
also reachable):
  reachable      nodes with a walk of length ≤ i from the root (the root included);
  frontier       nodes with a walk of length exactly i (on a DAG this includes nodes whose BFS depth
                 is < i);
  optimal        ``neighbor_k[i]``: depth-i nodes on a shortest root → target path;
  not reachable  every other graph node.
Edge groups at step i (Table 1): the query at step i carries the step-(i−1) set, so an edge s → t is
grouped by its source: reachable / frontier / not-reachable by s against the step-(i−1) node groups,
optimal when s ∈ neighbor_k[i−1] and t ∈ neighbor_k[i] (an edge of a shortest path). With this, step
1 has reachable = frontier (both "the root's edges"), as in Table 1. The attention to an edge is the
layer-2 mass summed over its triplet (s, t, |) and over the heads; as the notebook, the last edge of
the 'code' layout (no |) is skipped. Statistics are mean ± sd pooled over (problem, node) or
(problem, edge) pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import random
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose import nn

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import graphs
from projects.continuous_cot import thoughts as thoughts_lib

GROUPS = ("not_reachable", "reachable", "frontier", "optimal")
LABELS = {
  "not_reachable": "Not Reachable",
  "reachable": "Reachable",
  "frontier": "–Frontier",
  "optimal": "–Optimal",
}
STEPS = (1, 2, 3, 4)

# The paper's numbers (spec §4.2 = RS Table 1; §4.3 = RS Table 5, three seeds), by group then step.
PAPER_ATTENTION = {
  "not_reachable": ("0.04±0.07", "0.03±0.09", "0.08±0.17", "0.12±0.20"),
  "reachable": ("2.12±1.07", "0.71±0.92", "0.38±0.72", "0.29±0.66"),
  "frontier": ("2.12±1.07", "1.00±0.96", "0.67±0.87", "0.61±0.95"),
  "optimal": ("2.54±1.03", "1.72±1.13", "1.67±1.20", "2.23±1.35"),
}
PAPER_INNER = {
  "not_reachable": (
    "−0.37, −0.25, −0.33",
    "−0.26, −0.04, −0.14",
    "−0.09, −0.01, 0.02",
    "−0.25, −0.23, −0.27",
  ),
  "reachable": ("3.59, 3.62, 3.71", "1.55, 1.42, 1.37", "0.80, 0.77, 0.62", "0.61, 0.66, 0.53"),
  "frontier": ("5.09, 5.13, 5.38", "2.69, 2.45, 2.63", "2.11, 1.95, 2.01", "2.27, 2.12, 2.29"),
  "optimal": ("6.41, 6.52, 6.84", "4.78, 4.67, 5.11", "6.00, 5.44, 6.43", "9.48, 8.98, 9.58"),
}


# Node and edge groups -----------------------------------------------------------------------------
def walk_levels(problem: graphs.Problem, steps: int) -> list[set[int]]:
  """levels[k] = nodes at the end of some walk of length exactly k from the root, k = 0..steps."""
  children = problem.children
  levels = [{problem.root}]
  for _ in range(steps):
    levels.append({w for v in levels[-1] for w in children[v]})
  return levels


def node_groups(problem: graphs.Problem, step: int) -> dict[str, set[int]]:
  """The four node groups of thought ``step`` (see the module doc); step 0 is the root alone."""
  levels = walk_levels(problem, step)
  reachable = set().union(*levels)
  optimal = set(problem.neighbor_k().get(step, ()))
  return {
    "not_reachable": set(range(problem.num_nodes)) - reachable,
    "reachable": reachable,
    "frontier": levels[step],
    "optimal": optimal,
  }


def edge_groups(problem: graphs.Problem, step: int) -> dict[str, list[int]]:
  """Indices into ``problem.edges`` of each edge group at ``step`` ≥ 1 (grouped by the step-(i−1)
  sets)."""
  before = node_groups(problem, step - 1)
  after_optimal = set(problem.neighbor_k().get(step, ()))
  out = {g: [] for g in GROUPS}
  for j, (s, t) in enumerate(problem.edges):
    out["reachable" if s in before["reachable"] else "not_reachable"].append(j)
    if s in before["frontier"]:
      out["frontier"].append(j)
    if s in before["optimal"] and t in after_optimal:
      out["optimal"].append(j)
  return out


def edge_triplets(problem: graphs.Problem, layout: str) -> dict[int, tuple[int, ...]]:
  """Edge index → prompt positions of (s, t, |) in file order; the 'code' layout's last edge has
  no |: left out."""
  out = {}
  for j in range(len(problem.edges)):
    if layout == "code" and j == len(problem.edges) - 1:
      continue
    out[j] = (1 + 3 * j, 2 + 3 * j, 3 + 3 * j)
  return out


# Running a model ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Subject:
  """A superpose.nn model and how to read it: its prompt layout, the attention layer and the heads
  to sum."""

  name: str
  model: nn.Transformer
  layout: str = "code"
  layer: int = 1  # "layer 2"
  heads: tuple[int, ...] | None = None  # None: all heads (the notebook's sum)


@dataclasses.dataclass
class Trace:
  problem: graphs.Problem
  thoughts: np.ndarray  # (hops, D): [t_1] .. [t_hops]
  attention: (
    np.ndarray
  )  # (hops, H, S): the chosen layer's probabilities at the positions making them
  answer: int  # argmax over the node tokens at [A]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num_thoughts", "layer"))
def _trace(graphdef, state, tokens_BT, latent_start_B, *, num_thoughts: int, layer: int):
  model = nnx.merge(graphdef, state)
  out = thoughts_lib.cached_forward(model, tokens_BT, latent_start_B, num_thoughts=num_thoughts)
  batch, length = tokens_BT.shape
  slots_BU = latent_start_B[:, None] + jnp.arange(num_thoughts)
  embeds_BTD = jnp.zeros((batch, length, model.cfg.d_model), out.thoughts_BUD.dtype)
  embeds_BTD = embeds_BTD.at[jnp.arange(batch)[:, None], slots_BU].set(out.thoughts_BUD)
  mask_BT = jnp.zeros((batch, length), bool).at[jnp.arange(batch)[:, None], slots_BU].set(True)
  full = model(tokens_BT, embeds_BTD=embeds_BTD, embeds_mask_BT=mask_BT, return_attention=True)
  rows_BU = slots_BU - 1  # the positions that produce the thoughts
  attn_BHUS = jnp.take_along_axis(full.attention[layer], rows_BU[:, None, :, None], axis=2)
  made_BUD = jnp.take_along_axis(full.final_hidden_BTD, rows_BU[:, :, None], axis=1)
  answer_pos = latent_start_B + num_thoughts
  answer_logits = jnp.take_along_axis(full.logits_BTV, answer_pos[:, None, None], axis=1)[:, 0]
  return out.thoughts_BUD, made_BUD, jnp.swapaxes(attn_BHUS, 1, 2), answer_logits


def candidate_order(problem: graphs.Problem, i: int) -> tuple[int, int]:
  """(target, neg) or (neg, target), a fixed coin per problem index: a trained model saw both
  orders, so the file's target-first order would be a biased prompt (edges keep file order: the
  triplet positions need it)."""
  pair = (problem.target, problem.neg_target)
  return pair[::-1] if random.Random(i).random() < 0.5 else pair


def trace(
  subject: Subject, problems: Sequence[graphs.Problem], batch_size: int = 64
) -> list[Trace]:
  """Gold-hop thoughts, the attention rows that make them and the answer, per problem (input
  order)."""
  graphdef, state = nnx.split(subject.model)
  out: list[Trace | None] = [None] * len(problems)
  by_hops: dict[int, list[int]] = {}
  for i, p in enumerate(problems):
    by_hops.setdefault(p.hops, []).append(i)
  seqs = {
    i: data_lib.question_tokens(
      problems[i],
      problems[i].hops,
      layout=subject.layout,
      candidates=candidate_order(problems[i], i),
    )
    for i in range(len(problems))
  }
  length = 8 * -(-max(len(s) for s in seqs.values()) // 8)  # one padded width: few compilations
  if length > subject.model.cfg.max_seq_len:
    raise ValueError(
      f"a prompt has {length} tokens; the model's max_seq_len is {subject.model.cfg.max_seq_len}"
    )
  for hops, index in sorted(by_hops.items()):
    for start in range(0, len(index), batch_size):
      chunk = index[start : start + batch_size]
      rows = chunk + [chunk[-1]] * (batch_size - len(chunk)) if len(index) > batch_size else chunk
      tokens = np.full((len(rows), length), data_lib.EOS, np.int32)
      starts = np.zeros(len(rows), np.int32)
      for r, i in enumerate(rows):
        tokens[r, : len(seqs[i])] = seqs[i]
        starts[r] = len(seqs[i]) - hops - 1
      fed, made, attn, logits = jax.device_get(
        _trace(
          graphdef,
          state,
          jnp.asarray(tokens),
          jnp.asarray(starts),
          num_thoughts=hops,
          layer=subject.layer,
        )
      )
      # the thoughts re-read from the attention pass equal those fed back: it is the pass that made
      # them
      np.testing.assert_allclose(fed, made, atol=1e-4, rtol=1e-4)
      for r, i in enumerate(chunk):
        out[i] = Trace(
          problems[i],
          made[r].astype(np.float64),
          attn[r].astype(np.float64),
          int(np.argmax(logits[r, : graphs.MAX_NODES])),
        )
  return out


# Statistics ---------------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float, int]:
  a = np.asarray(values, np.float64)
  return (float(a.mean()), float(a.std()), a.size) if a.size else (float("nan"), float("nan"), 0)


def signature(subject: Subject, traces: Sequence[Trace], steps: Sequence[int] = STEPS) -> dict:
  """{'inner' | 'attention': {group: {step: (mean, sd, n)}} pooled over nodes / edges,
  'inner_by_problem' | 'attention_by_problem': {step: [{group: mean within one problem}]},
  'accuracy', 'count'}."""
  embed = np.asarray(subject.model.token_embedding.get_value(), np.float64)
  pooled = {key: {g: {s: [] for s in steps} for g in GROUPS} for key in ("inner", "attention")}
  by_problem = {key: {s: [] for s in steps} for key in ("inner", "attention")}
  for tr in traces:
    p = tr.problem
    triplets = edge_triplets(p, subject.layout)
    for step in steps:
      if step > len(tr.thoughts):
        continue
      products = embed[: p.num_nodes] @ tr.thoughts[step - 1]
      heads = (
        tr.attention[step - 1]
        if subject.heads is None
        else tr.attention[step - 1][list(subject.heads)]
      )
      row = heads.sum(0)
      values = {
        "inner": {g: products[sorted(nodes)].tolist() for g, nodes in node_groups(p, step).items()},
        "attention": {
          g: [float(row[list(triplets[j])].sum()) for j in edges if j in triplets]
          for g, edges in edge_groups(p, step).items()
        },
      }
      for key, groups in values.items():
        for g, v in groups.items():
          pooled[key][g][step].extend(v)
        by_problem[key][step].append(
          {g: float(np.mean(v)) if v else float("nan") for g, v in groups.items()}
        )
  summary = lambda table: {
    g: {s: _stats(v) for s, v in by_step.items()} for g, by_step in table.items()
  }
  correct = sum(tr.answer == tr.problem.answer() for tr in traces)
  return {
    "inner": summary(pooled["inner"]),
    "attention": summary(pooled["attention"]),
    "inner_by_problem": by_problem["inner"],
    "attention_by_problem": by_problem["attention"],
    "accuracy": correct / max(len(traces), 1),
    "count": len(traces),
  }


def _ordered(means: Sequence[float], tol: float) -> tuple[bool, bool]:
  """(strict, weak) for means in the order optimal, frontier, reachable, not-reachable; weak needs
  optimal ≥ frontier ≥ reachable > not-reachable. A missing group (nan) is skipped."""
  m = [x for x in means if not np.isnan(x)]
  strict = all(a > b + tol for a, b in zip(m, m[1:]))
  weak = all(a >= b - tol for a, b in zip(m, m[1:])) and (
    np.isnan(means[3]) or means[2] > means[3] + tol
  )
  return strict, bool(weak)


def ordering(table: dict, steps: Sequence[int] = (1, 2), tol: float = 1e-6) -> dict[str, bool]:
  """Whether optimal > frontier > reachable > not-reachable holds for the pooled means at every step
  given."""
  checks = [_ordered([table[g][s][0] for g in reversed(GROUPS)], tol) for s in steps]
  return {"strict": all(c[0] for c in checks), "weak": all(c[1] for c in checks)}


def problem_ordering(
  by_problem: dict, steps: Sequence[int] = (1, 2), tol: float = 1e-6
) -> dict[str, float]:
  """Fraction of (problem, step) pairs whose within-problem group means are ordered (strict /
  weak)."""
  checks = [_ordered([m[g] for g in reversed(GROUPS)], tol) for s in steps for m in by_problem[s]]
  return {
    "strict": float(np.mean([c[0] for c in checks])),
    "weak": float(np.mean([c[1] for c in checks])),
  }


# Reports ------------------------------------------------------------------------------------------
def markdown(name: str, result: dict, steps: Sequence[int] = STEPS) -> str:
  head = (
    "| group | " + " | ".join(f"step {s}" for s in steps) + " |\n|---|" + "---|" * len(steps) + "\n"
  )

  def rows(table, paper):
    lines = []
    for g in GROUPS:
      ours = " | ".join(
        f"{table[g][s][0]:.3f}±{table[g][s][1]:.3f}" if table[g][s][2] else "–" for s in steps
      )
      lines.append(f"| {LABELS[g]} | {ours} |")
    lines.append("| *paper* | " + " | ".join("" for _ in steps) + " |")
    for g in GROUPS:
      lines.append(f"| *{LABELS[g]}* | " + " | ".join(paper[g][s - 1] for s in steps) + " |")
    return "\n".join(lines) + "\n"

  def order_line(key):
    pooled, each = ordering(result[key]), problem_ordering(result[f"{key}_by_problem"])
    return (
      "Ordering optimal > frontier > reachable > not-reachable at steps 1–2 — pooled means: "
      "strict "
      f"{pooled['strict']}, weak (≥ ≥ >) {pooled['weak']}; within each problem: strict in "
      f"{each['strict']:.0%}, weak in {each['weak']:.0%} of (problem, step) pairs.\n"
    )

  return (
    f"## {name}\n\n{result['count']} problems, accuracy {result['accuracy']:.4f}.\n\n"
    "### Inner product ⟨[t_i], u_v⟩ by node group (mean±sd over nodes; paper: RS Table 5, three "
    "seeds)\n\n" + head + rows(result["inner"], PAPER_INNER) + "\n" + order_line("inner") + "\n"
    "### Layer-2 attention mass per edge triplet by edge group (mean±sd over edges; paper: RS "
    "Table 1)\n\n"
    + head
    + rows(result["attention"], PAPER_ATTENTION)
    + "\n"
    + order_line("attention")
  )


def plot(name: str, result: dict, path: pathlib.Path, steps: Sequence[int] = STEPS) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in (
    (axes[0], "inner", "⟨[t_i], u_v⟩ by node group"),
    (axes[1], "attention", "layer-2 attention per edge triplet"),
  ):
    for k, g in enumerate(GROUPS):
      xs = [s for s in steps if result[key][g][s][2]]
      mean = [result[key][g][s][0] for s in xs]
      sd = [result[key][g][s][1] for s in xs]
      ax.errorbar(
        np.asarray(xs) + (k - 1.5) * 0.05,
        mean,
        yerr=sd,
        marker="o",
        capsize=3,
        label=LABELS[g].strip("–"),
      )
    ax.set_xlabel("thought step i")
    ax.set_xticks(list(steps))
    ax.set_title(title)
    ax.legend()
  fig.suptitle(name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def subject_for(name: str) -> Subject:
  if name == "construction":
    from projects.continuous_cot import construction

    c = construction.Construction()
    # Layer 2 of the construction has one live head; the other four have zero weights (uniform,
    # inert attention).
    return Subject("construction", construction.build(c), layout=c.layout, layer=1, heads=(0,))
  raise ValueError(
    f"--model {name!r}: only 'construction' is available here (pass a Subject to the API otherwise)"
  )


def subject_from_run(workdir: str | pathlib.Path) -> Subject:
  """A trained Coconut run (selected checkpoint) with its own prompt layout; layer 2, all heads."""
  from projects.continuous_cot import evaluate

  config, model, _, how = evaluate.load_trained(workdir)
  if config["cot"]["method"] != "coconut":
    raise ValueError(
      f"{workdir}: method {config['cot']['method']!r}; the signature needs continuous thoughts "
      "(coconut)"
    )
  return Subject(
    f"{pathlib.Path(workdir).name} ({how})",
    model,
    layout=config["cot"]["layout"],
    layer=1,
    heads=None,
  )


def analyse(
  subject: Subject, problems: Sequence[graphs.Problem], out: pathlib.Path, tag: str
) -> dict:
  result = signature(subject, trace(subject, problems))
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{tag}.md").write_text(markdown(f"{subject.name} on {tag}", result))
  plot(f"{subject.name} on {tag}", result, out / f"{tag}.png")
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m projects.continuous_cot.analysis",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--model", default="construction", choices=("construction",))
  parser.add_argument(
    "--workdir", default=None, help="a trained Coconut run to analyse instead of --model"
  )
  parser.add_argument(
    "--data", default=str(data_lib.DEFAULT_DATA), help="directory of the released ProsQA files"
  )
  parser.add_argument(
    "--out", required=True, help="directory for the Markdown tables and PNG plots"
  )
  parser.add_argument(
    "--split",
    action="append",
    choices=tuple(data_lib.RELEASED),
    help="released split(s); default graph4 and graph4_shuffled",
  )
  parser.add_argument(
    "--file",
    action="append",
    default=[],
    help="any ProsQA JSON file (e.g. a generated test.json), analysed as the split named by its "
    "stem",
  )
  parser.add_argument(
    "--limit", type=int, default=0, help="first N problems of each split (0 = all)"
  )
  args = parser.parse_args(argv)
  try:
    subject = subject_from_run(args.workdir) if args.workdir else subject_for(args.model)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  report = []
  files = [(pathlib.Path(f).stem, pathlib.Path(f)) for f in args.file]
  if args.split or not files:
    files += [
      (s, data_lib.released_path(s, args.data)) for s in args.split or ("graph4", "graph4_shuffled")
    ]
  for split, path in files:
    if not path.exists():
      print(f"{path}: missing", file=sys.stderr)
      return 1
    problems = data_lib.load(path)[: args.limit or None]
    analyse(subject, problems, out, split)
    report.append((out / f"{split}.md").read_text())
  (out / "signature.md").write_text("# Superposition signature\n\n" + "\n".join(report))
  print("\n".join(report))
  print(f"wrote {out}/signature.md and one .md/.png per split")
  return 0


if __name__ == "__main__":
  sys.exit(main())
