"""Answer metrics and reference floors for ProsQA-style questions, with Wilson 95 % intervals.

A question offers two candidates ``[Q] c1 c2`` (in prompt order); exactly one, the target, is
reachable from the root. For one answer position (the logits after ``[A]``):

* ``acc``      full-vocabulary accuracy, as the paper: argmax over the 40 real tokens == target. An
               untrained model scores ≈ 0 here, not 50 %.
* ``acc_two``  two-candidate accuracy: the candidate with the larger logit (ties: the first one in
               prompt order) == target. Chance is 50 %.
* ``is_cand``  the fraction of answers (full-vocabulary argmax) that are one of the two candidates.

Two model-free reference floors, per question and its prompt's candidate order:

* ``floor_first``      always answer the first candidate (≈ 50 % when the order is a coin per row);
* ``floor_ancestors``  answer the candidate with more ancestors (nodes with a directed path to it;
                       ties go to the first candidate). The target hangs under the root's subtree
                       and tends to have more: ≈ 64 % strict wins on the released graph_4 splits,
                       68.5 % counting ties as half.

:func:`answer_metrics` is the jittable per-row form the trainer and the evaluators sum;
:func:`table` prints counts as Markdown with Wilson intervals.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from projects.continuous_cot import data as data_lib
from projects.continuous_cot.graphs import Problem

VOCAB_SIZE = data_lib.VOCAB.vocab_size
MODEL_METRICS = ("acc", "acc_two", "is_cand")
FLOORS = ("floor_first", "floor_ancestors")
LABELS = {
  "acc": "full-vocabulary accuracy",
  "acc_two": "two-candidate accuracy",
  "is_cand": "answer is a candidate",
  "floor_first": "floor: first candidate",
  "floor_ancestors": "floor: more ancestors",
}


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """95% Wilson score interval of a proportion."""
  if n == 0:
    return float("nan"), float("nan")
  p = correct / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


# Reference floors (plain Python) ------------------------------------------------------------------
def candidates(prompt: Sequence[int]) -> tuple[int, int]:
  """(c1, c2): the two candidates in prompt order, the tokens after ``[Q]``."""
  at = list(prompt).index(data_lib.QUESTION)
  return int(prompt[at + 1]), int(prompt[at + 2])


def coin_order(problem: Problem, i: int) -> tuple[int, int]:
  """(target, neg) or (neg, target), a fixed coin per problem index (as
  ``analysis.candidate_order``): for evaluations that build prompts without the trainer's per-row
  shuffle."""
  pair = (problem.target, problem.neg_target)
  return pair[::-1] if random.Random(i).random() < 0.5 else pair


def ancestor_count(problem: Problem, node: int) -> int:
  """How many nodes have a directed path to ``node`` (breadth-first search backwards; itself
  excluded)."""
  depths = problem.depths(node, reverse=True)
  return sum(1 for v, d in enumerate(depths) if d is not None and v != node)


def more_ancestors(problem: Problem, c1: int, c2: int) -> int:
  """The candidate with more ancestors; ties go to ``c1`` (the first in prompt order)."""
  return c2 if ancestor_count(problem, c2) > ancestor_count(problem, c1) else c1


def floors(problem: Problem, c1: int, c2: int) -> dict[str, float]:
  """1.0 / 0.0 per floor: does that rule answer this question (candidates in prompt order)
  correctly?"""
  return {
    "floor_first": float(c1 == problem.target),
    "floor_ancestors": float(more_ancestors(problem, c1, c2) == problem.target),
  }


# Model metrics (jittable, per row) ----------------------------------------------------------------
def answer_metrics(answer_logits_BV, target_B, cands_B2, *, answer_B=None) -> dict:
  """Per-row 0/1 (f32) ``acc``, ``acc_two``, ``is_cand`` from the logits at the answer position.

  ``answer_B``: the answer token where it is not the argmax of these logits (CoT: the token decoded
  after the first generated ``[A]``, −1 when there is none); the two-candidate choice still reads
  the logits.
  """
  logits = answer_logits_BV[:, :VOCAB_SIZE].astype(jnp.float32)
  answer = logits.argmax(-1) if answer_B is None else answer_B
  c1, c2 = cands_B2[:, 0], cands_B2[:, 1]
  l1 = jnp.take_along_axis(logits, c1[:, None], axis=1)[:, 0]
  l2 = jnp.take_along_axis(logits, c2[:, None], axis=1)[:, 0]
  two = jnp.where(l2 > l1, c2, c1)
  return {
    "acc": (answer == target_B).astype(jnp.float32),
    "acc_two": (two == target_B).astype(jnp.float32),
    "is_cand": ((answer == c1) | (answer == c2)).astype(jnp.float32),
  }


def hop_metrics(logits_BOV, sets_BOV) -> dict:
  """Per-row ``hop{k}`` (0/1: the argmax over the 40 real tokens of the k-th logits is in the k-th
  set) and ``hop{k}_mass`` (the softmax mass on that set), k = 1..O. Coconut with gold thoughts: the
  k-th logits are those of the root (k = 1) or of thought k − 1, the sets the depth-k nodes on
  shortest paths."""
  logits = logits_BOV[..., :VOCAB_SIZE].astype(jnp.float32)
  hit = jnp.take_along_axis(sets_BOV, logits.argmax(-1)[..., None], axis=-1)[..., 0]
  mass = (jax.nn.softmax(logits, axis=-1) * sets_BOV).sum(-1)
  out = {}
  for k in range(logits.shape[1]):
    out[f"hop{k + 1}"], out[f"hop{k + 1}_mass"] = hit[:, k], mass[:, k]
  return out


# Tables -------------------------------------------------------------------------------------------
def counts_from_means(means: Mapping[str, float], n: int) -> dict[str, tuple[int, int]]:
  """{metric: (k, n)} from mean values over n rows (as the eval loop reports them)."""
  return {k: (int(round(v * n)), n) for k, v in means.items()}


def cell(k: int, n: int) -> str:
  lo, hi = wilson(k, n)
  return f"{k / n:.1%} ({lo:.1%}–{hi:.1%})" if n else "–"


def table(
  rows: Mapping[str, Mapping[str, tuple[int, int]]], metrics: Sequence[str] = MODEL_METRICS + FLOORS
) -> str:
  """Markdown: one row per entry of ``rows`` ({name: {metric: (k, n)}}), one column per metric, each
  cell 'p (95 % Wilson interval)'; n in the last column."""
  head = "| | " + " | ".join(LABELS.get(m, m) for m in metrics) + " | n |"
  lines = [head, "|---" * (len(metrics) + 2) + "|"]
  for name, counts in rows.items():
    n = next(iter(counts.values()))[1] if counts else 0
    cells = [cell(*counts[m]) if m in counts else "–" for m in metrics]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {n} |")
  return "\n".join(lines)


def by_variant(counts: Mapping[str, tuple[int, int]]) -> dict[str, dict[str, tuple[int, int]]]:
  """Split a run's {metric: (k, n)} into table rows: '' (the answer; Coconut: the gold hop count of
  thoughts) and '_fixed' (Coconut: the fixed thought count), each with the floors."""
  out = {}
  for suffix in ("", "_fixed"):
    row = {base: counts[base + suffix] for base in MODEL_METRICS if base + suffix in counts}
    if row:
      out[suffix] = {**row, **{f: counts[f] for f in FLOORS if f in counts}}
  return out
