"""ProsQA graphs: the problem record, brute-force reachability, Coconut's Algorithm 1, id shuffling,
hashing.

A problem is a DAG on nodes 0..n-1 (edges ``s -> t``), a root, and two candidate leaves of which
exactly one (``target``) is reachable from the root. Everything here is plain Python: the generator,
the reference answers (breadth-first search over the edge list) and the statistics that the Coconut
paper reports in its Table 2 (nodes, edges, shortest-path length, number of shortest paths).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import random
from typing import Iterable, Sequence

MAX_NODES = 31  # node tokens "0".."30" of the 40-token vocabulary


@dataclasses.dataclass(frozen=True)
class Problem:
  num_nodes: int
  edges: tuple[tuple[int, int], ...]
  root: int
  target: int
  neg_target: int
  symbols: tuple[str, ...] = ()  # idx_to_symbol of the released files (names; optional)

  def __post_init__(self):
    object.__setattr__(self, "edges", tuple((int(s), int(t)) for s, t in self.edges))
    object.__setattr__(self, "symbols", tuple(self.symbols))

  # Derived graph facts (all by breadth-first search over the edge list) ---------------------------
  @property
  def children(self) -> list[list[int]]:
    out = [[] for _ in range(self.num_nodes)]
    for s, t in self.edges:
      out[s].append(t)
    return out

  def depths(self, source: int | None = None, reverse: bool = False) -> list[int | None]:
    """BFS distance from ``source`` (default the root) to every node; None where unreachable."""
    source = self.root if source is None else source
    adj = [[] for _ in range(self.num_nodes)]
    for s, t in self.edges:
      (adj[t] if reverse else adj[s]).append(s if reverse else t)
    dist: list[int | None] = [None] * self.num_nodes
    dist[source] = 0
    queue = collections.deque([source])
    while queue:
      u = queue.popleft()
      for v in adj[u]:
        if dist[v] is None:
          dist[v] = dist[u] + 1
          queue.append(v)
    return dist

  def reachable_within(self, steps: int) -> set[int]:
    """V_c: nodes at distance <= steps from the root (the root included)."""
    return {v for v, d in enumerate(self.depths()) if d is not None and d <= steps}

  @property
  def hops(self) -> int:
    """Shortest root -> target distance (the gold number of thoughts)."""
    return self.depths()[self.target]

  def neighbor_k(self) -> dict[int, list[int]]:
    """Nodes at depth k that lie on some shortest root -> target path (the RS-repo
    ``neighbor_k``)."""
    down, up = self.depths(), self.depths(self.target, reverse=True)
    hops = down[self.target]
    return {
      k: sorted(
        v for v in range(self.num_nodes) if down[v] == k and up[v] is not None and up[v] == hops - k
      )
      for k in range(hops + 1)
    }

  def frontier(self, steps: int) -> set[int]:
    """Nodes at distance exactly ``steps`` from the root (the BFS frontier)."""
    return {v for v, d in enumerate(self.depths()) if d == steps}

  def num_shortest_paths(self) -> int:
    dist, count = self.depths(), [0] * self.num_nodes
    count[self.root] = 1
    for v in sorted(
      (v for v in range(self.num_nodes) if dist[v] is not None), key=lambda v: dist[v]
    ):
      for w in self.children[v]:
        if dist[w] == dist[v] + 1:
          count[w] += count[v]
    return count[self.target]

  def answer(self) -> int:
    """The reference answer: the candidate that BFS reaches from the root."""
    dist = self.depths()
    reach = [c for c in (self.target, self.neg_target) if dist[c] is not None]
    if len(reach) != 1:
      raise ValueError(f"problem has {len(reach)} reachable candidates, expected exactly 1")
    return reach[0]

  def check(self) -> None:
    """Raises ValueError unless this is a well-formed problem whose stated target BFS confirms."""
    n = self.num_nodes
    if not 0 < n <= MAX_NODES:
      raise ValueError(f"{n} nodes: the vocabulary has node tokens for 1..{MAX_NODES}")
    for s, t in self.edges:
      if not (0 <= s < n and 0 <= t < n) or s == t:
        raise ValueError(f"bad edge {(s, t)} for {n} nodes")
    if len(set(self.edges)) != len(self.edges):
      raise ValueError("repeated edge")
    if len({self.root, self.target, self.neg_target}) != 3:
      raise ValueError("root, target and neg_target must differ")
    if self.answer() != self.target:
      raise ValueError("BFS reaches neg_target, not target")


def transitive_reachable(problem: Problem) -> set[int]:
  """Reachability by repeated edge relaxation (a second, independent reference for tests)."""
  seen, changed = {problem.root}, True
  while changed:
    changed = False
    for s, t in problem.edges:
      if s in seen and t not in seen:
        seen.add(t)
        changed = True
  return seen


# Relabelling and hashing --------------------------------------------------------------------------
def relabel(problem: Problem, perm: Sequence[int], num_nodes: int | None = None) -> Problem:
  """Node v becomes perm[v]; edge order is kept; names follow their nodes. ``num_nodes`` (default:
  the problem's) is the id range of the result, for a ``perm`` into more ids than the problem has
  nodes."""
  num_nodes = num_nodes or problem.num_nodes
  symbols = ()
  if problem.symbols:
    out = [""] * num_nodes
    for v, name in enumerate(problem.symbols):
      out[perm[v]] = name
    symbols = tuple(out)
  return Problem(
    num_nodes,
    tuple((perm[s], perm[t]) for s, t in problem.edges),
    perm[problem.root],
    perm[problem.target],
    perm[problem.neg_target],
    symbols,
  )


def shuffle_ids(problem: Problem, rng: random.Random) -> Problem:
  """A uniformly random relabelling: removes the topological order that the released ids leak."""
  perm = list(range(problem.num_nodes))
  rng.shuffle(perm)
  return relabel(problem, perm)


def graph_hash(problem: Problem, rounds: int = 6) -> str:
  """A relabelling-invariant hash of the graph alone (Weisfeiler-Lehman colour refinement).

  Isomorphic graphs always collide; distinct graphs almost never do (and a collision only makes a
  disjointness filter stricter). The question (root/candidates) is not part of the hash.
  """
  n, ins, outs = problem.num_nodes, [[] for _ in range(problem.num_nodes)], problem.children
  for s, t in problem.edges:
    ins[t].append(s)
  colour = [f"{len(ins[v])}.{len(outs[v])}" for v in range(n)]
  for _ in range(rounds):
    colour = [
      hashlib.blake2b(
        (
          colour[v]
          + "|"
          + ",".join(sorted(colour[u] for u in ins[v]))
          + "|"
          + ",".join(sorted(colour[u] for u in outs[v]))
        ).encode(),
        digest_size=8,
      ).hexdigest()
      for v in range(n)
    ]
  edges = sorted(f"{colour[s]}>{colour[t]}" for s, t in problem.edges)
  return hashlib.sha256((",".join(sorted(colour)) + "#" + ",".join(edges)).encode()).hexdigest()[
    :32
  ]


# Coconut's Algorithm 1 ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  num_nodes: tuple[int, int] = (
    20,
    26,
  )  # nodes drawn before isolated nodes are dropped (inclusive range)
  poisson_in: float = 1.5  # parents per new node ~ Poisson(poisson_in)
  p_only_0: float = 0.35  # candidates from groups 0 ∪ 1 (cannot descend from node 1)
  p_only_1: float = 0.35  # candidates from groups 0 ∪ 2 (cannot descend from node 0)
  depth_weight: float = 1.5  # parent weight ∝ depth_to_root · depth_weight + 1
  min_hops: int = 3  # questions need at least this many hops (the released minimum)
  orphan_keep: float = 0.15  # a draw of 0 parents is kept w.p. this, else redrawn (>= 1)
  deep_targets: float = 0.0  # target drawn ∝ exp(deep_targets · hops) among valid leaves
  # Acceptance probability of a question by its hop count (others rejected): turns the generator's
  # own histogram (≈ 65/25/7/1.5% for 3/4/5/6 hops) into the released one (41/44/13/2%).
  hop_accept: tuple[tuple[int, float], ...] = ((3, 0.19), (4, 0.63), (5, 0.9), (6, 1.0))
  max_tries: int = 1000


def _poisson(rng: random.Random, lam: float) -> int:
  limit, k, p = math.exp(-lam), 0, rng.random()
  while p > limit:
    k += 1
    p *= rng.random()
  return k


def _weighted_sample(
  rng: random.Random, items: list[int], weights: list[float], k: int
) -> list[int]:
  """k items without replacement, each draw ∝ weight (numpy's random.choice(replace=False,
  p=...))."""
  items, weights, out = list(items), list(weights), []
  for _ in range(min(k, len(items))):
    i = rng.choices(range(len(items)), weights=weights)[0]
    out.append(items.pop(i))
    weights.pop(i)
  return out


def _build_dag(rng: random.Random, cfg: GeneratorConfig):
  n_total = rng.randint(*cfg.num_nodes)
  labels = {0: 1, 1: 2}
  groups = {0: set(), 1: {0}, 2: {1}, 3: set()}
  depth = {0: 0, 1: 0}  # longest distance from a parentless node
  edges = []
  for idx in range(2, n_total):
    n_in = _poisson(rng, cfg.poisson_in)
    while n_in == 0 and rng.random() >= cfg.orphan_keep:
      n_in = _poisson(rng, cfg.poisson_in)
    u = rng.random()
    if u < cfg.p_only_0:
      cand = sorted(groups[0] | groups[1])
    elif u < cfg.p_only_0 + cfg.p_only_1:
      cand = sorted(groups[0] | groups[2])
    else:
      cand = sorted(labels)
    parents = _weighted_sample(rng, cand, [depth[c] * cfg.depth_weight + 1 for c in cand], n_in)
    label = 0
    for p in parents:
      label |= labels[p]
      edges.append((p, idx))
    labels[idx] = label
    groups[label].add(idx)
    depth[idx] = 1 + max((depth[p] for p in parents), default=-1)
  return n_total, edges, labels


def generate_problem(rng: random.Random, cfg: GeneratorConfig = GeneratorConfig()) -> Problem:
  """One ProsQA-style problem in the released files' convention (topologically ordered ids, root
  0/1).

  Build the DAG, drop isolated nodes (renumbering in creation order), then ask about node 0 or 1:
  the target is a leaf descending only from the root, the negative a leaf descending only from the
  other of {0, 1}; targets closer than ``min_hops`` are rejected (the released files have none).

  The official generator was never released; three knobs beyond Algorithm 1 were set so the output
  matches the released files (measured on 2,000 graphs vs prosqa_valid.json): the node-count range,
  ``orphan_keep`` (the released graphs have ≈ 2.5 parentless nodes, a plain Poisson(1.5) gives ≈
  4.4) and ``hop_accept`` (the released hop histogram).
  """
  for _ in range(cfg.max_tries):
    n_total, edges, labels = _build_dag(rng, cfg)
    used = sorted({v for e in edges for v in e} | {0, 1})
    if len(used) > MAX_NODES:
      continue
    new = {v: i for i, v in enumerate(used)}
    edges = [(new[s], new[t]) for s, t in edges]
    labels = {new[v]: labels[v] for v in used}
    n = len(used)
    outdeg = [0] * n
    for s, _ in edges:
      outdeg[s] += 1
    root = rng.randint(0, 1)
    mine, other = (1, 2) if root == 0 else (2, 1)
    base = Problem(n, tuple(edges), root, 0, 0)
    dist = base.depths()
    targets = [
      v
      for v in range(n)
      if labels[v] == mine and outdeg[v] == 0 and dist[v] is not None and dist[v] >= cfg.min_hops
    ]
    negatives = [v for v in range(n) if labels[v] == other and outdeg[v] == 0]
    if not targets or not negatives:
      continue
    target = rng.choices(targets, weights=[math.exp(cfg.deep_targets * dist[v]) for v in targets])[
      0
    ]
    if rng.random() >= dict(cfg.hop_accept).get(dist[target], 0.0):
      continue
    problem = Problem(n, tuple(edges), root, target, rng.choice(negatives))
    problem.check()
    return problem
  raise RuntimeError(f"no valid problem in {cfg.max_tries} tries")


# Statistics ---------------------------------------------------------------------------------------
PAPER_STATS = {
  "nodes": 23.0,
  "edges": 36.0,
  "shortest_path": 3.8,
  "num_shortest_paths": 1.6,
}  # CC Table 2


def statistics(problems: Iterable[Problem]) -> dict:
  problems = list(problems)
  if not problems:
    raise ValueError("statistics of no problems")
  hops = [p.hops for p in problems]
  mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
  return {
    "count": len(problems),
    "nodes": mean([p.num_nodes for p in problems]),
    "edges": mean([len(p.edges) for p in problems]),
    "shortest_path": mean(hops),
    "num_shortest_paths": mean([p.num_shortest_paths() for p in problems]),
    "hops": dict(sorted(collections.Counter(hops).items())),
    "nodes_range": [min(p.num_nodes for p in problems), max(p.num_nodes for p in problems)],
  }
