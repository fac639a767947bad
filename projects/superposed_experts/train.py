"""Trainer of the superposed model (p1 §3.4): frozen experts, trained blend weights and autoencoders.

    python -m launch.train --config configs/superposed_experts/tiny.py:superpose --workdir DIR

Loss = ``lm_weight`` · cross-entropy of the teacher-forced logits (padding masked by the batch
weights) + ``recon_weight`` · Σ_layers MSE(reconstruction, state of the row's labelled expert).
The experts are loaded from the runs named in ``config.superposed.experts`` (one per expert, expert
0 = the base): a workdir or checkpoint of ours, or a Hugging Face GPT-2 directory. They are frozen
by ``config.optim.frozen``, which must cover every ``experts/...`` parameter.

Evaluation runs the *sequential inference graph* — the merged model a user gets — so ``eval/loss``
and ``eval/perplexity`` are its LM loss, and ``eval/ce/<domain>`` splits it by domain.
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
from superpose.train.lm import lm_loss, model_config
from projects.superposed_experts.model import Superposed, SuperposedConfig

log = logging.getLogger(__name__)

# What a Hugging Face checkpoint must share with config.model to be loaded as an expert.
_ARCH_KEYS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff", "max_seq_len",
              "norm", "norm_eps", "activation", "positions", "tie_embeddings", "use_bias", "attn_scale")


def superposed_section(**overrides) -> ml_collections.ConfigDict:
  """The ``config.superposed`` section with every key and its default (also the schema reference)."""
  s = ml_collections.ConfigDict({
      # Experts: one path per expert (workdir, checkpoint dir or HF GPT-2 dir); expert 0 is the base.
      "experts": (),
      "num_experts": 2,
      # Model (projects.superposed_experts.model.SuperposedConfig).
      "ae_layers": (),
      "train_ae_layers": config_dict.placeholder(tuple),   # None = ae_layers
      "bottleneck": 0, "ae_decoder": "conv", "ae_kernel": 3, "ae_causal": True,
      "blend": "1d", "num_control": 16, "degree": 3, "blend_init": (0.45, 0.55), "bias_scale": 0.0,
      "quantize": False, "embed_blend": "mean",
      "router": False, "router_layer": 0, "router_hidden": 64,
      "kernel": "reference", "kernel_block_rows": 128,   # 'pallas': the fused blend + AE kernel (superpose.kernels)
      # Loss.
      "recon_weight": 3.0, "lm_weight": 1.0,
      "mask_recon": True,        # False: MSE over every position incl. padding, as the notebook
      # Domains (projects.superposed_experts.data); domain k is expert k's, files from data.prepare.
      "domains": ("english", "french"),
      "train_paths": ("", ""),
      "val_paths": ("", ""),
      "eval_batches": 4,         # validation batches per domain in the in-training evaluation
  })
  s.update(overrides)
  return s


def extra_sections() -> dict:
  """What ``check_schema`` accepts beyond ``base_config`` (launch/common.py reads ``config.extra_sections``)."""
  return {"superposed": superposed_section().to_dict()}


def attach_schema(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Mark ``config`` as carrying the ``superposed`` section. A plain attribute, not a field, so that it
  survives the command-line overrides but never enters the config itself (or config.json)."""
  object.__setattr__(config, "extra_sections", extra_sections())
  return config


def superposed_config(config: Mapping) -> SuperposedConfig:
  try:
    return SuperposedConfig.from_dict(model_config(config), config["superposed"])
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(" ".join(str(e).split())) from None


# --- experts ---------------------------------------------------------------------------------------

def _is_hf_dir(path: pathlib.Path) -> bool:
  if not path.is_dir() or ckpt_lib.checkpoint_dir(path).is_dir():
    return False
  return (path / "config.json").exists() and any(
      (path / name).exists() for name in (hf_gpt2.SAFETENSORS_NAME, hf_gpt2.PYTORCH_NAME,
                                          hf_gpt2.SAFETENSORS_NAME + ".index.json"))


def load_expert(path: str, abs_params, expert_cfg) -> Any:
  """One expert's params onto ``abs_params``' shardings, from our checkpoint or an HF GPT-2 directory."""
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(f"config.superposed.experts: {p} does not exist")
  if not _is_hf_dir(p):
    return ckpt_lib.load_params(p, abs_params)
  hf_cfg, params = hf_gpt2.load_hf_gpt2(p)
  diff = [f"{k}: checkpoint {getattr(hf_cfg, k)!r} vs config {getattr(expert_cfg, k)!r}"
          for k in _ARCH_KEYS if getattr(hf_cfg, k) != getattr(expert_cfg, k)]
  if diff:
    raise config_lib.ConfigError(f"config.superposed.experts: {p} does not match config.model ({'; '.join(diff)})")
  return jax.tree.map(lambda x, a: jax.device_put(jnp.asarray(x, a.dtype), a.sharding), params, abs_params)


# --- evaluation data --------------------------------------------------------------------------------

class DomainEvalSet:
  """The per-domain validation sets as one loop EvalSet. Every row carries its domain label and a
  ``domain_scale`` (total batches / that domain's batches) so that the loop's mean over batches of
  ``ce/<domain>`` is the mean over that domain's batches only."""

  def __init__(self, sets: Mapping[str, Any]):
    empty = [name for name, s in sets.items() if s.num_batches < 1]
    if empty:
      raise config_lib.ConfigError(f"validation data of {', '.join(empty)} holds no full batch of "
                                   "config.train.batch_size sequences")
    self.names = list(sets)
    self.index = [(k, i) for k, name in enumerate(self.names) for i in range(sets[name].num_batches)]
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


# --- the task ----------------------------------------------------------------------------------------

class SuperposedTask:
  """A superpose.train.loop Task."""

  def __init__(self, config: Mapping, stream=None, eval_sets: Mapping[str, Any] | None = None):
    """``stream`` / ``eval_sets`` default to projects.superposed_experts.data on ``config``."""
    self.config = config
    s, t = config["superposed"], config["train"]
    self.model_cfg = superposed_config(config)
    e = self.model_cfg.expert
    if t["seq_len"] > e.max_seq_len:
      raise config_lib.ConfigError(f"config.train.seq_len={t['seq_len']} exceeds model.max_seq_len={e.max_seq_len}")
    if len(s["domains"]) != self.model_cfg.num_experts:
      raise config_lib.ConfigError(f"config.superposed.domains={tuple(s['domains'])}: one domain per expert "
                                   f"(num_experts={self.model_cfg.num_experts}; domain k is expert k's)")
    if t["init_from"]:
      raise config_lib.ConfigError("config.train.init_from: a superposed run loads its experts from "
                                   "config.superposed.experts (blend and autoencoders start fresh)")
    if stream is None or eval_sets is None:
      from projects.superposed_experts import data as data_lib
      stream = data_lib.domain_stream(config) if stream is None else stream
      eval_sets = data_lib.domain_eval_sets(config) if eval_sets is None else eval_sets
    self.stream = stream
    self.domains = list(eval_sets) if eval_sets else list(s["domains"])
    self.eval_set = DomainEvalSet(eval_sets) if eval_sets else None
    self.batch_axes = {k: ("batch", "length") for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    self.batch_axes.update(labels=("batch",), domain_scale=("batch",))
    self.tokens_per_step = t["batch_size"] * t["seq_len"]
    self.flops_per_step = train_flops_per_token(self.model_cfg, t["seq_len"]) * self.tokens_per_step
    self.recon_weight, self.lm_weight, self.mask_recon = s["recon_weight"], s["lm_weight"], s["mask_recon"]

  def make_model(self) -> nnx.Module:
    return Superposed(self.model_cfg, rngs=nnx.Rngs(self.config["seed"]))

  def loss(self, model: Superposed, batch: dict):
    if "domain_scale" in batch:  # an evaluation batch (a static fact: the batch's keys)
      return self._eval_loss(model, batch)
    logits, recon, aux = model.train_forward(
        batch["inputs"], batch["labels"], mask_BT=batch["weights"] if self.mask_recon else None,
        positions_BT=batch.get("positions"), segment_ids_BT=batch.get("segment_ids"))
    ce, metrics = lm_loss(logits, batch["targets"], batch["weights"])
    loss = self.lm_weight * ce + self.recon_weight * recon
    metrics.update({"lm_loss": ce, "recon_loss": recon})
    metrics.update({k: v for k, v in aux.items() if k.startswith("recon/")})
    w = aux["weights"]
    for l in range(w.shape[0]):   # the weight of the last expert per layer (α for K = 2)
      metrics[f"alpha/{l}"] = w[l, -1].mean()
    return loss, metrics

  def _eval_loss(self, model: Superposed, batch: dict):
    logits = model(batch["inputs"], positions_BT=batch.get("positions"), segment_ids_BT=batch.get("segment_ids"))
    ce, metrics = lm_loss(logits, batch["targets"], batch["weights"])
    for k, name in enumerate(self.domains):
      metrics[f"ce/{name}"] = ce * jnp.mean(batch["domain_scale"] * (batch["labels"] == k))
    return ce, metrics

  def train_batch(self, step: int, process_index: int, process_count: int):
    return self.stream.batch(step - 1, process_index, process_count)

  def initial_params(self, abs_params):
    """Blend, autoencoders and router freshly initialised; each expert read from its run."""
    paths = self.config["superposed"]["experts"]
    check_experts(paths, self.model_cfg.num_experts)
    shardings = jax.tree.map(lambda a: a.sharding, abs_params)
    fresh_sh = {k: v for k, v in shardings.items() if k != "experts"}

    def init():  # only the non-expert parameters are outputs, so XLA never draws the experts' weights
      _, params, _ = nnx.split(self.make_model(), nnx.Param, ...)
      return {k: v for k, v in state_lib.pure_dict(params).items() if k in fresh_sh}
    params = jax.jit(init, out_shardings=fresh_sh)()
    params["experts"] = {str(k): load_expert(p, abs_params["experts"][str(k)], self.model_cfg.expert)
                         for k, p in enumerate(paths)}
    log.info("experts loaded from %s", ", ".join(map(str, paths)))
    return params


def check_experts(paths, num_experts: int) -> None:
  if len(paths) != num_experts or not all(paths):
    raise config_lib.ConfigError(f"config.superposed.experts={tuple(paths)}: name one run per expert ({num_experts}; "
                                 "expert 0 = the base), each a workdir, checkpoint or HF GPT-2 directory")


def train_flops_per_token(cfg: SuperposedConfig, seq_len: int) -> float:
  """Forward of K experts (2·N + attention) + forward and backward (6·N) of the autoencoders and the
  head; the experts' backward is never run (stop_gradient)."""
  e = cfg.expert
  expert_fwd = 2.0 * (flops.matmul_params(e) - e.d_model * e.padded_vocab) + 2.0 * e.num_layers * seq_len * e.num_heads * e.head_size
  b, kernel = cfg.bottleneck_size, (cfg.ae_kernel if cfg.ae_decoder == "conv" else 1)
  ae = len(cfg.trained_ae_layers) * (e.d_model * b + b * e.d_model * kernel)
  return cfg.num_experts * expert_fwd + 6.0 * (ae + e.d_model * e.padded_vocab)


# --- optimizer checks ---------------------------------------------------------------------------------

def _checked_optim(config: dict, model_cfg: SuperposedConfig) -> dict:
  """Experts must be frozen (weight decay would otherwise shrink them although their gradient is zero);
  a group that matches no parameter (the autoencoder group of a blend-only run) is dropped."""
  abs_params = state_lib.pure_dict(jax.eval_shape(lambda: nnx.split(Superposed(model_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]))
  paths = jax.tree.leaves(optim.param_paths(abs_params))
  o = dict(config["optim"])
  frozen = list(o.get("frozen") or ())
  loose = [p for p in paths if p.startswith("experts/") and not any(re.fullmatch(f, p) for f in frozen)]
  if loose:
    raise config_lib.ConfigError(f"config.optim.frozen={tuple(frozen)} leaves expert parameters trainable "
                                 f"(e.g. {loose[0]}); use 'experts/.*'")
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
  config_lib.check_schema(cfg, extra_sections())
  config_lib.check_train(cfg)
  check_experts(cfg["superposed"]["experts"], superposed_config(cfg).num_experts)
  task = SuperposedTask(cfg)
  cfg = _checked_optim(cfg, task.model_cfg)
  result = loop.train(cfg, workdir, task)
  if result.eval:
    parts = "  ".join(f"{k.removeprefix('eval/ce/')} {v:.4f}" for k, v in result.eval.items() if k.startswith("eval/ce/"))
    loss = result.eval.get("eval/loss", float("nan"))
    print(f"final step {result.step}: superposed val loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.3f}); "
          f"per domain: {parts}")
  return result
