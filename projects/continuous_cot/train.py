"""Training on ProsQA-style graph reachability: Coconut (continuous thoughts, staged curriculum),
CoT, No-CoT.

The trainer of ``configs/continuous_cot/*.py`` (``config.trainer =
'projects.continuous_cot.train'``): ``make_spec`` / ``make_task`` give the shared loop its task
(superpose.train.task: :class:`CotSpec`, the model and losses, data-free given its sizes;
:class:`CotData`, the rows), so resume, checkpoints, metrics and the jitted step are the shared
loop's.

Methods (``config.cot.method``), all on the same model and rows of the same problems:

* ``coconut``: the curriculum of spec §2.2, as the RS code implements it. ``scheduled_stage`` =
  epoch // ``epochs_per_stage`` (or (step − 1) // ``steps_per_stage`` when that is > 0). Per row,
  s = min(scheduled_stage, D) (D = the row's hop count); with probability ``uniform_prob`` s is
  drawn instead from randint(0, min(scheduled_stage, D)) (inclusive). With k = s + 1:
    k ≤ D:   ``prompt + s × <|latent|> + label``, label a depth-k node on a shortest path
             (``labels='bfs'``: any node exactly k hops from the root, Coconut-BFS);
    k = D+1: ``prompt + D × <|latent|> + [A] + target``.
  The loss is the cross-entropy of that one label token (at the last latent, or at the root when s =
  0); ``loss='set'`` replaces it by −log Σ_{v ∈ pool} p(v) over the pool the label is drawn from
  (the EoS set-valued loss; every row still logs ``label_nll``, ``set_nll`` and ``set_mass``).
  Curriculum options (issue 20 §3): ``stage0_steps`` / ``stage0_epochs`` give stage 0 its own
  length; ``reset_optimizer`` re-initialises the optimizer state at each stage start
  (``optim.reset_steps``, filled in by ``make_task``); ``relabel`` sends the nodes of every training
  row (all methods) to distinct random ids among the 31 node tokens, drawn from the row's own seed.
* ``cot``: ``prompt + n1 … nD + [A] + target + <eos>`` with a random shortest path; loss on every
  token after the prompt (path, [A], answer, <eos>).
* ``nocot``: ``prompt + [A] + target + <eos>``; loss on the tokens after the prompt.

Edges and the candidate order are re-shuffled every time a row is built (spec §1.2). Batches are a
pure function of (seed, step): row g = (step − 1)·B + r is problem ``perm_e[g mod N]`` of the
epoch-e permutation (e = g // N), and its random choices come from ``random.Random`` seeded by
(seed, g).

Batching (``config.cot.batching``):

* ``bucketed`` (default): length-bucketed batches. The seeded row order above is cut into windows of
  ``bucket_window`` batches; each window's rows are sorted by prompt length (ties: row index), cut
  into batches, and the batches of a window run in an order drawn from (seed, window). So a step's
  rows are still a pure function of (seed, step), every row of the unbucketed order is used exactly
  once per window, and a batch holds prompts of nearly one length. The batch is right-padded to
  ``Wp + U + J + 1`` columns, ``Wp`` its longest prompt rounded up to ``bucket_multiple`` (one
  compile per width; ``Wp`` ≤ ``P``), and the loss reads logits only where a loss can be: the last
  prompt column, the U thought columns and the J = 1 (Coconut), max hops + 2 (CoT) or 2 (No-CoT)
  columns after the thoughts (:func:`thoughts.compact_forward`: the last layer runs only there;
  equal to the full forward).
* ``padded``: the previous path, kept as the reference and the benchmark's baseline: every row
  padded to ``T`` columns (prompt in ``P``), the full forward over all of them
  (:func:`thoughts.cached_forward` with per-row thought counts).

Every row's prompt fits in ``P`` columns (the longest prompt of the data, rounded up to 8); thoughts
start at the row's own prompt length (``latent_start``) and rows carry their own thought count, up
to ``U`` (static). The thought forward is KV-cached with per-row counts: the k-th single-position
step feeds the previous post-norm hidden state where k < the row's count. The rows themselves
(curriculum stage, label, CoT / No-CoT rows, relabelling, padding and targets) are built by
:mod:`rows`. Each step logs ``data/row_tokens`` (real tokens per row: prompt, thoughts and answer
tokens, no padding) and ``data/pad_fraction`` (padding columns / all columns of the batch);
``tokens_per_step`` (the loop's ``perf/tokens_per_s``) is the expected number of real tokens per
step (final-stage rows), not padded positions.

Evaluation (generated validation split only; never the released files): with (a) the gold hop count
of thoughts (as the paper) and (b) ``eval_fixed_thoughts`` thoughts for every problem (suffix
``_fixed``; does not leak the solution length), the metrics of :mod:`metrics`: ``acc`` (argmax over
the 40 real tokens after ``[A]`` == target), ``acc_two`` (the candidate with the larger logit),
``is_cand`` (the answer is a candidate), and the floors ``floor_first`` / ``floor_ancestors``. CoT
is decoded greedily (``max hops + 2`` tokens); its answer is the token after the first generated
``[A]`` and its two-candidate choice reads the logits there (the last decoded position when there is
no ``[A]``). ``hop{k}`` / ``hop{k}_mass`` (k = 1 .. the fewest hops of the validation set, ≤ 4;
Coconut with gold thoughts, CoT teacher-forced): is the argmax after the root (k = 1) or after
thought / path node k − 1 a depth-k node on a shortest path, and the probability mass on those
nodes. ``run`` writes ``selection.json``: the evaluated step with the best ``eval/acc`` (the
checkpoint to use), chosen on the generated validation split, and prints the final metrics with 95 %
Wilson intervals and the measured real tokens/s.
"""

from __future__ import annotations

import dataclasses
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
from superpose.train.task import Field, Task, rows_fields

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import metrics as metrics_lib
from projects.continuous_cot import rows as rows_lib
from projects.continuous_cot import thoughts as thoughts_lib
from projects.continuous_cot.graphs import Problem

log = logging.getLogger(__name__)

METHODS = ("coconut", "cot", "nocot")
BATCHINGS = ("bucketed", "padded")
LABELS = ("path", "bfs")
LOSSES = ("label", "set")
VOCAB_SIZE = data_lib.VOCAB.vocab_size  # 40 real tokens; argmax is taken over these only


COT: config_lib.Declaration = {
  "method": ("coconut", "coconut | cot | nocot"),
  "data_dir": ("", "output of `python -m projects.continuous_cot.data generate --out DIR`"),
  "train_file": ("train.json", "training problems in data_dir"),
  "valid_file": ("valid.json", "validation problems in data_dir"),
  "train_limit": (0, "use only the first N training problems (0 = all)"),
  "eval_limit": (0, "evaluate on the first N validation problems (0 = all)"),
  "layout": ("code", "prompt layout of data.prompt_tokens"),
  "epochs_per_stage": (25, "Coconut stage length in epochs (spec §2.2; RS: 25)"),
  "steps_per_stage": (0, "> 0: stages by steps instead of epochs"),
  "stage0_steps": (
    0,
    "> 0 (with steps_per_stage): stage 0 lasts this many steps, the others steps_per_stage",
  ),
  "stage0_epochs": (
    0,
    "> 0 (stages by epochs): stage 0 lasts this many epochs, the others epochs_per_stage",
  ),
  "reset_optimizer": (
    False,
    "coconut: re-initialise the optimizer state when a stage begins (EoS recipe)",
  ),
  "relabel": (
    False,
    "relabel the nodes of every training row with a random injection into the node ids",
  ),
  "loss": ("label", "label (CE of the drawn label, RS) | set (−log Σ_{v ∈ label pool} p(v), EoS)"),
  "uniform_prob": (0.1, "probability of a row drawing an earlier stage (spec §2.2)"),
  "labels": ("path", "path (RS) | bfs (Coconut-BFS, RS §5.4)"),
  "max_thoughts": (0, "U, thought slots in training rows (0 = the largest hop count in train)"),
  "eval_fixed_thoughts": (4, "the fixed thought count of eval/acc_fixed"),
  "prompt_len": (0, "P, columns for the prompt (0 = longest prompt of the data, rounded to 8)"),
  "batching": (
    "bucketed",
    "bucketed (length-bucketed batches, compact forward) | padded (every row at T)",
  ),
  "bucket_window": (32, "bucketed: batches per window of the seeded order sorted by prompt length"),
  "bucket_multiple": (8, "bucketed: prompt widths rounded up to this (one compile per width)"),
}
CONFIG_SECTIONS = {"cot": COT}


def cot_section(**overrides) -> ml_collections.ConfigDict:
  return config_lib.section(COT, **overrides)


def _round_up(n: int, m: int = 8) -> int:
  return -(-n // m) * m


# --- losses ---------------------------------------------------------------------------------------


def set_nll(logits_BNV, mask_BV, weights_BN):
  """(mean −log Σ_{v ∈ set} p(v) over the weighted columns, mean Σ_{v ∈ set} p(v)); p over all
  logits."""
  logp = jax.nn.log_softmax(logits_BNV.astype(jnp.float32), axis=-1)[..., :VOCAB_SIZE]
  lp = jax.nn.logsumexp(jnp.where(mask_BV[:, None, :] > 0, logp, -jnp.inf), axis=-1)
  lp = jnp.where(weights_BN > 0, lp, 0.0)
  denom = jnp.maximum(weights_BN.sum(), 1.0)
  return -(lp * weights_BN).sum() / denom, (jnp.exp(lp) * weights_BN).sum() / denom


def _answer_logits(logits_BTV, col_B):
  return thoughts_lib.take_rows(logits_BTV, col_B[:, None])[:, 0, :VOCAB_SIZE].astype(jnp.float32)


# --- data -----------------------------------------------------------------------------------------


def load_split(config: Mapping, key: str) -> list[Problem]:
  c = config["cot"]
  if not c["data_dir"]:
    raise config_lib.ConfigError(
      "config.cot.data_dir is empty: generate data with `python -m "
      "projects.continuous_cot.data generate --out DIR` and pass --config.cot.data_dir=DIR"
    )
  path = pathlib.Path(c["data_dir"]) / c[key]
  if not path.exists():
    raise config_lib.ConfigError(
      f"config.cot.data_dir: {path} not found; generate it with `python -m "
      f"projects.continuous_cot.data generate --out {c['data_dir']}`"
    )
  problems = data_lib.load(path, check=False)
  limit = c["train_limit" if key == "train_file" else "eval_limit"]
  return problems[:limit] if limit else problems


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 7]).permutation(n)


# ProsQA shapes without reading the data (launch.plan): the longest prompt of the generated 15k/500
# split is 186 tokens (P = 192 rounded to 8) and hops are 3–4, so Coconut rows are 200 columns
# (`python -m projects.continuous_cot.data generate`; override with config.cot.prompt_len /
# max_thoughts).
DEFAULT_PROMPT_LEN, DEFAULT_MAX_HOPS = 192, 4


@dataclasses.dataclass(frozen=True)
class CotDims:
  """The static sizes of rows: prompt columns P, thought slots U (training) and U_eval, CoT decoding
  steps, the hop-k accuracies evaluated, and the expected real tokens per training row (for
  tokens/s)."""

  P: int
  U: int
  U_eval: int
  gen_steps: int
  eval_hops: int
  row_tokens: float


def default_dims(config: Mapping) -> CotDims:
  """Dims from the config alone: its prompt_len / max_thoughts, where 0 the generated ProsQA split's
  sizes above — the prompt cut to what ``model.max_seq_len`` holds (rows are never wider than the
  model)."""
  c = config["cot"]
  U = c["max_thoughts"] or DEFAULT_MAX_HOPS
  extra = {"coconut": max(U, c["eval_fixed_thoughts"]) + 2, "cot": U + 3}.get(c["method"], 3)
  P = c["prompt_len"] or max(
    8, min(DEFAULT_PROMPT_LEN, (config["model"]["max_seq_len"] - extra) // 8 * 8)
  )
  after = {"coconut": 2, "cot": 3, "nocot": 3}.get(c["method"], 3)
  return CotDims(
    P=P,
    U=U,
    U_eval=max(U, c["eval_fixed_thoughts"]),
    gen_steps=U + 2,
    eval_hops=min(4, U),
    row_tokens=float(P + (U if c["method"] != "nocot" else 0) + after),
  )


def measured_dims(config: Mapping, train: Sequence[Problem], valid: Sequence[Problem]) -> CotDims:
  """Dims of these problems (the config's prompt_len / max_thoughts when set, checked against
  them)."""
  c = config["cot"]
  every = list(train) + list(valid)
  longest = max(3 * len(p.edges) + 6 for p in every)  # 'theory' layout has one more token
  P = c["prompt_len"] or _round_up(longest)
  if P < longest:
    raise config_lib.ConfigError(
      f"config.cot.prompt_len={P} < the longest prompt ({longest} tokens)"
    )
  train_hops = max(p.hops for p in train)
  U = c["max_thoughts"] or train_hops
  if U < train_hops:
    raise config_lib.ConfigError(
      f"config.cot.max_thoughts={U} < the largest training hop count {train_hops}"
    )
  prompt_lens = np.array(
    [len(data_lib.prompt_tokens(p, layout=c["layout"])) for p in train], np.int64
  )
  after = {"coconut": 2, "cot": 3, "nocot": 3}[c["method"]]
  hops = np.array([p.hops for p in train]) if c["method"] != "nocot" else 0
  return CotDims(
    P=P,
    U=U,
    U_eval=max(U, c["eval_fixed_thoughts"], max(p.hops for p in valid)),
    gen_steps=max(p.hops for p in every) + 2,  # CoT decoding: D nodes, [A], answer
    eval_hops=min(4, min(p.hops for p in valid)),
    row_tokens=float(np.mean(prompt_lens + hops + after)),
  )


class CotSpec:
  """Model, losses and batch of the three methods (data-free given its :class:`CotDims`; see
  superpose.train.task and the module docstring)."""

  def __init__(self, config: Mapping, dims: CotDims | None = None):
    # Keys added since a run was made (e.g. an older run's config.json read by evaluate.py) take
    # their defaults.
    config = {**config, "cot": {**cot_section().to_dict(), **config["cot"]}}
    self.config = config
    c, t = config["cot"], config["train"]
    self.method, self.labels, self.seed = c["method"], c["labels"], config["seed"]
    if self.method not in METHODS:
      raise config_lib.ConfigError(
        f"config.cot.method={self.method!r}: must be one of {', '.join(METHODS)}"
      )
    if self.labels not in LABELS:
      raise config_lib.ConfigError(
        f"config.cot.labels={self.labels!r}: must be one of {', '.join(LABELS)}"
      )
    self.loss_kind, self.relabel = c["loss"], bool(c["relabel"])
    if self.loss_kind not in LOSSES:
      raise config_lib.ConfigError(
        f"config.cot.loss={self.loss_kind!r}: must be one of {', '.join(LOSSES)}"
      )
    if self.loss_kind == "set" and self.method != "coconut":
      raise config_lib.ConfigError(
        "config.cot.loss='set' needs method 'coconut' (one label pool per row)"
      )
    for key in ("stage0_steps", "stage0_epochs"):
      if c[key] < 0:
        raise config_lib.ConfigError(f"config.cot.{key}={c[key]}: must be >= 0")
    if c["stage0_steps"] and c["steps_per_stage"] <= 0:
      raise config_lib.ConfigError(
        "config.cot.stage0_steps needs stages by steps (config.cot.steps_per_stage > 0)"
      )
    if c["layout"] not in data_lib.LAYOUTS:
      raise config_lib.ConfigError(
        f"config.cot.layout={c['layout']!r}: must be one of {', '.join(data_lib.LAYOUTS)}"
      )
    try:
      self.model_cfg = nn_config.from_dict(config["model"])
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(" ".join(str(e).split())) from None
    if self.model_cfg.vocab_size < VOCAB_SIZE:
      raise config_lib.ConfigError(
        f"config.model.vocab_size={self.model_cfg.vocab_size} < {VOCAB_SIZE}"
      )
    self.batching = c["batching"]
    if self.batching not in BATCHINGS:
      raise config_lib.ConfigError(
        f"config.cot.batching={self.batching!r}: must be one of {', '.join(BATCHINGS)}"
      )
    if self.batching == "bucketed" and (self.model_cfg.scan_layers or not self.model_cfg.causal):
      raise config_lib.ConfigError(
        "config.cot.batching='bucketed' (the compact forward) needs model.scan_layers "
        "False and a causal model; use batching='padded'"
      )
    if c["bucket_window"] < 1 or c["bucket_multiple"] < 1:
      raise config_lib.ConfigError("config.cot.bucket_window and bucket_multiple must be >= 1")

    self.dims = dims = dims or default_dims(config)
    self.batch_size = t["batch_size"]
    self.P, self.U, self.U_eval, self.gen_steps = dims.P, dims.U, dims.U_eval, dims.gen_steps
    self.eval_hops, self.row_tokens, self.fixed = (
      dims.eval_hops,
      dims.row_tokens,
      c["eval_fixed_thoughts"],
    )
    if self.method == "coconut":
      self.T, self.T_eval = _round_up(self.P + self.U + 2), _round_up(self.P + self.U_eval + 2)
    elif self.method == "cot":
      self.T = self.T_eval = _round_up(self.P + self.gen_steps + 1)
    else:
      self.T = self.T_eval = _round_up(self.P + 3)
    if max(self.T, self.T_eval) > self.model_cfg.max_seq_len:
      raise config_lib.ConfigError(
        f"config.model.max_seq_len={self.model_cfg.max_seq_len} < the "
        f"{max(self.T, self.T_eval)} columns these rows need"
      )
    # The compact forward's static bounds: thought steps, and columns after the thoughts that carry
    # a loss.
    self.U_fwd = self.U if self.method == "coconut" else 0
    self.J = {"coconut": 1, "cot": self.gen_steps, "nocot": 2}[self.method]
    self.tokens_per_step = int(round(self.batch_size * self.row_tokens))
    self.flops_per_step = (
      flops.train_flops_per_token(self.model_cfg, round(self.row_tokens)) * self.tokens_per_step
    )

  def tokenizer(self):
    return data_lib.VOCAB

  def batch_spec(self) -> dict[str, Field]:
    """The widest batch (``T`` columns; a bucketed batch is narrower)."""
    B = self.batch_size
    out = {**rows_fields(B, self.T), "length": Field((B,), "int32")}
    if self.method == "coconut" or self.batching == "bucketed":
      out.update(latent_start=Field((B,), "int32"), num_thoughts=Field((B,), "int32"))
    if self.method == "coconut":
      out["label_set"] = Field((B, VOCAB_SIZE), "float32")
    return out

  # model and loss ---------------------------------------------------------------------------------
  def make_model(self) -> nnx.Module:
    return nn.Transformer(self.model_cfg, rngs=nnx.Rngs(self.seed))

  def _logits(self, model, tokens, batch, count_key: str, max_thoughts: int):
    if self.method != "coconut":
      return model(tokens).logits_BTV
    rest = tokens.shape[1] - self.P - max_thoughts  # from latent_start + U: no window is clamped
    return thoughts_lib.cached_forward(
      model,
      tokens,
      batch["latent_start"],
      num_thoughts=max_thoughts,
      num_thoughts_B=batch[count_key],
      prefix_len=self.P,
      rest_len=rest,
    ).logits_BTV

  def train_loss(self, model, batch):
    if self.batching == "bucketed":
      U, J = self.U_fwd, self.J
      prefix = batch["tokens"].shape[1] - U - J - 1
      logits = thoughts_lib.compact_forward(
        model,
        batch["tokens"],
        batch["latent_start"],
        batch["num_thoughts"],
        max_thoughts=U,
        prefix_len=prefix,
        rest_len=J,
      )
      cols, valid = thoughts_lib.compact_columns(
        batch["latent_start"], batch["num_thoughts"], max_thoughts=U, rest_len=J
      )
      targets = jnp.take_along_axis(batch["targets"], cols, axis=1)
      weights = jnp.take_along_axis(batch["weights"], cols, axis=1) * valid
    else:
      logits = self._logits(model, batch["tokens"], batch, "num_thoughts", self.U)
      targets, weights = batch["targets"], batch["weights"]
    loss, metrics = lm_loss(logits, targets, weights)
    if (
      self.method == "coconut"
    ):  # the drawn label's NLL (`loss`) and the label pool's (−log of its mass)
      nll, mass = set_nll(logits, batch["label_set"], weights)
      metrics.update({"label_nll": loss, "set_nll": nll, "set_mass": mass})
      if self.loss_kind == "set":
        loss = nll
    length = batch["length"].astype(jnp.float32)
    metrics["data/row_tokens"] = length.mean()
    metrics["data/pad_fraction"] = 1.0 - length.sum() / (length.shape[0] * batch["tokens"].shape[1])
    return loss, metrics

  def _coconut_eval_logits(self, model, batch, name: str):
    """Logits (B, 1 + U_eval + 1, 40 real tokens) at the compact columns of the row with its
    ``name`` (gold | fixed) number of thoughts: index 0 the root (hop 1), index k the k-th thought
    (hop k + 1), the last one [A]."""
    if self.batching == "bucketed":
      logits = thoughts_lib.compact_forward(
        model,
        batch[f"tokens_{name}"],
        batch["latent_start"],
        batch[f"num_{name}"],
        max_thoughts=self.U_eval,
        prefix_len=self.P,
        rest_len=1,
      )
    else:
      full = self._logits(model, batch[f"tokens_{name}"], batch, f"num_{name}", self.U_eval)
      cols, _ = thoughts_lib.compact_columns(
        batch["latent_start"], batch[f"num_{name}"], max_thoughts=self.U_eval, rest_len=1
      )
      logits = jnp.take_along_axis(full, cols[..., None], axis=1)
    return logits[..., :VOCAB_SIZE].astype(jnp.float32)

  def eval_loss(self, model, batch):
    scale, target, cands = batch["scale"], batch["target"], batch["cands"]
    metrics = {f: (batch[f] * scale).sum() for f in metrics_lib.FLOORS}

    def add(per_row: dict, suffix: str = ""):
      metrics.update({k + suffix: (v * scale).sum() for k, v in per_row.items()})

    if self.method == "coconut":
      for name, suffix in (("gold", ""), ("fixed", "_fixed")):
        logits = self._coconut_eval_logits(model, batch, name)
        answer = logits[:, -1]
        add(metrics_lib.answer_metrics(answer, target, cands), suffix)
        if name == "gold":
          loss = (optax.softmax_cross_entropy_with_integer_labels(answer, target) * scale).sum()
          add(metrics_lib.hop_metrics(logits[:, : self.eval_hops], batch["hop_sets"]))
      return loss, metrics
    logits = model(batch["tokens"]).logits_BTV
    ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["targets"]
    )
    per_row = (ce * batch["weights"]).sum(-1) / jnp.maximum(batch["weights"].sum(-1), 1.0)
    loss = (per_row * scale).sum()
    if self.method == "nocot":
      add(metrics_lib.answer_metrics(_answer_logits(logits, batch["col_answer"]), target, cands))
    else:
      answer, answer_logits = self._greedy_answer(model, batch["prompt"], batch["prompt_len"])
      add(metrics_lib.answer_metrics(answer_logits, target, cands, answer_B=answer))
      # hop k: the teacher-forced logits after the root and the first k − 1 nodes of a shortest path
      cols = (
        batch["prompt_len"].astype(jnp.int32)[:, None]
        - 1
        + jnp.arange(self.eval_hops, dtype=jnp.int32)
      )
      add(metrics_lib.hop_metrics(thoughts_lib.take_rows(logits, cols), batch["hop_sets"]))
    return loss, metrics

  def _greedy_answer(self, model, tokens_BT, start_B):
    """Greedy decoding of ``gen_steps`` tokens after the prompt (a full forward per token). Returns
    (the token after the first generated [A], −1 when there is none; the logits that chose it, or
    those of the last decoded position when there is no [A])."""
    start_B = start_B.astype(jnp.int32)
    step_logits = []
    for g in range(self.gen_steps):
      pos_B1 = (start_B + g)[:, None]
      logits = model(tokens_BT).logits_BTV
      step = thoughts_lib.take_rows(logits, pos_B1 - 1)[:, 0, :VOCAB_SIZE].astype(jnp.float32)
      step_logits.append(step)
      tokens_BT = write_rows(tokens_BT, step.argmax(-1).astype(jnp.int32)[:, None], pos_B1)
    gen_BN = thoughts_lib.take_rows(
      tokens_BT, start_B[:, None] + jnp.arange(self.gen_steps, dtype=jnp.int32)
    )
    is_a = gen_BN[:, :-1] == data_lib.ANSWER
    has_a = is_a.any(axis=1)
    at_B = jnp.where(has_a, jnp.argmax(is_a, axis=1) + 1, self.gen_steps - 1)
    answer = jnp.take_along_axis(gen_BN, at_B[:, None], axis=1)[:, 0]
    logits_BV = jnp.take_along_axis(jnp.stack(step_logits, axis=1), at_B[:, None, None], axis=1)[
      :, 0
    ]
    return jnp.where(has_a, answer, -1), logits_BV


class CotData:
  """The seeded, curriculum-staged training rows and the validation rows of one :class:`CotSpec`."""

  def __init__(self, spec: CotSpec, train: list[Problem], valid: list[Problem]):
    if not train or not valid:
      raise config_lib.ConfigError(
        f"config.cot: {len(train)} training / {len(valid)} validation problems"
      )
    c = spec.config["cot"]
    self.spec, self.config, self.train, self.valid = spec, spec.config, train, valid
    self.method, self.labels, self.seed, self.relabel = (
      spec.method,
      spec.labels,
      spec.seed,
      spec.relabel,
    )
    self.batch_size, self.batching, self.T, self.T_eval = (
      spec.batch_size,
      spec.batching,
      spec.T,
      spec.T_eval,
    )
    self.fixed, self.eval_hops = spec.fixed, spec.eval_hops
    self.window, self.multiple = c["bucket_window"], c["bucket_multiple"]
    self.prompt_lens = np.array(
      [len(data_lib.prompt_tokens(p, layout=c["layout"])) for p in self.train], np.int64
    )
    self._windows: dict[int, np.ndarray] = {}
    self.eval_set = loop.RowsEvalSet(
      [self.eval_row(i) for i in range(len(self.valid))], self.batch_size
    )
    log.info(
      "cot task: method %s, %s batches, %d train / %d valid problems, P=%d U=%d T=%d (eval U=%d "
      "T=%d), "
      "%.1f real tokens per row",
      self.method,
      self.batching,
      len(self.train),
      len(self.valid),
      spec.P,
      spec.U,
      self.T,
      spec.U_eval,
      self.T_eval,
      spec.row_tokens,
    )

  # schedule ---------------------------------------------------------------------------------------
  def scheduled_stage(self, step: int) -> int:
    return rows_lib.scheduled_stage(self.config["cot"], step, self.batch_size, len(self.train))

  def stage_starts(self, total_steps: int) -> list[int]:
    """The first step of each Coconut stage 1 .. (the largest hop count) within ``total_steps``."""
    return rows_lib.stage_starts(
      self.config["cot"],
      total_steps,
      max(p.hops for p in self.train),
      self.batch_size,
      len(self.train),
    )

  def _prompt(self, problem: Problem, rng: random.Random) -> list[int]:
    return data_lib.prompt_tokens(problem, layout=self.config["cot"]["layout"], rng=rng)

  # the row order ----------------------------------------------------------------------------------
  def problem_index(self, rows: np.ndarray) -> np.ndarray:
    """The training problem of each global row index g: ``perm_e[g mod N]`` with e = g // N."""
    n, rows = len(self.train), np.asarray(rows, np.int64)
    out = np.empty_like(rows)
    for epoch in np.unique(rows // n):
      at = rows // n == epoch
      out[at] = _permutation(self.seed, int(epoch), n)[rows[at] % n]
    return out

  def _window(self, w: int) -> np.ndarray:
    """(bucket_window, B) global rows of window w: its rows sorted by prompt length (ties: row
    index), cut into batches, the batches in an order drawn from (seed, w)."""
    if w not in self._windows:
      per = self.window * self.batch_size
      rows = np.arange(w * per, (w + 1) * per, dtype=np.int64)
      order = np.lexsort((rows, self.prompt_lens[self.problem_index(rows)]))
      batches = rows[order].reshape(self.window, self.batch_size)
      self._windows = {
        w: batches[np.random.default_rng([self.seed, w, 11]).permutation(self.window)]
      }
    return self._windows[w]

  def step_rows(self, step: int) -> np.ndarray:
    """The B global row indices of step ``step`` (1-based), in batch order: a pure function of
    (seed, step)."""
    if self.batching == "padded":
      return np.arange((step - 1) * self.batch_size, step * self.batch_size, dtype=np.int64)
    w, j = divmod(step - 1, self.window)
    return self._window(w)[j]

  def width(self, rows: np.ndarray) -> int:
    """Columns of a batch of these global rows: T (padded), or Wp + U + J + 1 with Wp the longest
    prompt rounded up to ``bucket_multiple`` (at most P)."""
    if self.batching == "padded":
      return self.T
    longest = int(self.prompt_lens[self.problem_index(rows)].max())
    return min(_round_up(longest, self.multiple), self.spec.P) + self.spec.U_fwd + self.spec.J + 1

  # rows -------------------------------------------------------------------------------------------
  def row_tokens_of(
    self, step: int, g: int
  ) -> tuple[list[int], int, int, int, int, np.ndarray | None]:
    """(tokens, first and last supervised column, latent_start, thought count, the label pool as a
    40-token mask (coconut; None otherwise)) of global row g at step ``step``: a pure function of
    (seed, step, g)."""
    n = len(self.train)
    problem = self.train[int(_permutation(self.seed, g // n, n)[g % n])]
    rng = random.Random(self.seed * (1 << 40) + g)
    if self.relabel:
      problem = rows_lib.relabel_row(problem, rng)
    prompt = self._prompt(problem, rng)
    if self.method == "coconut":
      s = rows_lib.coconut_stage(
        problem, self.scheduled_stage(step), rng, self.config["cot"]["uniform_prob"]
      )
      tokens, count, col = rows_lib.coconut_row(problem, s, prompt, rng, self.labels)
      return (
        tokens,
        col,
        col,
        len(prompt),
        count,
        rows_lib.set_mask(rows_lib.label_pool(problem, s, self.labels)),
      )
    tokens, first = rows_lib.language_row(problem, prompt, rng, self.method)
    return tokens, first, len(tokens) - 2, len(prompt), 0, None

  def train_row(self, step: int, g: int, width: int | None = None) -> dict[str, np.ndarray]:
    """Row g (global index) of step ``step``, padded to ``width`` columns (default T)."""
    tokens, first, last, start, count, pool = self.row_tokens_of(step, g)
    row = rows_lib.pad_row(tokens, width or self.T)
    targets, weights = rows_lib.shifted(row, first, last)
    out = {"tokens": row, "targets": targets, "weights": weights, "length": np.int32(len(tokens))}
    if pool is not None:
      out["label_set"] = pool
    if (
      self.batching == "bucketed"
    ):  # the compact forward reads only these columns: every loss must be there
      covered = {
        start - 1,
        *range(start, start + count),
        *range(start + count, start + count + self.spec.J),
      }
      if not set(range(first, last + 1)) <= covered:
        raise AssertionError(
          f"row {g}: supervised columns {first}..{last} outside the compact columns"
        )
    if self.method == "coconut" or self.batching == "bucketed":
      out["latent_start"], out["num_thoughts"] = np.int32(start), np.int32(count)
    return out

  def train_batch(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    rows = self.step_rows(step)
    width = self.width(rows)
    mine = [
      self.train_row(step, int(g), width)
      for g in rows[process_index * local : (process_index + 1) * local]
    ]
    return {k: np.stack([r[k] for r in mine]) for k in mine[0]}

  def eval_row(self, i: int) -> dict[str, np.ndarray]:
    problem = self.valid[i]
    rng = random.Random(10_007 * self.seed + i + 1)  # a fixed edge/candidate order per problem
    prompt = self._prompt(problem, rng)
    c1, c2 = metrics_lib.candidates(prompt)
    out = {
      "target": np.int32(problem.target),
      "cands": np.array([c1, c2], np.int32),
      **{k: np.float32(v) for k, v in metrics_lib.floors(problem, c1, c2).items()},
    }
    if self.method != "nocot":
      layers = problem.neighbor_k()
      out["hop_sets"] = np.stack(
        [rows_lib.set_mask(layers[k]) for k in range(1, self.eval_hops + 1)]
      )
    if self.method == "coconut":
      for name, count in (("gold", problem.hops), ("fixed", self.fixed)):
        tokens = prompt + [data_lib.LATENT] * count + [data_lib.ANSWER, problem.target]
        out[f"tokens_{name}"] = rows_lib.pad_row(tokens, self.T_eval)
        out[f"num_{name}"] = np.int32(count)
        out[f"col_{name}"] = np.int32(len(tokens) - 2)
      out["latent_start"] = np.int32(len(prompt))
      return out
    tokens, first = rows_lib.language_row(problem, prompt, random.Random(i), self.method)
    row = rows_lib.pad_row(tokens, self.T_eval)
    out["tokens"] = row
    out["targets"], out["weights"] = rows_lib.shifted(row, first, len(tokens) - 2)
    out["prompt"] = rows_lib.pad_row(prompt, self.T_eval)
    out["prompt_len"] = np.int32(len(prompt))
    out["col_answer"] = np.int32(len(tokens) - 3)  # the [A] column (teacher forced)
    return out


def make_spec(config: Mapping) -> CotSpec:
  """The spec with the documented ProsQA shapes (:func:`default_dims`); no file is read."""
  return CotSpec(config)


def make_task(
  config: Mapping, train: list[Problem] | None = None, valid: list[Problem] | None = None
) -> Task:
  """Spec and data of ``config`` (problems from ``config.cot.data_dir`` unless given). Coconut with
  ``reset_optimizer``: the stage starts become ``optim.reset_steps`` of the recorded config."""
  spec = CotSpec(config)  # the config's own checks before any file is read
  train = train if train is not None else load_split(config, "train_file")
  valid = valid if valid is not None else load_split(config, "valid_file")
  if not train or not valid:
    raise config_lib.ConfigError(
      f"config.cot: {len(train)} training / {len(valid)} validation problems"
    )
  spec = CotSpec(config, measured_dims(spec.config, train, valid))
  data = CotData(spec, train, valid)
  cfg = spec.config
  if spec.method == "coconut" and cfg["cot"]["reset_optimizer"]:
    starts = data.stage_starts(cfg["train"]["steps"])
    spec.config = {
      **cfg,
      "optim": {
        **cfg["optim"],
        "reset_steps": sorted(set(cfg["optim"].get("reset_steps") or ()) | set(starts)),
      },
    }
  return Task(spec, data)


def select_checkpoint(workdir: str | pathlib.Path, metric: str = "eval/acc") -> dict:
  """The evaluated step with the best ``metric`` on the generated validation split (ties: the
  earliest)."""
  workdir = pathlib.Path(workdir)
  rows = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
    if line.strip()
  ]
  evals = [(r["step"], r[metric]) for r in rows if metric in r]
  if not evals:
    return {}
  best_step, best = max(evals, key=lambda sv: (sv[1], -sv[0]))
  ckpt = ckpt_lib.checkpoint_dir(workdir) / str(best_step)
  out = {
    "metric": metric,
    "split": "generated validation",
    "step": best_step,
    "value": best,
    "checkpoint": str(ckpt) if ckpt.exists() else None,
    "evaluations": [{"step": s, metric: v} for s, v in evals],
  }
  (workdir / "selection.json").write_text(json.dumps(out, indent=1))
  return out


def throughput(workdir: str | pathlib.Path, batch_size: int) -> dict:
  """Measured real tokens/s of a run from its metrics.jsonl: the median over timed steps of
  ``data/row_tokens`` × batch / ``perf/step_time_s``, and the mean padding fraction of all logged
  steps."""
  rows = [
    json.loads(line)
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    if line.strip()
  ]
  timed = [
    r["data/row_tokens"] * batch_size / r["perf/step_time_s"]
    for r in rows
    if "perf/step_time_s" in r and "data/row_tokens" in r
  ]
  pads = [r["data/pad_fraction"] for r in rows if "data/pad_fraction" in r]
  return {
    "real_tokens_per_s": float(np.median(timed)) if timed else float("nan"),
    "timed_steps": len(timed),
    "pad_fraction": float(np.mean(pads)) if pads else float("nan"),
  }


def eval_table(task: Task, values: Mapping[str, float], name: str) -> str:
  """The final evaluation as a Markdown table (95 % Wilson intervals) on the task's validation
  rows."""
  counts = metrics_lib.counts_from_means(
    {
      k[len("eval/") :]: v
      for k, v in values.items()
      if k.startswith("eval/") and k not in ("eval/loss", "eval/perplexity")
    },
    task.data.eval_set.n,
  )
  labels = {
    "": "gold hop count" if task.spec.method == "coconut" else "answer",
    "_fixed": "fixed thought count",
  }
  return metrics_lib.table(
    {f"{name} ({labels[v]})": row for v, row in metrics_lib.by_variant(counts).items()}
  )


def run(config: Any, workdir: str) -> loop.Result:
  cfg = config_lib.to_dict(config)
  task = make_task(cfg)
  spec = task.spec
  result = loop.train(spec.config, workdir, task)
  if jax.process_index() == 0 and (pathlib.Path(workdir) / "metrics.jsonl").exists():
    sel = select_checkpoint(workdir)
    if sel:
      speed = throughput(workdir, spec.batch_size)
      print(
        f"method {spec.method}: best eval/acc {sel['value']:.4f} at step {sel['step']} "
        f"(generated validation, {task.data.eval_set.n} problems); {spec.batching} batches, "
        "padding "
        f"{speed['pad_fraction']:.1%}"
        + (
          f", {speed['real_tokens_per_s']:,.0f} real tokens/s (median of {speed['timed_steps']} "
          "timed steps)"
          if math.isfinite(speed["real_tokens_per_s"])
          else ""
        )
      )
      if result.eval:
        print(
          f"final evaluation, step {result.step}:\n" + eval_table(task, result.eval, spec.method)
        )
  return result
