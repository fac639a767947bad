"""Training from scratch on one task per sequence (spec §2): the trainer of
``configs/icl_superposition/*.py``.

``config.trainer = 'projects.icl_superposition.train'``; ``make_spec`` / ``make_task`` give the
shared loop its task (superpose.train.task), so resume, checkpoints, metrics and the jitted step are
the shared loop's.

A training row is ``<bos>`` followed by ``n_examples`` lines of ONE task of ``config.icl.family``
(``retrieval``: ``x1..x8>x_k\\n``; ``mod_add``: ``x>(x+k) mod 10\\n``), the task drawn per row from
the family with ``config.icl.task_weights`` (``uniform``, or ``skewed``: probability ``skew`` on the
first half of the tasks, spec's 9010 variant). The loss is the next-token cross-entropy on the
answer characters and their ``"\\n"`` only (spec §2.2). Rows are a pure function of (seed, global
row index), so a resumed run sees the same data.

Evaluation (``eval_prompts`` fixed single-task rows, tasks in turn): ``eval/loss`` on the answer
tokens, ``eval/acc`` = argmax accuracy of every in-context answer character and ``eval/acc_late`` of
the answer characters of the last quarter of the lines (after the task is evident from the context).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from superpose import nn
from superpose.train import config as config_lib, flops, loop
from superpose.train.task import Field, Task, rows_fields
from superpose.train.lm import model_config
from superpose.train.losses import lm_loss

from projects.icl_superposition import chars, tasks as tasks_lib

log = logging.getLogger(__name__)

TRAINABLE = ("retrieval", "mod_add")  # families with fixed-length lines (one token per character)
WEIGHTS = ("uniform", "skewed")


ICL: config_lib.Declaration = {
  "family": ("retrieval", "task family: " + " | ".join(TRAINABLE)),
  "n_examples": (100, "in-context lines per training row (spec: 100)"),
  "task_weights": ("uniform", "task draw per row: " + " | ".join(WEIGHTS)),
  "skew": (0.9, "skewed: probability of the first half of the family's tasks"),
  "eval_prompts": (64, "single-task rows evaluated every eval_every steps"),
  "test_pair": (
    "retrieve2,retrieve6",
    "task 0, task 1 of the mixed-prompt evaluation (spec §2.4), or 'random'",
  ),
}
CONFIG_SECTIONS = {"icl": ICL}


def icl_section(**overrides) -> ml_collections.ConfigDict:
  return config_lib.section(ICL, **overrides)


def line_length(family: str) -> int:
  """Characters per line of a fixed-length family (input, separator, answer, newline)."""
  fam = tasks_lib.FAMILIES[family]
  x, y = fam.tasks[0].example(np.random.default_rng(0))
  return len(x) + len(fam.tasks[0].sep) + len(y) + 1


def row_length(family: str, n_examples: int) -> int:
  return 1 + n_examples * line_length(family)


def task_weights(config: Mapping) -> list[float] | None:
  c = config["icl"]
  if c["task_weights"] == "uniform":
    return None
  return tasks_lib.skewed_weights(c["family"], c["skew"])


def example_row(task: tasks_lib.Task, n_examples: int, rng: np.random.Generator, width: int):
  """(tokens, targets, weights) of one single-task row padded to ``width``: targets[t] =
  tokens[t+1], weights 1 where that next token is an answer character or its newline."""
  lines = [(x, task.sep, y) for x, y in (task.example(rng) for _ in range(n_examples))]
  ids, mask = chars.encode_lines(lines, bos=True)
  tokens = np.full(width, chars.VOCAB.pad_id, np.int32)
  targets = np.zeros(width, np.int32)
  weights = np.zeros(width, np.float32)
  tokens[: len(ids)] = ids
  targets[: len(ids) - 1] = ids[1:]
  weights[: len(ids) - 1] = mask[1:]
  return tokens, targets, weights


class IclSpec:
  """The model, losses and batch of one-task-per-row training (data-free; see
  superpose.train.task)."""

  def __init__(self, config: Mapping):
    self.config = config
    c, t = config["icl"], config["train"]
    if c["family"] not in TRAINABLE:
      raise config_lib.ConfigError(
        f"config.icl.family={c['family']!r}: must be one of {', '.join(TRAINABLE)}"
      )
    if c["task_weights"] not in WEIGHTS:
      raise config_lib.ConfigError(
        f"config.icl.task_weights={c['task_weights']!r}: must be one of {', '.join(WEIGHTS)}"
      )
    if not 0.0 <= c["skew"] <= 1.0:
      raise config_lib.ConfigError(f"config.icl.skew={c['skew']}: must lie in [0, 1]")
    if c["n_examples"] < 1:
      raise config_lib.ConfigError(f"config.icl.n_examples={c['n_examples']}: must be ≥ 1")
    self.model_cfg = model_config(config)
    if self.model_cfg.vocab_size < chars.VOCAB.vocab_size:
      raise config_lib.ConfigError(
        f"config.model.vocab_size={self.model_cfg.vocab_size} < "
        f"{chars.VOCAB.vocab_size} (the character vocabulary)"
      )
    self.family = tasks_lib.FAMILIES[c["family"]]
    self.n_examples = c["n_examples"]
    self.seed, self.batch_size = config["seed"], t["batch_size"]
    length = row_length(c["family"], self.n_examples)
    self.T = -(-length // 8) * 8
    if self.T > self.model_cfg.max_seq_len:
      raise config_lib.ConfigError(
        f"config.model.max_seq_len={self.model_cfg.max_seq_len} < the {self.T} "
        f"columns of {self.n_examples} {c['family']} lines"
      )
    self.tokens_per_step = self.batch_size * self.T
    self.flops_per_step = flops.train_flops_per_token(self.model_cfg, self.T) * self.tokens_per_step

  def batch_spec(self) -> dict[str, Field]:
    return rows_fields(self.batch_size, self.T)

  def make_model(self) -> nnx.Module:
    return nn.Transformer(self.model_cfg, rngs=nnx.Rngs(self.seed))

  def train_loss(self, model, batch):
    return lm_loss(model(batch["tokens"]).logits_BTV, batch["targets"], batch["weights"])

  def tokenizer(self):
    return chars.VOCAB

  def eval_loss(self, model, batch):
    """Per-row means, weighted by ``scale`` so the loop's mean over batches is the mean over
    prompts."""
    logits = model(batch["tokens"]).logits_BTV
    scale, targets, weights, late = (
      batch["scale"],
      batch["targets"],
      batch["weights"],
      batch["late"],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    letters = weights * (targets != chars.VOCAB.id_of("\n"))

    def row_mean(x, w):
      return (x * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)

    loss = (row_mean(ce, weights) * scale).sum()
    return loss, {
      "acc": (row_mean(correct, letters) * scale).sum(),
      "acc_late": (row_mean(correct, letters * late) * scale).sum(),
    }


class IclData:
  """Training rows drawn from (seed, global row index) and the fixed single-task evaluation rows."""

  def __init__(self, spec: IclSpec):
    c = spec.config["icl"]
    self.spec, self.family, self.n_examples, self.T = spec, spec.family, spec.n_examples, spec.T
    self.seed, self.batch_size = spec.seed, spec.batch_size
    self.weights = task_weights(spec.config)
    self.stream = loop.RowsStream(
      lambda g: dict(zip(("tokens", "targets", "weights"), self.train_row(g)[1])), self.batch_size
    )
    self.eval_set = (
      loop.RowsEvalSet(eval_rows(spec, c["eval_prompts"]), self.batch_size)
      if c["eval_prompts"] > 0
      else None
    )
    log.info(
      "icl task: family %s (%s weights), %d examples per row, T=%d",
      c["family"],
      c["task_weights"],
      self.n_examples,
      self.T,
    )

  def train_row(self, g: int) -> tuple[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng([self.seed, g, 11])
    task = tasks_lib.sample_task(self.family, rng, self.weights)
    return task.name, example_row(task, self.n_examples, rng, self.T)

  def train_batch(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    return self.stream.train_batch(step, process_index, process_count)


def make_spec(config: Mapping) -> IclSpec:
  return IclSpec(config)


def make_task(config: Mapping) -> Task:
  spec = IclSpec(config)
  return Task(spec, IclData(spec))


def eval_rows(spec: IclSpec, n: int) -> list[dict[str, np.ndarray]]:
  """``n`` fixed single-task rows (task i mod K of the family, seeds disjoint from training);
  ``late`` marks the columns of the last quarter of the lines."""
  fam, line = spec.family, line_length(spec.config["icl"]["family"])
  first_late = 1 + (spec.n_examples - max(spec.n_examples // 4, 1)) * line
  late = (np.arange(spec.T) >= first_late - 1).astype(np.float32)
  rows = []
  for i in range(n):
    rng = np.random.default_rng([spec.seed, i, 977])
    tokens, targets, weights = example_row(
      fam.tasks[i % len(fam.tasks)], spec.n_examples, rng, spec.T
    )
    rows.append({"tokens": tokens, "targets": targets, "weights": weights, "late": late})
  return rows


def run(config: Any, workdir: str) -> loop.Result:
  cfg = config_lib.to_dict(config)
  result = loop.train(cfg, workdir, make_task(cfg))
  if jax.process_index() == 0 and result.eval:
    print(
      "icl final: "
      + "  ".join(f"{k} {v:.4f}" for k, v in result.eval.items())
      + (f"; {result.tokens_per_s:,.0f} tokens/s" if math.isfinite(result.tokens_per_s) else "")
    )
  return result
