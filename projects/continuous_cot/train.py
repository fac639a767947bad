"""Training on ProsQA-style graph reachability: Coconut (continuous thoughts, staged curriculum), CoT, No-CoT.

The trainer of ``configs/continuous_cot/*.py`` (``config.trainer = 'projects.continuous_cot.train'``); a
:class:`superpose.train.loop.Task`, so resume, checkpoints, metrics and the jitted step are the shared loop's.

Methods (``config.cot.method``), all on the same model and rows of the same problems:

* ``coconut``: the curriculum of spec §2.2, as the RS code implements it. ``scheduled_stage`` = epoch //
  ``epochs_per_stage`` (or (step − 1) // ``steps_per_stage`` when that is > 0). Per row,
  s = min(scheduled_stage, D) (D = the row's hop count); with probability ``uniform_prob`` s is drawn
  instead from randint(0, min(scheduled_stage, D)) (inclusive). With k = s + 1:
    k ≤ D:   ``prompt + s × <|latent|> + label``, label a depth-k node on a shortest path
             (``labels='bfs'``: any node exactly k hops from the root, Coconut-BFS);
    k = D+1: ``prompt + D × <|latent|> + [A] + target``.
  The loss is the cross-entropy of that one label token (at the last latent, or at the root when s = 0).
* ``cot``: ``prompt + n1 … nD + [A] + target + <eos>`` with a random shortest path; loss on every token
  after the prompt (path, [A], answer, <eos>).
* ``nocot``: ``prompt + [A] + target + <eos>``; loss on the tokens after the prompt.

Edges and the candidate order are re-shuffled every time a row is built (spec §1.2). Batches are a pure
function of (seed, step): row g = (step − 1)·B + r is problem ``perm_e[g mod N]`` of the epoch-e
permutation (e = g // N), and its random choices come from ``random.Random`` seeded by (seed, g).

Layout: right-padded, fixed shapes (one compile for training, one for evaluation). Every row's prompt
fits in ``P`` columns (the longest prompt of the data, rounded up to 8); thoughts start at the row's own
prompt length (``latent_start``) and rows carry their own thought count, up to ``K`` (static). The thought
forward (:func:`rowwise_thought_forward`) is the KV-cached one of :mod:`thoughts` with per-row counts: the
k-th single-position step feeds the previous post-norm hidden state where k < the row's count and the
row's own token otherwise.

Evaluation (generated validation split only; never the released files): answer accuracy with
(a) the gold hop count of thoughts (``eval/acc``, as the paper) and (b) ``eval_fixed_thoughts`` thoughts
for every problem (``eval/acc_fixed``, does not leak the solution length); the answer is the argmax over
the 40 real tokens after ``[A]``. CoT is decoded greedily (``max hops + 2`` tokens) and the answer is
the token after the first generated ``[A]``. ``run`` writes ``selection.json``: the evaluated step with
the best ``eval/acc`` (the checkpoint to use), chosen on the generated validation split.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import random
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from superpose import nn
from superpose.nn import config as nn_config
from superpose.nn.cache import write_rows
from superpose.train import checkpoint as ckpt_lib, config as config_lib, flops, loop
from superpose.train.lm import lm_loss

from projects.continuous_cot import data as data_lib
from projects.continuous_cot.graphs import Problem

log = logging.getLogger(__name__)

METHODS = ("coconut", "cot", "nocot")
LABELS = ("path", "bfs")
VOCAB_SIZE = data_lib.VOCAB.vocab_size  # 40 real tokens; argmax is taken over these only


def cot_section(**overrides) -> ml_collections.ConfigDict:
  """The ``config.cot`` section with every key and its default (also the schema reference)."""
  s = ml_collections.ConfigDict({
      "method": "coconut",          # coconut | cot | nocot
      "data_dir": "",               # output of `python -m projects.continuous_cot.data generate --out DIR`
      "train_file": "train.json",
      "valid_file": "valid.json",
      "train_limit": 0,             # use only the first N training problems (0 = all)
      "eval_limit": 0,              # evaluate on the first N validation problems (0 = all)
      "layout": "code",             # prompt layout of data.prompt_tokens
      "epochs_per_stage": 25,       # spec §2.2 (RS: 25)
      "steps_per_stage": 0,         # > 0: stages by steps instead of epochs
      "uniform_prob": 0.1,          # mix earlier stages (spec §2.2)
      "labels": "path",             # path (RS) | bfs (Coconut-BFS, RS §5.4)
      "max_thoughts": 0,            # K, thought slots in training rows (0 = the largest hop count in train)
      "eval_fixed_thoughts": 4,     # the fixed thought count of eval/acc_fixed
      "prompt_len": 0,              # P, columns for the prompt (0 = longest prompt of the data, rounded to 8)
  })
  s.update(overrides)
  return s


def extra_sections() -> dict:
  return {"cot": cot_section().to_dict()}


def attach_schema(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  object.__setattr__(config, "extra_sections", extra_sections())
  return config


def _round_up(n: int, m: int = 8) -> int:
  return -(-n // m) * m


# --- rows (plain Python; the tests check them token by token) ---------------------------------------------

def coconut_stage(problem: Problem, scheduled_stage: int, rng: random.Random, uniform_prob: float) -> int:
  """s = min(scheduled, D), or w.p. uniform_prob randint(0, min(scheduled, D)) (RS ``expand_data``)."""
  s = min(scheduled_stage, problem.hops)
  if uniform_prob > 0 and rng.random() < uniform_prob:
    s = rng.randint(0, s)
  return s


def coconut_row(problem: Problem, s: int, prompt: Sequence[int], rng: random.Random, labels: str = "path"):
  """(tokens, num_thoughts, loss_col) of stage s: ``loss_col`` is the column whose next-token logits carry
  the loss, i.e. ``tokens[loss_col + 1]`` is the supervised label."""
  hops = problem.hops
  if not 0 <= s <= hops:
    raise ValueError(f"stage {s}: must be in [0, {hops}] for a {hops}-hop problem")
  k = s + 1
  if k <= hops:
    pool = problem.neighbor_k()[k] if labels == "path" else sorted(problem.frontier(k))
    tokens = list(prompt) + [data_lib.LATENT] * s + [rng.choice(pool)]
    return tokens, s, len(tokens) - 2
  tokens = list(prompt) + [data_lib.LATENT] * hops + [data_lib.ANSWER, problem.target]
  return tokens, hops, len(tokens) - 2


def shortest_path(problem: Problem, rng: random.Random) -> list[int]:
  """A random shortest root → target path (root excluded): each next node a child on the next layer."""
  layers, children = problem.neighbor_k(), problem.children
  path = [problem.root]
  for k in range(1, problem.hops + 1):
    path.append(rng.choice([v for v in layers[k] if v in children[path[-1]]]))
  return path[1:]


def language_row(problem: Problem, prompt: Sequence[int], rng: random.Random, method: str):
  """(tokens, first supervised column): CoT or No-CoT; the loss covers every token after the prompt."""
  middle = shortest_path(problem, rng) if method == "cot" else []
  tokens = list(prompt) + middle + [data_lib.ANSWER, problem.target, data_lib.EOS]
  return tokens, len(prompt) - 1


def pad_row(tokens: Sequence[int], width: int) -> np.ndarray:
  if len(tokens) > width:
    raise ValueError(f"row of {len(tokens)} tokens does not fit in {width} columns")
  out = np.full(width, data_lib.EOS, np.int32)
  out[:len(tokens)] = tokens
  return out


def shifted(tokens: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
  """Next-token targets of a row and weights 1 on columns [first, last]."""
  targets = np.concatenate([tokens[1:], [data_lib.EOS]]).astype(np.int32)
  weights = np.zeros(tokens.shape, np.float32)
  weights[first:last + 1] = 1.0
  return targets, weights


# --- the thought forward with a per-row number of thoughts ------------------------------------------------

def _take_rows(x_BTX, index_BN):
  index = index_BN.reshape(index_BN.shape + (1,) * (x_BTX.ndim - 2))
  return jnp.take_along_axis(x_BTX, index, axis=1)


def rowwise_thought_forward(model: nn.Transformer, tokens_BT, latent_start_B, num_thoughts_B, *,
                            max_thoughts: int, prefix_len: int):
  """Logits (B, T, V) of rows with ``num_thoughts_B[b] ≤ max_thoughts`` thoughts starting at
  ``latent_start_B[b] ≤ prefix_len``: prefill ``prefix_len`` columns, ``max_thoughts`` cached
  single-position steps (a thought where k < the row's count, the row's token otherwise), then the
  remaining ``T − prefix_len − max_thoughts`` columns from ``latent_start + max_thoughts`` in one pass."""
  batch, length = tokens_BT.shape
  rest = length - prefix_len - max_thoughts
  if rest < 0:
    raise ValueError(f"T={length} < prefix_len {prefix_len} + max_thoughts {max_thoughts}")
  latent_start_B = latent_start_B.astype(jnp.int32)
  positions_BT = nn.decoder.default_positions(batch, length)
  cache = nn.init_cache(model.cfg, batch, length)
  out = model(tokens_BT[:, :prefix_len], positions_BT=positions_BT[:, :prefix_len], cache=cache)
  padding = ((0, 0), (0, length - prefix_len), (0, 0))
  logits_BTV = jnp.pad(out.logits_BTV, padding)
  cache = out.cache
  prev_BD = _take_rows(out.final_hidden_BTD, (latent_start_B - 1)[:, None])[:, 0]
  step_logits = []
  for k in range(max_thoughts):  # unrolled: K ≤ a handful of single-position steps
    pos_B1 = (latent_start_B + k)[:, None]
    is_thought_B1 = (k < num_thoughts_B)[:, None]
    step = model(_take_rows(tokens_BT, pos_B1), positions_BT=pos_B1, embeds_BTD=prev_BD[:, None],
                 embeds_mask_BT=is_thought_B1, cache=cache)
    cache, prev_BD = step.cache, step.final_hidden_BTD[:, 0]
    step_logits.append(step.logits_BTV)
  if max_thoughts:
    pos_BK = latent_start_B[:, None] + jnp.arange(max_thoughts, dtype=jnp.int32)
    logits_BTV = write_rows(logits_BTV, jnp.concatenate(step_logits, axis=1), pos_BK)
  if rest > 0:
    pos_BR = (latent_start_B + max_thoughts)[:, None] + jnp.arange(rest, dtype=jnp.int32)
    out = model(_take_rows(tokens_BT, pos_BR), positions_BT=pos_BR, cache=cache)
    logits_BTV = write_rows(logits_BTV, out.logits_BTV, pos_BR)
  return logits_BTV


def _answer_logits(logits_BTV, col_B):
  return _take_rows(logits_BTV, col_B[:, None])[:, 0, :VOCAB_SIZE].astype(jnp.float32)


# --- data --------------------------------------------------------------------------------------------------

def load_split(config: Mapping, key: str) -> list[Problem]:
  c = config["cot"]
  if not c["data_dir"]:
    raise config_lib.ConfigError("config.cot.data_dir is empty: generate data with `python -m "
                                 "projects.continuous_cot.data generate --out DIR` and pass --config.cot.data_dir=DIR")
  path = pathlib.Path(c["data_dir"]) / c[key]
  if not path.exists():
    raise config_lib.ConfigError(f"config.cot.data_dir: {path} not found; generate it with `python -m "
                                 f"projects.continuous_cot.data generate --out {c['data_dir']}`")
  problems = data_lib.load(path, check=False)
  limit = c["train_limit" if key == "train_file" else "eval_limit"]
  return problems[:limit] if limit else problems


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 7]).permutation(n)


class CotTask:
  """The loop Task of the three methods (see the module docstring)."""

  def __init__(self, config: Mapping, train: list[Problem] | None = None, valid: list[Problem] | None = None):
    self.config = config
    c, t = config["cot"], config["train"]
    self.method, self.labels, self.seed = c["method"], c["labels"], config["seed"]
    if self.method not in METHODS:
      raise config_lib.ConfigError(f"config.cot.method={self.method!r}: must be one of {', '.join(METHODS)}")
    if self.labels not in LABELS:
      raise config_lib.ConfigError(f"config.cot.labels={self.labels!r}: must be one of {', '.join(LABELS)}")
    if c["layout"] not in data_lib.LAYOUTS:
      raise config_lib.ConfigError(f"config.cot.layout={c['layout']!r}: must be one of {', '.join(data_lib.LAYOUTS)}")
    self.train = train if train is not None else load_split(config, "train_file")
    self.valid = valid if valid is not None else load_split(config, "valid_file")
    if not self.train or not self.valid:
      raise config_lib.ConfigError(f"config.cot: {len(self.train)} training / {len(self.valid)} validation problems")
    try:
      self.model_cfg = nn_config.from_dict(config["model"])
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(" ".join(str(e).split())) from None
    if self.model_cfg.vocab_size < VOCAB_SIZE:
      raise config_lib.ConfigError(f"config.model.vocab_size={self.model_cfg.vocab_size} < {VOCAB_SIZE}")

    self.batch_size = t["batch_size"]
    every = self.train + self.valid
    longest = max(3 * len(p.edges) + 6 for p in every)   # 'theory' layout has one more token
    self.P = c["prompt_len"] or _round_up(longest)
    if self.P < longest:
      raise config_lib.ConfigError(f"config.cot.prompt_len={self.P} < the longest prompt ({longest} tokens)")
    train_hops = max(p.hops for p in self.train)
    self.K = c["max_thoughts"] or train_hops
    if self.K < train_hops:
      raise config_lib.ConfigError(f"config.cot.max_thoughts={self.K} < the largest training hop count {train_hops}")
    self.fixed = c["eval_fixed_thoughts"]
    self.K_eval = max(self.K, self.fixed, max(p.hops for p in self.valid))
    self.gen_steps = max(p.hops for p in every) + 2   # CoT decoding: D nodes, [A], answer
    if self.method == "coconut":
      self.T, self.T_eval = _round_up(self.P + self.K + 2), _round_up(self.P + self.K_eval + 2)
    elif self.method == "cot":
      self.T = self.T_eval = _round_up(self.P + self.gen_steps + 1)
    else:
      self.T = self.T_eval = _round_up(self.P + 3)
    if max(self.T, self.T_eval) > self.model_cfg.max_seq_len:
      raise config_lib.ConfigError(f"config.model.max_seq_len={self.model_cfg.max_seq_len} < the "
                                   f"{max(self.T, self.T_eval)} columns these rows need")
    self.batch_axes = {}
    self.tokens_per_step = self.batch_size * self.T
    self.flops_per_step = flops.train_flops_per_token(self.model_cfg, self.T) * self.tokens_per_step
    self.eval_set = loop.RowsEvalSet([self.eval_row(i) for i in range(len(self.valid))], self.batch_size)
    log.info("cot task: method %s, %d train / %d valid problems, P=%d K=%d T=%d (eval K=%d T=%d)", self.method,
             len(self.train), len(self.valid), self.P, self.K, self.T, self.K_eval, self.T_eval)

  # schedule ------------------------------------------------------------------------------------------------
  def scheduled_stage(self, step: int) -> int:
    c = self.config["cot"]
    if c["steps_per_stage"] > 0:
      return (step - 1) // c["steps_per_stage"]
    epoch = (step - 1) * self.batch_size // len(self.train)
    return epoch // max(c["epochs_per_stage"], 1)

  def _prompt(self, problem: Problem, rng: random.Random) -> list[int]:
    return data_lib.prompt_tokens(problem, layout=self.config["cot"]["layout"], rng=rng)

  # rows ----------------------------------------------------------------------------------------------------
  def train_row(self, step: int, g: int) -> dict[str, np.ndarray]:
    """Row g (global index) of step ``step``: a pure function of (seed, step, g)."""
    n = len(self.train)
    problem = self.train[int(_permutation(self.seed, g // n, n)[g % n])]
    rng = random.Random(self.seed * (1 << 40) + g)
    prompt = self._prompt(problem, rng)
    if self.method == "coconut":
      s = coconut_stage(problem, self.scheduled_stage(step), rng, self.config["cot"]["uniform_prob"])
      tokens, count, col = coconut_row(problem, s, prompt, rng, self.labels)
      row = pad_row(tokens, self.T)
      targets, weights = shifted(row, col, col)
      return {"tokens": row, "targets": targets, "weights": weights,
              "latent_start": np.int32(len(prompt)), "num_thoughts": np.int32(count)}
    tokens, first = language_row(problem, prompt, rng, self.method)
    row = pad_row(tokens, self.T)
    targets, weights = shifted(row, first, len(tokens) - 2)
    return {"tokens": row, "targets": targets, "weights": weights}

  def train_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    if self.batch_size % process_count:
      raise config_lib.ConfigError(f"batch_size {self.batch_size} not divisible by {process_count} processes")
    local = self.batch_size // process_count
    base = (step - 1) * self.batch_size + process_index * local
    rows = [self.train_row(step, base + r) for r in range(local)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def eval_row(self, i: int) -> dict[str, np.ndarray]:
    problem = self.valid[i]
    rng = random.Random(10_007 * self.seed + i + 1)  # a fixed edge/candidate order per problem
    prompt = self._prompt(problem, rng)
    out = {"target": np.int32(problem.target)}
    if self.method == "coconut":
      for name, count in (("gold", problem.hops), ("fixed", self.fixed)):
        tokens = prompt + [data_lib.LATENT] * count + [data_lib.ANSWER, problem.target]
        out[f"tokens_{name}"] = pad_row(tokens, self.T_eval)
        out[f"num_{name}"] = np.int32(count)
        out[f"col_{name}"] = np.int32(len(tokens) - 2)
      out["latent_start"] = np.int32(len(prompt))
      return out
    tokens, first = language_row(problem, prompt, random.Random(i), self.method)
    row = pad_row(tokens, self.T_eval)
    out["tokens"] = row
    out["targets"], out["weights"] = shifted(row, first, len(tokens) - 2)
    out["prompt"] = pad_row(prompt, self.T_eval)
    out["prompt_len"] = np.int32(len(prompt))
    out["col_answer"] = np.int32(len(tokens) - 3)   # the [A] column (teacher forced)
    return out

  # model and loss ------------------------------------------------------------------------------------------
  def make_model(self) -> nnx.Module:
    return nn.Transformer(self.model_cfg, rngs=nnx.Rngs(self.seed))

  def _logits(self, model, tokens, batch, count_key: str, max_thoughts: int):
    if self.method != "coconut":
      return model(tokens).logits_BTV
    return rowwise_thought_forward(model, tokens, batch["latent_start"], batch[count_key],
                                   max_thoughts=max_thoughts, prefix_len=self.P)

  def loss(self, model, batch):
    if "target" in batch:
      return self._eval_loss(model, batch)
    logits = self._logits(model, batch["tokens"], batch, "num_thoughts", self.K)
    return lm_loss(logits, batch["targets"], batch["weights"])

  def _eval_loss(self, model, batch):
    scale, target = batch["scale"], batch["target"]
    metrics = {}
    if self.method == "coconut":
      for name in ("gold", "fixed"):
        logits = self._logits(model, batch[f"tokens_{name}"], batch, f"num_{name}", self.K_eval)
        answer = _answer_logits(logits, batch[f"col_{name}"])
        correct = (answer.argmax(-1) == target).astype(jnp.float32)
        metrics["acc" if name == "gold" else "acc_fixed"] = (correct * scale).sum()
        if name == "gold":
          loss = (optax.softmax_cross_entropy_with_integer_labels(answer, target) * scale).sum()
      return loss, metrics
    logits = model(batch["tokens"]).logits_BTV
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
    per_row = (ce * batch["weights"]).sum(-1) / jnp.maximum(batch["weights"].sum(-1), 1.0)
    loss = (per_row * scale).sum()
    if self.method == "nocot":
      correct = _answer_logits(logits, batch["col_answer"]).argmax(-1) == target
    else:
      correct = self._greedy_answer(model, batch["prompt"], batch["prompt_len"]) == target
    metrics["acc"] = (correct.astype(jnp.float32) * scale).sum()
    return loss, metrics

  def _greedy_answer(self, model, tokens_BT, start_B):
    """Greedy decoding of ``gen_steps`` tokens after the prompt (a full forward per token); the answer is
    the token after the first generated [A] (−1 when there is none)."""
    start_B = start_B.astype(jnp.int32)
    for g in range(self.gen_steps):
      pos_B1 = (start_B + g)[:, None]
      logits = model(tokens_BT).logits_BTV
      nxt = _take_rows(logits, pos_B1 - 1)[:, 0, :VOCAB_SIZE].argmax(-1).astype(jnp.int32)
      tokens_BT = write_rows(tokens_BT, nxt[:, None], pos_B1)
    gen_BG = _take_rows(tokens_BT, start_B[:, None] + jnp.arange(self.gen_steps, dtype=jnp.int32))
    is_a = gen_BG[:, :-1] == data_lib.ANSWER
    first = jnp.argmax(is_a, axis=1)
    answer = jnp.take_along_axis(gen_BG, (first + 1)[:, None], axis=1)[:, 0]
    return jnp.where(is_a.any(axis=1), answer, -1)


def select_checkpoint(workdir: str | pathlib.Path, metric: str = "eval/acc") -> dict:
  """The evaluated step with the best ``metric`` on the generated validation split (ties: the earliest)."""
  workdir = pathlib.Path(workdir)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  evals = [(r["step"], r[metric]) for r in rows if metric in r]
  if not evals:
    return {}
  best_step, best = max(evals, key=lambda sv: (sv[1], -sv[0]))
  ckpt = ckpt_lib.checkpoint_dir(workdir) / str(best_step)
  out = {"metric": metric, "split": "generated validation", "step": best_step, "value": best,
         "checkpoint": str(ckpt) if ckpt.exists() else None,
         "evaluations": [{"step": s, metric: v} for s, v in evals]}
  (workdir / "selection.json").write_text(json.dumps(out, indent=1))
  return out


def run(config: Any, workdir: str) -> loop.Result:
  cfg = config_lib.to_dict(config)
  config_lib.check_schema(cfg, extra_sections())
  config_lib.check_train(cfg)
  task = CotTask(cfg)
  result = loop.train(cfg, workdir, task)
  if jax.process_index() == 0 and (pathlib.Path(workdir) / "metrics.jsonl").exists():
    sel = select_checkpoint(workdir)
    if sel:
      print(f"method {task.method}: best eval/acc {sel['value']:.4f} at step {sel['step']} "
            f"(generated validation, {task.eval_set.n} problems); final: "
            + "  ".join(f"{k} {v:.4f}" for k, v in result.eval.items())
            + (f"; {result.tokens_per_s:,.0f} tokens/s" if math.isfinite(result.tokens_per_s) else ""))
  return result
