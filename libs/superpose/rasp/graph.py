"""A RASP program as a DAG: traversal orders, parents, sources, and a label-keyed graph (p2 §2 stage
1).

Traversals work on objects (identity), so two copies of ``tokens`` with different annotations are
two nodes there; ``extract_graph`` keys nodes by ``label`` as tracr does, where such copies share
the node ``"tokens"`` (the one nearest the sink is kept).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

from superpose.rasp.expr import RASPExpr


def _check_expr(expr):
  if not isinstance(expr, RASPExpr):
    raise TypeError(f"expected a RASP expression, got {type(expr).__name__}: {expr!r}")


def walk(tip: RASPExpr) -> list[RASPExpr]:
  """Every expression reachable from ``tip`` once, breadth first from ``tip`` (tip first)."""
  _check_expr(tip)
  seen, order, queue = {id(tip)}, [], collections.deque([tip])
  while queue:
    expr = queue.popleft()
    order.append(expr)
    for child in expr.children:
      if id(child) not in seen:
        seen.add(id(child))
        queue.append(child)
  return order


def topological_order(tip: RASPExpr) -> list[RASPExpr]:
  """Every expression reachable from ``tip`` once, children before parents (iterative DFS
  post-order)."""
  _check_expr(tip)
  done: set[int] = set()
  order: list[RASPExpr] = []
  stack: list[tuple[RASPExpr, Iterator[RASPExpr]]] = [(tip, iter(tip.children))]
  on_stack = {id(tip)}
  while stack:
    expr, it = stack[-1]
    child = next(it, None)
    if child is None:
      stack.pop()
      on_stack.discard(id(expr))
      done.add(id(expr))
      order.append(expr)
    elif id(child) not in done:
      if id(child) in on_stack:  # impossible for immutable expressions, but cheap to rule out
        raise ValueError(f"cycle through {child.label}")
      on_stack.add(id(child))
      stack.append((child, iter(child.children)))
  return order


def parents(tip: RASPExpr) -> dict[int, list[RASPExpr]]:
  """``id(expr) -> [the expressions that use expr]`` within the program ending at ``tip``."""
  out: dict[int, list[RASPExpr]] = {id(e): [] for e in walk(tip)}
  for expr in walk(tip):
    for child in dict.fromkeys(expr.children, None):  # a child used twice is one edge
      out[id(child)].append(expr)
  return out


def sources(tip: RASPExpr) -> list[RASPExpr]:
  """The leaves (expressions without children): tokens, indices, Full, constants."""
  return [e for e in walk(tip) if not e.children]


@dataclasses.dataclass(frozen=True)
class ExprGraph:
  """The program as a label-keyed DAG; edges run child → parent, as data flows.

  ``nodes[label]`` is the expression; ``children``/``parents`` map a label to labels; ``sink`` is
  the tip's label and ``sources`` the labels of nodes without children.
  """

  sink: str
  nodes: dict[str, RASPExpr]
  children: dict[str, tuple[str, ...]]
  parents: dict[str, tuple[str, ...]]
  sources: tuple[str, ...]

  def topological_labels(self) -> list[str]:
    """Labels with every node after its children (deterministic)."""
    return list(dict.fromkeys(e.label for e in topological_order(self.nodes[self.sink])))

  def edges(self) -> list[tuple[str, str]]:
    return [(c, p) for p, cs in self.children.items() for c in cs]


def extract_graph(tip: RASPExpr) -> ExprGraph:
  """The label-keyed DAG of the program ending at ``tip`` (ids are drawn breadth first from the
  tip)."""
  nodes: dict[str, RASPExpr] = {}
  for expr in walk(tip):
    nodes.setdefault(expr.label, expr)
  children = {
    label: tuple(dict.fromkeys(c.label for c in expr.children)) for label, expr in nodes.items()
  }
  parent_lists: dict[str, list[str]] = {label: [] for label in nodes}
  for label, cs in children.items():
    for c in cs:
      parent_lists[c].append(label)
  return ExprGraph(
    sink=tip.label,
    nodes=nodes,
    children=children,
    parents={k: tuple(v) for k, v in parent_lists.items()},
    sources=tuple(label for label, cs in children.items() if not cs),
  )
