"""Answer metrics and reference floors: the floors against a brute-force reference on the released
ProsQA validation splits, the per-row metrics by hand, the trainer's evaluation against a direct
recomputation (bucketed and padded evaluation alike), and the Wilson tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.continuous_cot import scaled as scaled_cfg
from projects.continuous_cot import data, evaluate as cot_eval, metrics, train
from projects.continuous_cot.graphs import Problem


def brute_force_ancestors(problem, node):
  """Nodes u ≠ node from which ``node`` is reachable: the transitive closure of the edge relation by
  repeated relaxation over all pairs (independent of the breadth-first search in graphs.py)."""
  n = problem.num_nodes
  reach = [[False] * n for _ in range(n)]
  for s, t in problem.edges:
    reach[s][t] = True
  changed = True
  while changed:
    changed = False
    for u in range(n):
      for v in range(n):
        if reach[u][v]:
          for w in range(n):
            if reach[v][w] and not reach[u][w]:
              reach[u][w] = changed = True
  return sum(reach[u][node] for u in range(n) if u != node)


def brute_force_floors(problem, c1, c2):
  a1, a2 = brute_force_ancestors(problem, c1), brute_force_ancestors(problem, c2)
  choice = c2 if a2 > a1 else c1
  return {
    "floor_first": float(c1 == problem.target),
    "floor_ancestors": float(choice == problem.target),
  }


@pytest.mark.parametrize("split", ["valid", "graph4"])
def test_floors_match_brute_force_on_released_splits(released, split):
  problems = released[split]
  strict = ties = 0
  for p in problems:
    t, n = brute_force_ancestors(p, p.target), brute_force_ancestors(p, p.neg_target)
    assert (metrics.ancestor_count(p, p.target), metrics.ancestor_count(p, p.neg_target)) == (t, n)
    strict, ties = strict + (t > n), ties + (t == n)
    for c1, c2 in ((p.target, p.neg_target), (p.neg_target, p.target)):
      assert metrics.floors(p, c1, c2) == brute_force_floors(p, c1, c2)
  # The "more ancestors scores 68.5 % on the released split": graph_4, ties counted as half.
  expect = {"valid": (195, 29), "graph4": (164, 24)}[split]
  assert (strict, ties) == expect
  if split == "graph4":
    assert (strict + ties / 2) / len(problems) == pytest.approx(0.685, abs=5e-4)


def test_answer_metrics_by_hand():
  V = metrics.VOCAB_SIZE
  logits = np.zeros((5, 48), np.float32)  # padded vocabulary: ids >= 40 never chosen
  logits[:, 40:] = 100.0
  target, neg = 3, 7
  logits[0, [target, neg]] = [5.0, 1.0]  # answers the target
  logits[1, [11, target, neg]] = [
    9.0,
    2.0,
    1.0,
  ]  # answers a non-candidate; the target beats the negative
  logits[2, [target, neg]] = [1.0, 4.0]  # answers the negative
  logits[3, [target, neg]] = [2.0, 2.0]  # a tie between the candidates: the first in prompt order
  logits[4, [target, neg]] = [3.0, 1.0]  # CoT with no [A] decoded: answer −1
  cands = np.array(
    [[neg, target], [target, neg], [target, neg], [neg, target], [target, neg]], np.int32
  )
  answer = np.array([target, 11, neg, neg, -1], np.int32)
  got = metrics.answer_metrics(jnp.asarray(logits), jnp.full(5, target), jnp.asarray(cands))
  # row 3: the full-vocabulary argmax of a tie is the lower id (the target); the two-candidate
  # choice the first
  assert [list(np.asarray(got[k])) for k in ("acc", "acc_two", "is_cand")] == [
    [1, 0, 0, 1, 1],
    [1, 1, 0, 0, 1],
    [1, 0, 1, 1, 1],
  ]
  assert V == 40
  with_answer = metrics.answer_metrics(
    jnp.asarray(logits), jnp.full(5, target), jnp.asarray(cands), answer_B=jnp.asarray(answer)
  )
  assert list(np.asarray(with_answer["acc"])) == [1, 0, 0, 0, 0]
  assert list(np.asarray(with_answer["is_cand"])) == [1, 0, 1, 1, 0]


@pytest.fixture(scope="module")
def graph4_task(released):
  def make(batching):
    c = scaled_cfg.get_config("smoke")
    c.cot.update(dict(batching=batching, eval_fixed_thoughts=3))
    c.train.batch_size = 24
    problems = released["graph4"][:24]
    return train.make_task(c.to_dict(), train=problems, valid=problems)

  return make


def _evaluate(task, params, graphdef):
  @jax.jit
  def fn(params, batch):
    return task.spec.eval_loss(nnx.merge(graphdef, params), batch)[1]

  eval_set = task.data.eval_set
  sums = {}
  for i in range(eval_set.num_batches):
    for k, v in fn(params, eval_set.batch(i)).items():
      sums[k] = sums.get(k, 0.0) + float(v) / eval_set.num_batches
  return sums


def test_evaluation_metrics_against_a_direct_recomputation(graph4_task):
  bucketed, padded = graph4_task("bucketed"), graph4_task("padded")
  graphdef, params = nnx.split(bucketed.spec.make_model())
  got = _evaluate(bucketed, params, graphdef)
  assert set(got) == {
    "acc",
    "acc_two",
    "is_cand",
    "acc_fixed",
    "acc_two_fixed",
    "is_cand_fixed",
    "floor_first",
    "floor_ancestors",
    "hop1",
    "hop2",
    "hop3",
    "hop1_mass",
    "hop2_mass",
    "hop3_mass",
  }
  n = bucketed.data.eval_set.n
  rows = bucketed.data.eval_set.rows
  # Floors: brute force on each row's own prompt (the candidate order of the evaluation rows).
  for name in metrics.FLOORS:
    want = np.mean(
      [
        brute_force_floors(p, *row["cands"].tolist())[name]
        for p, row in zip(bucketed.data.valid, rows)
      ]
    )
    assert got[name] == pytest.approx(want, abs=1e-6)
  for p, row in zip(bucketed.data.valid, rows):  # the candidates are the prompt's [Q] c1 c2
    tokens = row["tokens_gold"].tolist()
    q = tokens.index(data.QUESTION)
    assert tokens[q + 1 : q + 3] == row["cands"].tolist() and set(tokens[q + 1 : q + 3]) == {
      p.target,
      p.neg_target,
    }
  # Model metrics: from the answer logits of the padded evaluation's full forward, in numpy.
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  full = jax.jit(
    lambda p, b: [
      padded.spec._logits(
        nnx.merge(graphdef, p), b[f"tokens_{name}"], b, f"num_{name}", padded.spec.U_eval
      )[..., :40]
      for name in ("gold", "fixed")
    ]
  )(params, batch)
  # hop k (gold thoughts): the logits at column latent_start − 1 + (k − 1) (the root, then thought k
  # − 1)
  gold = np.asarray(full[0])
  for k in range(1, 4):
    cols = np.array([r["latent_start"] for r in rows]) - 1 + (k - 1)
    logits_k = gold[np.arange(n), cols]
    want = np.mean(
      [logits_k[i].argmax() in p.neighbor_k()[k] for i, p in enumerate(bucketed.data.valid)]
    )
    assert got[f"hop{k}"] == pytest.approx(want, abs=1e-6)
    probs = np.exp(logits_k - logits_k.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mass = np.mean([probs[i, p.neighbor_k()[k]].sum() for i, p in enumerate(bucketed.data.valid)])
    assert got[f"hop{k}_mass"] == pytest.approx(mass, abs=1e-5)
  for logits, suffix, name in zip(full, ("", "_fixed"), ("gold", "fixed")):
    logits = np.asarray(logits)[np.arange(n), np.array([r[f"col_{name}"] for r in rows])]
    answer = logits.argmax(-1)
    c = np.stack([r["cands"] for r in rows])
    target = np.array([p.target for p in bucketed.data.valid])
    two = np.where(logits[np.arange(n), c[:, 1]] > logits[np.arange(n), c[:, 0]], c[:, 1], c[:, 0])
    assert got["acc" + suffix] == pytest.approx(np.mean(answer == target), abs=1e-6)
    assert got["acc_two" + suffix] == pytest.approx(np.mean(two == target), abs=1e-6)
    assert got["is_cand" + suffix] == pytest.approx(
      np.mean((answer == c[:, 0]) | (answer == c[:, 1])), abs=1e-6
    )


def test_tables_with_wilson_intervals():
  counts = {
    "acc": (45, 257),
    "acc_two": (130, 257),
    "is_cand": (250, 257),
    "acc_fixed": (40, 257),
    "acc_two_fixed": (128, 257),
    "is_cand_fixed": (249, 257),
    "floor_first": (127, 257),
    "floor_ancestors": (176, 257),
  }
  variants = metrics.by_variant(counts)
  assert set(variants) == {"", "_fixed"} and variants["_fixed"]["acc"] == (40, 257)
  assert variants["_fixed"]["floor_ancestors"] == (176, 257)
  text = metrics.table({"coconut": variants[""]})
  lo, hi = metrics.wilson(176, 257)
  assert (
    f"68.5% ({lo:.1%}–{hi:.1%})" in text and "two-candidate accuracy" in text and "| 257 |" in text
  )
  md = cot_eval.markdown(
    "graph4",
    {"run": {"method": "coconut", "counts": counts, "chosen": "step 2", "checkpoint": "/x"}},
  )
  assert "run: coconut, gold hop count" in md and "run: coconut, fixed thought count" in md
  toy = Problem(7, ((0, 1), (1, 2), (2, 3), (4, 5), (0, 6)), root=0, target=3, neg_target=5)
  assert metrics.candidates(data.prompt_tokens(toy)) == (3, 5)
  assert metrics.candidates(data.prompt_tokens(toy, candidates=(5, 3))) == (5, 3)
