"""The superposition-signature analysis: group definitions by hand, the construction's signature,
the CLI."""

import math

import numpy as np
import pytest

from projects.continuous_cot import analysis, construction, graphs

# root 0; 0→1, 0→2, 1→2, 1→3, 2→4, 3→5, 6→7, 6→3; target 4 (0→2→4), neg 7 (only from the unreachable
# 6). BFS depths 0:0 1:1 2:1 3:2 4:2 5:3. Walks of length 2 reach 2 (via 1), 3, 4; of length 3, 4
# (via 1→2) and 5.
EDGES = ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (6, 7), (6, 3))
SMALL = graphs.Problem(8, EDGES, root=0, target=4, neg_target=7)


def test_node_groups_by_hand():
  SMALL.check()
  assert SMALL.neighbor_k() == {0: [0], 1: [2], 2: [4]}
  assert analysis.walk_levels(SMALL, 3) == [{0}, {1, 2}, {2, 3, 4}, {4, 5}]
  assert analysis.node_groups(SMALL, 0) == {
    "not_reachable": {1, 2, 3, 4, 5, 6, 7},
    "reachable": {0},
    "frontier": {0},
    "optimal": {0},
  }
  assert analysis.node_groups(SMALL, 1) == {
    "not_reachable": {3, 4, 5, 6, 7},
    "reachable": {0, 1, 2},
    "frontier": {1, 2},
    "optimal": {2},
  }
  # walk-based frontier: 2 (BFS depth 1) is also reached by the walk 0→1→2 of length 2
  assert analysis.node_groups(SMALL, 2) == {
    "not_reachable": {5, 6, 7},
    "reachable": {0, 1, 2, 3, 4},
    "frontier": {2, 3, 4},
    "optimal": {4},
  }


def test_edge_groups_by_hand():
  # step 1: the query carries the root: its edges are reachable = frontier; 0→2 is the optimal one
  assert analysis.edge_groups(SMALL, 1) == {
    "not_reachable": [2, 3, 4, 5, 6, 7],
    "reachable": [0, 1],
    "frontier": [0, 1],
    "optimal": [1],
  }
  assert analysis.edge_groups(SMALL, 2) == {
    "not_reachable": [5, 6, 7],
    "reachable": [0, 1, 2, 3, 4],
    "frontier": [2, 3, 4],
    "optimal": [4],
  }
  code, theory = analysis.edge_triplets(SMALL, "code"), analysis.edge_triplets(SMALL, "theory")
  assert 7 not in code and theory[7] == (22, 23, 24) and code[0] == (1, 2, 3)


def test_ordering_helpers():
  assert analysis._ordered([3.0, 2.0, 1.0, 0.0], 1e-6) == (True, True)
  assert analysis._ordered([1.0, 1.0, 1.0, 0.0], 1e-6) == (False, True)
  assert analysis._ordered([1.0, 2.0, 1.0, 0.0], 1e-6) == (False, False)
  assert analysis._ordered([1.0, 1.0, 1.0, 1.0], 1e-6) == (
    False,
    False,
  )  # reachable must beat not-reachable


@pytest.fixture(scope="module")
def construction_run(released):
  subject = analysis.subject_for("construction")
  problems = released["graph4_shuffled"][:20]
  traces = analysis.trace(subject, problems)
  return subject, traces, analysis.signature(subject, traces)


def test_construction_signature(construction_run):
  subject, traces, result = construction_run
  assert result["accuracy"] == 1.0 and result["count"] == 20
  d = subject.model.cfg.d_model
  for tr in traces:
    p = tr.problem
    for step in range(1, p.hops + 1):
      np.testing.assert_allclose(
        tr.thoughts[step - 1], construction.ideal_thought(p, step, d), atol=1e-5
      )
  # uniform superposition: every reachable node at 1/√|V_i|, the rest at 0, within each problem
  for step in (1, 2):
    for tr, means in zip(traces, result["inner_by_problem"][step]):
      size = len(tr.problem.reachable_within(step))
      for g in ("reachable", "frontier", "optimal"):
        assert means[g] == pytest.approx(1 / math.sqrt(size), abs=1e-5)
      assert abs(means["not_reachable"]) < 1e-6
    for means in result["attention_by_problem"][step]:
      assert means["not_reachable"] < 1e-4 and means["reachable"] > 0.01
  # the ordering holds with ties (≥ ≥ >) in every problem, never strictly: the construction weights
  # uniformly
  for key in ("inner", "attention"):
    each = analysis.problem_ordering(result[f"{key}_by_problem"])
    assert each == {"strict": 0.0, "weak": 1.0}
    for s in (1, 2):
      assert result[key]["reachable"][s][0] > result[key]["not_reachable"][s][0] + 0.05
      assert result[key]["optimal"][s][0] >= result[key]["reachable"][s][0] - 0.02


def test_cli_writes_tables_and_plots(released, shared_data, tmp_path):
  assert (
    analysis.main(
      [
        "--data",
        str(shared_data / "prosqa"),
        "--out",
        str(tmp_path),
        "--split",
        "graph4",
        "--limit",
        "6",
      ]
    )
    == 0
  )
  for name in ("graph4.md", "graph4.png", "signature.md"):
    assert (tmp_path / name).stat().st_size > 0
  text = (tmp_path / "signature.md").read_text()
  assert "–Optimal" in text and "6.41, 6.52, 6.84" in text and "2.54±1.03" in text
  assert (tmp_path / "graph4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
