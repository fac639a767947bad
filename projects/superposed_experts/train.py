"""Trainer of every learned way of combining the experts (superpose.train.task: spec + data), by
``config.superposed.method``:

* ``superpose`` — the paper's model (p1 §3.4; model.py): frozen experts, trained blend weights and
  autoencoders. Loss = ``lm_weight`` · cross-entropy of ``train_forward``'s logits (the sequential
  graph by default, so every layer's α is trained) + ``recon_weight`` · Σ_layers MSE(reconstruction,
  state of the row's labelled expert).
* ``merge`` — the learned per-layer weight merge (merge.py): LM loss only.
* ``trunk`` — one trunk plus per-expert low-rank deltas behind a causal per-token gate (trunk.py):
  LM loss + ``gate_label_weight`` · cross-entropy of the gate against the row's domain label.

    python -m launch.train --config configs/superposed_experts/tiny.py:superpose --workdir DIR

Every method trains on the same balanced, labelled domain batches (data.py) with frozen experts. The
experts are loaded from the runs named in ``config.superposed.experts`` (one per expert, expert 0 =
the base): a workdir or checkpoint of ours, or a Hugging Face GPT-2 directory.
``config.optim.frozen`` must cover every parameter that came from them.

Evaluation runs the model a user gets (the sequential inference graph; the merged weights; the gated
trunk), so ``eval/loss`` and ``eval/perplexity`` are its LM loss, and ``eval/ce/<domain>`` splits
it.
"""

from __future__ import annotations

import logging
import math
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from ml_collections import config_dict

from superpose.nn import hf_gpt2
from superpose.train import checkpoint as ckpt_lib
from superpose.train import config as config_lib, flops, loop, optim
from superpose.train import state as state_lib
from superpose.train.lm import model_config
from superpose.train.losses import lm_loss
from superpose.train.task import Field, Task, rows_fields
from projects.superposed_experts.model import Superposed, SuperposedConfig

log = logging.getLogger(__name__)

# What a Hugging Face checkpoint must share with config.model to be loaded as an expert.
_ARCH_KEYS = (
  "vocab_size",
  "d_model",
  "num_layers",
  "num_heads",
  "num_kv_heads",
  "head_dim",
  "d_ff",
  "max_seq_len",
  "norm",
  "norm_eps",
  "activation",
  "positions",
  "tie_embeddings",
  "use_bias",
  "attn_scale",
)


SUPERPOSED: config_lib.Declaration = {
  # Experts.
  "experts": (
    (),
    "one run per expert (workdir, checkpoint dir or HF GPT-2 dir); expert 0 is the base",
  ),
  "num_experts": (2, "K, the experts superposed"),
  # Model (projects.superposed_experts.model.SuperposedConfig).
  "ae_layers": ((), "0-based blocks whose blended output is autoencoded (inference)"),
  "train_ae_layers": (
    config_dict.placeholder(tuple),
    "trained autoencoders (paper: one more, the post-final-norm state); None = ae_layers",
  ),
  "bottleneck": (0, "autoencoder width (0 = int(0.75 · d_model))"),
  "ae_decoder": ("conv", "autoencoder decoder: conv (Conv1d over T, the paper's) | linear"),
  "ae_kernel": (3, "conv decoder: kernel width along the sequence"),
  "ae_causal": (
    True,
    "conv decoder: causal padding (False = the paper's symmetric padding, leaks t+1)",
  ),
  "blend": (
    "1d",
    "1d (SplineBlend: α per layer) | 2d (per layer × dimension) | simplex (K ≥ 3 forces it)",
  ),
  "num_control": (0, "B-spline control points (0 = min(16, L): the paper's 16 at L = 12)"),
  "degree": (3, "B-spline degree"),
  "blend_init": ((0.45, 0.55), "1d: control-point initialisation range"),
  "bias_scale": (0.0, "blend bias init scale (0 = the blend's default: 1d 0.1, 2d 0.01)"),
  "quantize": (False, "2d: round α to 0.1 steps with a straight-through gradient"),
  "embed_blend": (
    "mean",
    "embeddings: mean (mean α over layers, 1-D notebook) | base (Bench notebook)",
  ),
  "router": (False, "input-dependent blend weights (a per-token router)"),
  "router_layer": (0, "router: the layer whose state it reads"),
  "router_hidden": (64, "router: hidden width"),
  "kernel": (
    "reference",
    "blend + autoencoder step: reference | pallas (the fused kernel, superpose.kernels)",
  ),
  "kernel_block_rows": (128, "pallas: rows per block"),
  "train_graph": (
    "sequential",
    "sequential (every α trained) | teacher_forced (the notebook's graph; p1 §3.4)",
  ),
  "method": (
    "superpose",
    "what is trained: superpose (the paper) | merge (per-layer weight merge) | trunk",
  ),
  # method='trunk' (trunk.py).
  "trunk_from": ("", "trunk: expert 0, or the merged weights of a 'merge' run"),
  "rank": (8, "trunk: rank of each expert's low-rank deltas"),
  "delta_vectors": ("full", "trunk: deltas of the vectors (biases, norms): full | none"),
  "delta_embeddings": ("lowrank", "trunk: deltas of the embeddings: lowrank | full | none"),
  "gate_hidden": (32, "trunk: hidden width of the causal gate"),
  "gate_decays": ((0.0, 0.9, 0.98), "trunk: decays of the gate's causal moving averages"),
  "gate_label_weight": (0.1, "trunk: weight of the gate's cross-entropy against the row's domain"),
  "distill_weight": (
    0.0,
    "> 0: + weight · KL(row's expert ‖ model), the experts held as frozen teachers",
  ),
  # Loss.
  "recon_weight": (3.0, "weight of the autoencoders' reconstruction MSE"),
  "lm_weight": (1.0, "weight of the LM cross-entropy"),
  "mask_recon": (True, "False: MSE over every position incl. padding, as the notebook"),
  # Domains (projects.superposed_experts.data); domain k is expert k's, files from data.prepare.
  "domains": (("english", "french"), "one domain per expert (domain k is expert k's)"),
  "train_paths": (("", ""), "training documents per domain (data.prepare writes them)"),
  "val_paths": (("", ""), "validation documents per domain"),
  "eval_batches": (4, "validation batches per domain in the in-training evaluation"),
}
CONFIG_SECTIONS = {"superposed": SUPERPOSED}


def superposed_section(**overrides) -> ml_collections.ConfigDict:
  return config_lib.section(SUPERPOSED, **overrides)


def superposed_config(config: Mapping) -> SuperposedConfig:
  try:
    return SuperposedConfig.from_dict(model_config(config), config["superposed"])
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(" ".join(str(e).split())) from None


# --- experts --------------------------------------------------------------------------------------


def load_expert(path: str, abs_params, expert_cfg) -> Any:
  """One expert's params onto ``abs_params``' shardings, from our checkpoint or an HF GPT-2
  directory."""
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(f"config.superposed.experts: {p} does not exist")
  if not hf_gpt2.is_hf_dir(p):
    return ckpt_lib.load_params(p, abs_params)
  hf_cfg, params = hf_gpt2.load_hf_gpt2(p)
  diff = [
    f"{k}: checkpoint {getattr(hf_cfg, k)!r} vs config {getattr(expert_cfg, k)!r}"
    for k in _ARCH_KEYS
    if getattr(hf_cfg, k) != getattr(expert_cfg, k)
  ]
  if diff:
    raise config_lib.ConfigError(
      f"config.superposed.experts: {p} does not match config.model ({'; '.join(diff)})"
    )
  return jax.tree.map(
    lambda x, a: jax.device_put(jnp.asarray(x, a.dtype), a.sharding), params, abs_params
  )


# --- evaluation data ------------------------------------------------------------------------------


class DomainEvalSet:
  """The per-domain validation sets as one loop EvalSet. Every row carries its domain label and a
  ``domain_scale`` (total batches / that domain's batches) so that the loop's mean over batches of
  ``ce/<domain>`` is the mean over that domain's batches only."""

  def __init__(self, sets: Mapping[str, Any]):
    empty = [name for name, s in sets.items() if s.num_batches < 1]
    if empty:
      raise config_lib.ConfigError(
        f"validation data of {', '.join(empty)} holds no full batch of "
        "config.train.batch_size sequences"
      )
    self.names = list(sets)
    self.index = [
      (k, i) for k, name in enumerate(self.names) for i in range(sets[name].num_batches)
    ]
    self.sets = [sets[n] for n in self.names]
    self.num_batches = len(self.index)

  def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    k, j = self.index[i]
    b = dict(self.sets[k].batch(j, process_index, process_count))
    rows = b["inputs"].shape[0]
    if "labels" not in b:
      b["labels"] = np.full((rows,), k, np.int32)
    b["domain_scale"] = np.full((rows,), self.num_batches / self.sets[k].num_batches, np.float32)
    return b


# --- the task -------------------------------------------------------------------------------------

METHODS = ("superpose", "merge", "trunk")


class SuperposedSpec:
  """Model, losses and batch of every ``config.superposed.method`` (data-free; see
  superpose.train.task)."""

  def __init__(self, config: Mapping):
    """Keys missing from ``config.superposed`` (a run written before they existed) take their
    defaults."""
    config = {**config, "superposed": {**superposed_section().to_dict(), **config["superposed"]}}
    self.config = config
    s, t = config["superposed"], config["train"]
    self.method = s["method"]
    if self.method not in METHODS:
      raise config_lib.ConfigError(
        f"config.superposed.method={self.method!r}: must be one of {', '.join(METHODS)}"
      )
    self.model_cfg = superposed_config(config)
    self.num_experts = self.model_cfg.num_experts
    e = self.model_cfg.expert
    if t["seq_len"] > e.max_seq_len:
      raise config_lib.ConfigError(
        f"config.train.seq_len={t['seq_len']} exceeds model.max_seq_len={e.max_seq_len}"
      )
    if len(s["domains"]) != self.num_experts:
      raise config_lib.ConfigError(
        f"config.superposed.domains={tuple(s['domains'])}: one domain per expert "
        f"(num_experts={self.num_experts}; domain k is expert k's)"
      )
    if t["init_from"]:
      raise config_lib.ConfigError(
        "config.train.init_from: a superposed run loads its experts from "
        "config.superposed.experts (what it trains starts fresh)"
      )
    if self.method == "trunk":
      from projects.superposed_experts import trunk as trunk_lib

      self.trunk_cfg = trunk_lib.trunk_config(config, e)
    self.domains = list(s["domains"])
    self.tokens_per_step = t["batch_size"] * t["seq_len"]
    self.flops_per_step = self.train_flops_per_token(t["seq_len"]) * self.tokens_per_step
    self.recon_weight, self.lm_weight, self.mask_recon = (
      s["recon_weight"],
      s["lm_weight"],
      s["mask_recon"],
    )
    self.gate_label_weight, self.distill_weight = s["gate_label_weight"], s["distill_weight"]
    # Leaves whose every element must receive a gradient (superpose.train.gradcheck): one α per
    # layer.
    self.gradient_elementwise = (
      ("blend/.*", "router/b_out", "lam") if self.method != "trunk" else ("gate/b_out",)
    )

  @property
  def frozen_prefixes(self) -> tuple[str, ...]:
    """Parameters that come from the experts' runs and must stay frozen."""
    return ("trunk/", "teachers/") if self.method == "trunk" else ("experts/",)

  def make_model(self) -> nnx.Module:
    rngs = nnx.Rngs(self.config["seed"])
    if self.method == "merge":
      from projects.superposed_experts.merge import LayerMerge

      return LayerMerge(self.model_cfg.expert, self.num_experts, rngs=rngs)
    if self.method == "trunk":
      from projects.superposed_experts.trunk import OneTrunk

      return OneTrunk(self.trunk_cfg, rngs=rngs)
    return Superposed(self.model_cfg, rngs=rngs)

  def batch_spec(self) -> dict[str, Field]:
    t = self.config["train"]
    return {
      **rows_fields(
        t["batch_size"], t["seq_len"], ("inputs", "targets", "weights"), axes=("batch", "length")
      ),
      "labels": Field((t["batch_size"],), "int32", ("batch",)),
    }

  def tokenizer(self):
    from superpose.data.tokenizers import get_tokenizer

    return get_tokenizer(self.config["data"]["tokenizer"])

  def train_loss(self, model, batch: dict):
    kw = dict(positions_BT=batch.get("positions"), segment_ids_BT=batch.get("segment_ids"))
    if self.method == "merge":
      ce, metrics = lm_loss(
        model(batch["inputs"], stop_experts=True, **kw), batch["targets"], batch["weights"]
      )
      for k in range(self.num_experts - 1):
        metrics[f"lambda/{k + 1}"] = model.lam[...][:, k].mean()
      return ce, metrics
    if self.method == "trunk":
      logits, gate_BTE = model.forward(batch["inputs"], stop_trunk=True, **kw)
      ce, metrics = lm_loss(logits, batch["targets"], batch["weights"])
      w = batch["weights"]
      loss = self.lm_weight * ce
      if self.distill_weight:
        teacher = model.teacher_logprobs(batch["inputs"], batch["labels"], **kw)
        logp_model = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        kl = (jnp.exp(teacher) * (teacher - logp_model)).sum(-1)
        metrics["distill_kl"] = (kl * w).sum() / jnp.maximum(w.sum(), 1.0)
        loss = loss + self.distill_weight * metrics["distill_kl"]
      logp = jax.nn.log_softmax(gate_BTE.astype(jnp.float32), -1)
      label_nll = -jnp.take_along_axis(
        logp, batch["labels"][:, None, None].repeat(logp.shape[1], 1), -1
      )[..., 0]
      gate_ce = (label_nll * w).sum() / jnp.maximum(w.sum(), 1.0)
      probs = jnp.exp(logp)
      metrics.update({"lm_loss": ce, "gate_ce": gate_ce})
      for k in range(self.num_experts):
        metrics[f"gate/{k}"] = (probs[..., k] * w).sum() / jnp.maximum(w.sum(), 1.0)
      return loss + self.gate_label_weight * gate_ce, metrics
    logits, recon, aux = model.train_forward(
      batch["inputs"], batch["labels"], mask_BT=batch["weights"] if self.mask_recon else None, **kw
    )
    ce, metrics = lm_loss(logits, batch["targets"], batch["weights"])
    loss = self.lm_weight * ce + self.recon_weight * recon
    metrics.update({"lm_loss": ce, "recon_loss": recon})
    metrics.update({k: v for k, v in aux.items() if k.startswith("recon/")})
    w = aux["weights"]
    for l in range(w.shape[0]):  # the weight of the last expert per layer (α for K = 2)
      metrics[f"alpha/{l}"] = w[l, -1].mean()
    return loss, metrics

  def eval_loss(self, model, batch: dict):
    logits = model(
      batch["inputs"], positions_BT=batch.get("positions"), segment_ids_BT=batch.get("segment_ids")
    )
    ce, metrics = lm_loss(logits, batch["targets"], batch["weights"])
    for k, name in enumerate(self.domains):
      metrics[f"ce/{name}"] = ce * jnp.mean(batch["domain_scale"] * (batch["labels"] == k))
    return ce, metrics

  def initial_params(self, abs_params):
    """What the method trains freshly initialised; the experts (or the trunk and the deltas' SVD
    initialisation) read from their runs."""
    paths = self.config["superposed"]["experts"]
    check_experts(paths, self.num_experts)
    shardings = jax.tree.map(lambda a: a.sharding, abs_params)
    tops = {p.rstrip("/") for p in self.frozen_prefixes}
    fresh_sh = {k: v for k, v in shardings.items() if k not in tops}

    # only the non-expert parameters are outputs, so XLA never draws the experts' weights
    def init():
      _, params, _ = nnx.split(self.make_model(), nnx.Param, ...)
      return {k: v for k, v in state_lib.pure_dict(params).items() if k in fresh_sh}

    params = jax.jit(init, out_shardings=fresh_sh)()
    if self.method == "trunk":
      from projects.superposed_experts import trunk as trunk_lib

      trunk_abs = abs_params["trunk"]
      experts = [load_expert(p, trunk_abs, self.model_cfg.expert) for p in paths]
      params.update(
        trunk_lib.initial_values(
          self.trunk_cfg, experts, self.config["superposed"]["trunk_from"], abs_params
        )
      )
    else:
      params["experts"] = {
        str(k): load_expert(p, abs_params["experts"][str(k)], self.model_cfg.expert)
        for k, p in enumerate(paths)
      }
    log.info("experts loaded from %s", ", ".join(map(str, paths)))
    return params

  def train_flops_per_token(self, seq_len: int) -> float:
    e = self.model_cfg.expert
    expert_fwd = (
      2.0 * flops.matmul_params(e) + 2.0 * e.num_layers * seq_len * e.num_heads * e.head_size
    )
    if self.method == "merge":  # one merged model, forward and backward through activations (no dW)
      return 2.0 * expert_fwd
    if self.method == "trunk":
      from projects.superposed_experts import trunk as trunk_lib

      extra = trunk_lib.extra_flops_per_token(self.trunk_cfg)
      teachers = self.num_experts * expert_fwd if self.trunk_cfg.distill else 0.0
      return 2.0 * expert_fwd + 3.0 * extra + teachers
    return train_flops_per_token(self.model_cfg, seq_len)


def check_experts(paths, num_experts: int) -> None:
  if len(paths) != num_experts or not all(paths):
    raise config_lib.ConfigError(
      f"config.superposed.experts={tuple(paths)}: name one run per expert ({num_experts}; "
      "expert 0 = the base), each a workdir, checkpoint or HF GPT-2 directory"
    )


class SuperposedData:
  """The balanced, labelled domain batches and the per-domain validation sets
  (projects.superposed_experts.data)."""

  def __init__(self, config: Mapping, stream=None, eval_sets: Mapping[str, Any] | None = None):
    from projects.superposed_experts import data as data_lib

    self.stream = data_lib.domain_stream(config) if stream is None else stream
    eval_sets = data_lib.domain_eval_sets(config) if eval_sets is None else eval_sets
    if eval_sets and list(eval_sets) != list(config["superposed"]["domains"]):
      raise config_lib.ConfigError(
        f"validation sets {list(eval_sets)} are not config.superposed.domains "
        f"{list(config['superposed']['domains'])}"
      )
    self.eval_set = DomainEvalSet(eval_sets) if eval_sets else None

  def train_batch(self, step: int, process_index: int, process_count: int):
    return self.stream.batch(step - 1, process_index, process_count)


def make_spec(config: Mapping) -> SuperposedSpec:
  """The spec with ``config.optim`` resolved as the run trains it (:func:`checked_optim`)."""
  spec = SuperposedSpec(config)
  spec.config = checked_optim(spec.config, spec)
  return spec


def make_task(config: Mapping, stream=None, eval_sets: Mapping[str, Any] | None = None) -> Task:
  """``stream`` / ``eval_sets`` default to projects.superposed_experts.data on ``config``."""
  spec = make_spec(config)
  return Task(spec, SuperposedData(spec.config, stream, eval_sets))


def train_flops_per_token(cfg: SuperposedConfig, seq_len: int) -> float:
  """The paper's model. Teacher-forced: forward of K experts (2·N + attention) + forward and
  backward (6·N) of the autoencoders and the head; the experts' backward is never run. Sequential
  (default): the K experts' forward for the reconstruction targets (when there are autoencoders) +
  the sequential graph's forward and its backward through the experts' activations (2× forward, no
  dW)."""
  e = cfg.expert
  expert_fwd = (
    2.0 * (flops.matmul_params(e) - e.d_model * e.padded_vocab)
    + 2.0 * e.num_layers * seq_len * e.num_heads * e.head_size
  )
  b, kernel = cfg.bottleneck_size, (cfg.ae_kernel if cfg.ae_decoder == "conv" else 1)
  ae = len(cfg.trained_ae_layers) * (e.d_model * b + b * e.d_model * kernel)
  head = e.d_model * e.padded_vocab
  if cfg.train_graph == "teacher_forced":
    return cfg.num_experts * expert_fwd + 6.0 * (ae + head)
  targets = cfg.num_experts * expert_fwd if cfg.trained_ae_layers else 0.0
  return targets + 3.0 * cfg.num_experts * expert_fwd + 6.0 * (ae + head)


# --- optimizer checks -----------------------------------------------------------------------------


def checked_optim(config: dict, task: SuperposedSpec) -> dict:
  """What came from the experts must be frozen (weight decay would otherwise shrink it although its
  gradient is zero); a group that matches no trainable parameter (the autoencoder group of a
  blend-only run, the blend group of a merge) is dropped."""
  abs_params = state_lib.pure_dict(
    jax.eval_shape(lambda: nnx.split(task.make_model(), nnx.Param, ...)[1])
  )
  paths = jax.tree.leaves(optim.param_paths(abs_params))
  o = dict(config["optim"])
  frozen = list(o.get("frozen") or ())
  loose = [
    p
    for p in paths
    if p.startswith(task.frozen_prefixes) and not any(re.fullmatch(f, p) for f in frozen)
  ]
  if loose:
    prefix = next(x for x in task.frozen_prefixes if loose[0].startswith(x))
    raise config_lib.ConfigError(
      f"config.optim.frozen={tuple(frozen)} leaves expert parameters trainable "
      f"(e.g. {loose[0]}); use '{prefix}.*'"
    )
  groups = []
  for g in o.get("groups") or ():
    trainable = [p for p in paths if not any(re.fullmatch(f, p) for f in frozen)]
    if any(re.fullmatch(g["pattern"], p) for p in trainable):
      groups.append(g)
    else:
      log.info("optim group %r matches no trainable parameter of this model; dropped", g["pattern"])
  o["groups"] = tuple(groups)
  return {**config, "optim": o}


def run(config: Any, workdir: str) -> loop.Result:
  cfg = config_lib.to_dict(config)
  check_experts(cfg["superposed"]["experts"], superposed_config(cfg).num_experts)
  task = make_task(cfg)
  result = loop.train(task.spec.config, workdir, task)
  if result.eval:
    parts = "  ".join(
      f"{k.removeprefix('eval/ce/')} {v:.4f}"
      for k, v in result.eval.items()
      if k.startswith("eval/ce/")
    )
    loss = result.eval.get("eval/loss", float("nan"))
    print(
      f"final step {result.step}: {task.spec.method} val loss {loss:.4f} (perplexity "
      f"{math.exp(min(loss, 50)):.3f}); "
      f"per domain: {parts}"
    )
  return result
