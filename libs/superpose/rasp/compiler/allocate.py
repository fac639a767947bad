"""Layer allocation: every block at the earliest half-layer of its kind after its inputs (p2 §2.2).

Half-layer 2l is layer l's attention, 2l+1 its MLP. A node's inputs are its S-Op children and, for
Aggregate and SelectorWidth, the keys and queries of its Select; tokens and indices are ready
before layer 0 (half-layer -1). A SelectorWidth takes an attention half-layer and the MLP right
after it. Placing each block as early as possible is a longest-path schedule over typed
half-layers: no valid schedule uses fewer layers (tracr's depth + compaction heuristic is never
better, and sometimes one layer worse).
"""

from __future__ import annotations

import dataclasses

from superpose.rasp.graph import ExprGraph
from superpose.rasp.selectors import Aggregate, Select, SelectorWidth


@dataclasses.dataclass(frozen=True)
class Allocation:
  half_layer: dict[
    str, tuple[int, ...]
  ]  # node label -> the half-layers its blocks use (attention, MLP...)
  num_layers: int

  def layers(self) -> list[dict[str, list[str]]]:
    """Per layer, the node labels whose blocks sit in its attention and in its MLP."""
    out = [{"attention": [], "mlp": []} for _ in range(self.num_layers)]
    for label, halves in self.half_layer.items():
      for h in halves:
        out[h // 2]["attention" if h % 2 == 0 else "mlp"].append(label)
    return out


def inputs_of(graph: ExprGraph, label: str) -> list[str]:
  """The S-Op labels a node reads from the residual stream."""
  expr = graph.nodes[label]
  out = []
  for child in expr.children:
    if isinstance(child, Select):
      out += [child.keys.label, child.queries.label]
    else:
      out.append(child.label)
  return list(dict.fromkeys(out))


def allocate(graph: ExprGraph, kinds: dict[str, tuple[str, ...]]) -> Allocation:
  """``kinds[label]``: the block kinds of each node in order, e.g. ('attention',), ('mlp',),
  ('attention', 'mlp') for SelectorWidth, () for tokens and indices."""
  ready: dict[str, int] = {}
  halves: dict[str, tuple[int, ...]] = {}
  for label in graph.topological_labels():
    expr = graph.nodes[label]
    if label not in kinds:  # selectors: no block of their own
      continue
    parts = kinds[label]
    if not parts:
      ready[label] = -1
      continue
    h = max((ready[i] for i in inputs_of(graph, label)), default=-1) + 1
    placed = []
    for kind in parts:
      want = 0 if kind == "attention" else 1
      if h % 2 != want:
        h += 1
      placed.append(h)
      h += 1
    halves[label] = tuple(placed)
    ready[label] = placed[-1]
    assert isinstance(expr, (Aggregate, SelectorWidth)) == (parts[0] == "attention")
  last = max((h for hs in halves.values() for h in hs), default=0)
  return Allocation(halves, last // 2 + 1)
