"""Training rows of ProsQA problems, plain Python (the tests check them token by token): the Coconut
curriculum's stage of a row and its row (``prompt + s × <|latent|> + label``, the label drawn from
:func:`label_pool`), the CoT / No-CoT rows, the stage schedule, per-row node relabelling, the label
pool as a 40-token mask, and padding / next-token targets. :mod:`train` draws them per row from
(seed, step, g).
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

import numpy as np

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import graphs
from projects.continuous_cot.graphs import Problem

VOCAB_SIZE = data_lib.VOCAB.vocab_size  # 40 real tokens


def coconut_stage(
  problem: Problem, scheduled_stage: int, rng: random.Random, uniform_prob: float
) -> int:
  """s = min(scheduled, D), or w.p. uniform_prob randint(0, min(scheduled, D)) (RS
  ``expand_data``)."""
  s = min(scheduled_stage, problem.hops)
  if uniform_prob > 0 and rng.random() < uniform_prob:
    s = rng.randint(0, s)
  return s


def label_pool(problem: Problem, s: int, labels: str = "path") -> list[int]:
  """The nodes a stage-s label is drawn from: depth-(s+1) nodes on a shortest path (``path``) or
  every node exactly s+1 hops from the root (``bfs``); the target at the final stage s = D."""
  if s >= problem.hops:
    return [problem.target]
  return problem.neighbor_k()[s + 1] if labels == "path" else sorted(problem.frontier(s + 1))


def coconut_row(
  problem: Problem, s: int, prompt: Sequence[int], rng: random.Random, labels: str = "path"
):
  """(tokens, num_thoughts, loss_col) of stage s: ``loss_col`` is the column whose next-token logits
  carry the loss, i.e. ``tokens[loss_col + 1]`` is the supervised label."""
  hops = problem.hops
  if not 0 <= s <= hops:
    raise ValueError(f"stage {s}: must be in [0, {hops}] for a {hops}-hop problem")
  if s < hops:
    tokens = list(prompt) + [data_lib.LATENT] * s + [rng.choice(label_pool(problem, s, labels))]
    return tokens, s, len(tokens) - 2
  tokens = list(prompt) + [data_lib.LATENT] * hops + [data_lib.ANSWER, problem.target]
  return tokens, hops, len(tokens) - 2


def shortest_path(problem: Problem, rng: random.Random) -> list[int]:
  """A random shortest root → target path (root excluded): each next node a child on the next
  layer."""
  layers, children = problem.neighbor_k(), problem.children
  path = [problem.root]
  for k in range(1, problem.hops + 1):
    path.append(rng.choice([v for v in layers[k] if v in children[path[-1]]]))
  return path[1:]


def language_row(problem: Problem, prompt: Sequence[int], rng: random.Random, method: str):
  """(tokens, first supervised column): CoT or No-CoT; the loss covers every token after the
  prompt."""
  middle = shortest_path(problem, rng) if method == "cot" else []
  tokens = list(prompt) + middle + [data_lib.ANSWER, problem.target, data_lib.EOS]
  return tokens, len(prompt) - 1


def scheduled_stage(cot: Mapping, step: int, batch_size: int, num_train: int) -> int:
  """The stage of step ``step`` (1-based) under the ``config.cot`` section ``cot``: stage 0 for the
  first ``stage0_steps`` (or ``stage0_epochs``; 0 = as long as the others), then one stage per
  ``steps_per_stage`` steps (or ``epochs_per_stage`` epochs of ``num_train`` problems at
  ``batch_size`` rows per step)."""
  if cot["steps_per_stage"] > 0:
    first, per, at = cot["stage0_steps"] or cot["steps_per_stage"], cot["steps_per_stage"], step - 1
  else:
    per = max(cot["epochs_per_stage"], 1)
    first, at = cot["stage0_epochs"] or per, (step - 1) * batch_size // num_train
  return 0 if at < first else 1 + (at - first) // per


def stage_starts(
  cot: Mapping, total_steps: int, last_stage: int, batch_size: int, num_train: int
) -> list[int]:
  """The first step of each stage 1 .. ``last_stage`` within ``total_steps``."""
  out = []
  for step in range(2, total_steps + 1):
    stage = scheduled_stage(cot, step, batch_size, num_train)
    if stage > last_stage:
      break
    if stage != scheduled_stage(cot, step - 1, batch_size, num_train):
      out.append(step)
  return out


def relabel_row(problem: Problem, rng: random.Random) -> Problem:
  """The problem with its nodes sent to distinct random ids among all ``graphs.MAX_NODES`` node
  tokens (EoS's per-row ``shuffle_nodes``): no id carries a role, every node token is used."""
  return graphs.relabel(
    problem, rng.sample(range(graphs.MAX_NODES), problem.num_nodes), graphs.MAX_NODES
  )


def set_mask(nodes: Sequence[int]) -> np.ndarray:
  out = np.zeros(VOCAB_SIZE, np.float32)
  out[list(nodes)] = 1.0
  return out


def pad_row(tokens: Sequence[int], width: int) -> np.ndarray:
  if len(tokens) > width:
    raise ValueError(f"row of {len(tokens)} tokens does not fit in {width} columns")
  out = np.full(width, data_lib.EOS, np.int32)
  out[: len(tokens)] = tokens
  return out


def shifted(tokens: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
  """Next-token targets of a row and weights 1 on columns [first, last]."""
  targets = np.concatenate([tokens[1:], [data_lib.EOS]]).astype(np.int32)
  weights = np.zeros(tokens.shape, np.float32)
  weights[first : last + 1] = 1.0
  return targets, weights
