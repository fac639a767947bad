"""ProsQA data: the JSON loader, the 40-token vocabulary, prompt layouts as token ids, generated
splits, CLI.

    python -m projects.continuous_cot.data stats --file ../shared/data/prosqa/prosqa_valid.json
    python -m projects.continuous_cot.data generate --out /tmp/prosqa_gen [--train 15000 --valid \\
        500 --test 500]

Prompt layouts (token ids of :data:`VOCAB`; spec §1.1–1.2), edges in file order unless an rng
shuffles them:
  'code'   (RS-repo, what the trained models see; 3m+5 tokens)
           <eos> s1 t1 | s2 t2 | ... sm tm [Q] c1 c2 [R] r
  'theory' (the paper's §3; 3m+6 tokens): every edge, the last one too, ends with |
           <eos> s1 t1 | ... sm tm | [Q] c1 c2 [R] r
followed by C × <|latent|> (continuous-thought slots), [A], and the answer when teaching it.
The released files are read from a configurable directory (``--data``; default ../shared/data/prosqa
relative to the repository root) and never copied into the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import sys
from typing import Sequence

from superpose.data import symbols as symbols_lib

from projects.continuous_cot import graphs
from projects.continuous_cot.graphs import GeneratorConfig, Problem

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "prosqa"
RELEASED = {
  "valid": "prosqa_valid.json",  # Coconut, 300, 3–6 hops
  "graph4": "prosqa_valid_graph_4_coconut.json",  # RS, 257, 3–4 hops
  "graph4_shuffled": "emergence_prosqa_valid_graph_4_coconut_shuffled.json",
}  # EoS, ids shuffled

# The RS-repo STokenizer: ids 0–30 are the node tokens "0".."30", then the specials.
SPECIALS = (
  "<|start-latent|>",
  "<|end-latent|>",
  "<|latent|>",
  "|",
  "[Q]",
  "[R]",
  "[A]",
  "<eos>",
  "<|no-answer|>",
)
VOCAB = symbols_lib.register_vocabulary(
  "prosqa", [str(i) for i in range(graphs.MAX_NODES)] + list(SPECIALS), specials=()
)
LATENT, EDGE, QUESTION, ROOT, ANSWER, EOS = (
  VOCAB.id_of(s) for s in ("<|latent|>", "|", "[Q]", "[R]", "[A]", "<eos>")
)
BOS = EOS  # the RS code writes <eos> as the first token
LAYOUTS = ("code", "theory")
assert VOCAB.vocab_size == 40 and (LATENT, EDGE, QUESTION, ROOT, ANSWER, EOS) == (
  33,
  34,
  35,
  36,
  37,
  38,
)


# Loading and writing the ProsQA JSON format -------------------------------------------------------
def from_record(record: dict) -> Problem:
  symbols = record.get("idx_to_symbol") or ()
  nodes = {v for e in record["edges"] for v in e} | {
    record["root"],
    record["target"],
    record["neg_target"],
  }
  return Problem(
    max(len(symbols), max(nodes) + 1),
    tuple(map(tuple, record["edges"])),
    record["root"],
    record["target"],
    record["neg_target"],
    tuple(symbols),
  )


def load(path: str | pathlib.Path, check: bool = True) -> list[Problem]:
  """Problems of a ProsQA JSON file; each one's answer is checked by BFS (ValueError names the
  record)."""
  records = json.loads(pathlib.Path(path).read_text())
  problems = []
  for i, record in enumerate(records):
    problem = from_record(record)
    if check:
      try:
        problem.check()
      except ValueError as e:
        raise ValueError(f"{path} record {i}: {e}") from None
      if "neighbor_k" in record:
        got = {int(k): sorted(v) for k, v in record["neighbor_k"].items()}
        if got != problem.neighbor_k():
          raise ValueError(
            f"{path} record {i}: neighbor_k differs from the BFS shortest-path layers"
          )
    problems.append(problem)
  return problems


def released_path(name: str, data_dir: str | pathlib.Path = DEFAULT_DATA) -> pathlib.Path:
  return pathlib.Path(data_dir) / RELEASED[name]


def _names(problem: Problem, rng: random.Random) -> tuple[str, ...]:
  """Entity names for parentless nodes and fictional ProntoQA-style concepts for the rest."""
  people = [
    "Alex",
    "Bob",
    "Davis",
    "Fae",
    "Gina",
    "Jack",
    "Max",
    "Polly",
    "Rex",
    "Sally",
    "Sam",
    "Stella",
    "Tom",
    "Wren",
  ]
  onsets = [
    "b",
    "br",
    "d",
    "f",
    "g",
    "gr",
    "j",
    "l",
    "r",
    "sh",
    "scr",
    "st",
    "t",
    "v",
    "w",
    "y",
    "z",
    "zh",
  ]
  vowels = ["a", "e", "i", "o", "u", "oo", "ai"]
  has_parent = {t for _, t in problem.edges}
  concepts = rng.sample([f"{o}{v}mpus" for o in onsets for v in vowels], problem.num_nodes)
  entities = rng.sample(people, min(len(people), problem.num_nodes))
  out, e = [], 0
  for v in range(problem.num_nodes):
    if v not in has_parent and e < len(entities):
      out.append(entities[e])
      e += 1
    else:
      out.append(concepts[v])
  return tuple(out)


def to_record(problem: Problem, rng: random.Random | None = None) -> dict:
  """The ProsQA JSON record (with RS's ``neighbor_k``); names are drawn when the problem has
  none."""
  rng = rng or random.Random(0)
  names = problem.symbols or _names(problem, rng)
  layers = problem.neighbor_k()
  path = [layers[0][0]]
  for k in range(1, len(layers)):  # one shortest path: each step a child on the next layer
    path.append(next(v for v in layers[k] if (path[-1], v) in set(problem.edges)))
  entities = set(range(problem.num_nodes)) - {t for _, t in problem.edges}
  phrase = lambda s, t: (
    f"{names[s]} is a {names[t]}."
    if s in entities  # noqa: E731
    else f"Every {names[s]} is a {names[t]}."
  )
  a, b = rng.sample([problem.target, problem.neg_target], 2)
  return {
    "question": " ".join(phrase(s, t) for s, t in problem.edges)
    + f" Is {names[problem.root]} a {names[a]} or {names[b]}?",
    "answer": f"{names[problem.root]} is a {names[problem.target]}.",
    "steps": [phrase(s, t) for s, t in zip(path, path[1:])],
    "idx_to_symbol": list(names),
    "edges": [list(e) for e in problem.edges],
    "root": problem.root,
    "target": problem.target,
    "neg_target": problem.neg_target,
    "neighbor_k": {str(k): v for k, v in layers.items()},
  }


# Prompt layout ------------------------------------------------------------------------------------
def prompt_tokens(
  problem: Problem,
  *,
  layout: str = "code",
  rng: random.Random | None = None,
  candidates: Sequence[int] | None = None,
) -> list[int]:
  """Edges, [Q] c1 c2, [R] r as token ids. ``rng`` shuffles the edge and candidate order (per epoch,
  as the RS code does); without it edges keep file order and candidates are ``candidates`` or
  (target, neg)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: must be one of {', '.join(LAYOUTS)}")
  edges = list(problem.edges)
  pair = list(candidates) if candidates is not None else [problem.target, problem.neg_target]
  if rng is not None:
    rng.shuffle(edges)
    if candidates is None and rng.random() < 0.5:
      pair.reverse()
  tokens = [BOS]
  for i, (s, t) in enumerate(edges):
    tokens += [s, t]
    if layout == "theory" or i < len(edges) - 1:
      tokens.append(EDGE)
  return tokens + [QUESTION, *pair, ROOT, problem.root]


def question_tokens(
  problem: Problem, num_thoughts: int, *, with_answer: bool = False, **kwargs
) -> list[int]:
  """The evaluation sequence: prompt, ``num_thoughts`` latent slots, [A] (and the target when
  teaching)."""
  tokens = prompt_tokens(problem, **kwargs) + [LATENT] * num_thoughts + [ANSWER]
  return tokens + [problem.target] if with_answer else tokens


def render(tokens: Sequence[int]) -> str:
  return " ".join(VOCAB.decode_symbols(tokens))


# Generated splits ---------------------------------------------------------------------------------
def generate_split(
  count: int,
  seed: int,
  *,
  exclude: set[str] = frozenset(),
  hops: Sequence[int] | None = (3, 4),
  shuffle: bool = True,
  cfg: GeneratorConfig = GeneratorConfig(),
) -> tuple[list[Problem], set[str]]:
  """``count`` problems whose graphs (by :func:`graphs.graph_hash`) are new: not in ``exclude`` and
  not repeated. Returns the problems and their hashes. ``hops`` keeps only those hop counts (None:
  all)."""
  rng, seen, out = random.Random(seed), set(exclude), []
  while len(out) < count:
    problem = graphs.generate_problem(rng, cfg)
    if hops is not None and problem.hops not in hops:
      continue
    key = graphs.graph_hash(problem)
    if key in seen:
      continue
    seen.add(key)
    out.append(graphs.shuffle_ids(problem, rng) if shuffle else problem)
  return out, {graphs.graph_hash(p) for p in out}


def released_hashes(data_dir: str | pathlib.Path = DEFAULT_DATA) -> set[str]:
  out = set()
  for name in RELEASED:
    path = released_path(name, data_dir)
    if path.exists():
      out |= {graphs.graph_hash(p) for p in load(path, check=False)}
  return out


def _round(stats: dict) -> dict:
  return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}


def stats_table(rows: dict[str, dict]) -> str:
  keys = ("count", "nodes", "edges", "shortest_path", "num_shortest_paths", "hops")
  lines = ["| set | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, st in rows.items():
    lines.append(f"| {name} | " + " | ".join(str(_round(st).get(k, "")) for k in keys) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m projects.continuous_cot.data",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  gen = sub.add_parser("generate", help="write generated train/valid/test JSON and stats.json")
  gen.add_argument("--out", required=True)
  gen.add_argument("--train", type=int, default=15000)
  gen.add_argument("--valid", type=int, default=500)
  gen.add_argument("--test", type=int, default=500)
  gen.add_argument("--seed", type=int, default=0)
  gen.add_argument("--hops", default="3,4", help="kept hop counts, e.g. 3,4 (graph_4) or 'all'")
  gen.add_argument("--no-shuffle", action="store_true", help="keep the topologically ordered ids")
  gen.add_argument(
    "--nodes",
    default="",
    help="LO,HI nodes drawn per graph (default 20,26: ProsQA's size); "
    "smaller graphs for a curriculum over graph size, e.g. 8,12",
  )
  gen.add_argument(
    "--stats-graphs", type=int, default=2000, help="unfiltered graphs measured for the table"
  )
  gen.add_argument(
    "--data", default=str(DEFAULT_DATA), help="released ProsQA files (excluded by graph hash)"
  )
  st = sub.add_parser("stats", help="statistics of a ProsQA JSON file (answers checked by BFS)")
  st.add_argument("--file", required=True)
  args = parser.parse_args(argv)

  if args.command == "stats":
    stats = graphs.statistics(load(args.file))
    print(
      stats_table(
        {pathlib.Path(args.file).name: stats, "paper (Coconut Table 2)": graphs.PAPER_STATS}
      )
    )
    return 0

  hops = None if args.hops == "all" else tuple(int(h) for h in args.hops.split(","))
  cfg = GeneratorConfig()
  if args.nodes:
    lo, hi = (int(n) for n in args.nodes.split(","))
    if not 2 <= lo <= hi <= graphs.MAX_NODES:
      parser.error(f"--nodes {args.nodes}: need 2 <= LO <= HI <= {graphs.MAX_NODES}")
    cfg = dataclasses.replace(cfg, num_nodes=(lo, hi))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  exclude = released_hashes(args.data)
  if not exclude:
    print(
      f"warning: no released files under {args.data}; disjointness from them is not enforced",
      file=sys.stderr,
    )
  rows, used = {}, set(exclude)
  for offset, (split, count) in enumerate(
    (("train", args.train), ("valid", args.valid), ("test", args.test))
  ):
    problems, hashes = generate_split(
      count,
      args.seed * 1000 + offset,
      exclude=used,
      hops=hops,
      shuffle=not args.no_shuffle,
      cfg=cfg,
    )
    used |= hashes
    rng = random.Random(args.seed * 1000 + 100 + offset)
    (out / f"{split}.json").write_text(json.dumps([to_record(p, rng) for p in problems]))
    rows[f"generated {split}"] = graphs.statistics(problems)
  unfiltered, _ = generate_split(
    args.stats_graphs, args.seed * 1000 + 99, hops=None, shuffle=False, cfg=cfg
  )
  rows = {f"generated, all hops ({args.stats_graphs})": graphs.statistics(unfiltered), **rows}
  for name in RELEASED:
    path = released_path(name, args.data)
    if path.exists():
      rows[f"released {path.name}"] = graphs.statistics(load(path))
  rows["paper (Coconut Table 2)"] = graphs.PAPER_STATS
  (out / "stats.json").write_text(json.dumps(rows, indent=1))
  print(stats_table(rows))
  print(
    f"wrote {out}/{{train,valid,test}}.json and stats.json; all graphs distinct and disjoint from "
    "the "
    f"{len(exclude)} released graphs by graph hash"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
