"""Next-token language modelling: the trainer of the default job and of every plain LM config."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from flax import nnx

from superpose.data import lm as lm_data, packing
from superpose.data.tokenizers import get_tokenizer
from superpose.nn import Transformer, config as nn_config
from superpose.train import config as config_lib, flops, loop
from superpose.train.losses import lm_loss
from superpose.train.task import Field, Task, rows_fields

log = logging.getLogger(__name__)


def model_config(config: Mapping) -> nn_config.TransformerConfig:
  try:
    return nn_config.from_dict(config["model"])
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(" ".join(str(e).split())) from None


class LMSpec:
  """Next-token prediction with a :class:`superpose.nn.Transformer` (data-free; see
  superpose.train.task)."""

  def __init__(self, config: Mapping):
    self.config = config
    t, d = config["train"], config["data"]
    self.model_cfg = model_config(config)
    if t["seq_len"] > self.model_cfg.max_seq_len:
      raise config_lib.ConfigError(
        f"config.train.seq_len={t['seq_len']} exceeds model.max_seq_len="
        f"{self.model_cfg.max_seq_len}"
      )
    self.packing = bool(d["packing"])
    self.tokens_per_step = t["batch_size"] * t["seq_len"]
    self.flops_per_step = (
      flops.train_flops_per_token(self.model_cfg, t["seq_len"]) * self.tokens_per_step
    )
    self.z_loss = t["z_loss"]

  def batch_spec(self) -> dict[str, Field]:
    t = self.config["train"]
    keys = ("inputs", "targets", "weights") + (("segment_ids", "positions") if self.packing else ())
    return rows_fields(t["batch_size"], t["seq_len"], keys, axes=("batch", "length"))

  def make_model(self) -> nnx.Module:
    return Transformer(self.model_cfg, rngs=nnx.Rngs(self.config["seed"]))

  def train_loss(self, model, batch):
    out = model(
      batch["inputs"], positions_BT=batch.get("positions"), segment_ids_BT=batch.get("segment_ids")
    )
    return lm_loss(out.logits_BTV, batch["targets"], batch["weights"], self.z_loss)

  eval_loss = train_loss

  def tokenizer(self):
    return get_tokenizer(self.config["data"]["tokenizer"])


class LMData:
  """Documents of a file, split by document into training windows and held-out evaluation
  batches."""

  def __init__(self, config: Mapping, model_cfg: nn_config.TransformerConfig):
    t, d = config["train"], config["data"]
    tok = get_tokenizer(d["tokenizer"])
    if model_cfg.vocab_size < tok.vocab_size:
      raise config_lib.ConfigError(
        f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
        f"{d['tokenizer']!r} tokenizer's vocabulary ({tok.vocab_size})"
      )
    docs = lm_data.load_documents(d["path"])
    if d["val_path"]:
      train_docs, val_docs = docs, lm_data.load_documents(d["val_path"])
    else:
      train_docs, val_docs = lm_data.split_documents(docs, d["val_documents"])
    if d[
      "packing"
    ]:  # whole documents packed into rows; attention and positions stay inside each one
      self.train_stream = packing.PackedStream(
        packing.tokenize_documents(train_docs, tok), t["seq_len"], t["batch_size"], config["seed"]
      )
      self.eval_set = (
        packing.PackedEvalSet(
          packing.tokenize_documents(val_docs, tok),
          t["seq_len"],
          t["batch_size"],
          t["eval_batches"],
        )
        if val_docs and t["eval_batches"]
        else None
      )
    else:  # one token stream cut into windows (documents separated by BOS)
      self.train_stream = lm_data.TrainStream(
        lm_data.tokenize(train_docs, tok), t["seq_len"], t["batch_size"], config["seed"]
      )
      self.eval_set = (
        lm_data.EvalSet(
          lm_data.tokenize(val_docs, tok), t["seq_len"], t["batch_size"], t["eval_batches"]
        )
        if val_docs and t["eval_batches"]
        else None
      )
    log.info(
      "data: %d training rows, %s validation batches of %d×%d tokens",
      len(self.train_stream),
      self.eval_set.num_batches if self.eval_set else 0,
      t["batch_size"],
      t["seq_len"],
    )

  def train_batch(self, step: int, process_index: int, process_count: int):
    return self.train_stream.batch(step - 1, process_index, process_count)


def make_spec(config: Mapping) -> LMSpec:
  return LMSpec(config)


def make_task(config: Mapping) -> Task:
  spec = LMSpec(config)  # the config's checks first, then the documents
  return Task(spec, LMData(config, spec.model_cfg))


def run(config: Any, workdir: str) -> loop.Result:
  cfg = config_lib.to_dict(config)
  result = loop.train(cfg, workdir, make_task(cfg))
  if result.eval:
    loss = result.eval.get("eval/loss", float("nan"))
    bits = loss / math.log(2)
    unit = "bits/byte" if cfg["data"]["tokenizer"] == "bytes" else "bits/token"
    speed = (
      f"; {result.tokens_per_s:,.0f} tokens/s, MFU {result.mfu:.1%}"
      if math.isfinite(result.tokens_per_s)
      else ""
    )
    print(
      f"final step {result.step}: val loss {loss:.4f} nats/token ({bits:.3f} {unit}), "
      f"perplexity {math.exp(loss):.3f}{speed}"
    )
  return result
