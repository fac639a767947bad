"""A project of its own in two files (WORKSPACE.md, "How to add a project"): rows of bytes that repeat a
random block of ``config.toy.period`` letters; the shared loop trains, evaluates and checkpoints it."""
import numpy as np
from flax import nnx
from superpose import nn
from superpose.data.tokenizers import get_tokenizer
from superpose.train import config as config_lib, flops, loop, losses
from superpose.train.task import Task, rows_fields

CONFIG_SECTIONS = {"toy": {"period": (3, "each row repeats a random block of this many letters")}}


class ToySpec:
  def __init__(self, config):
    self.config, self.model_cfg = config, nn.from_dict(config["model"])
    self.B, self.T = config["train"]["batch_size"], config["train"]["seq_len"]
    self.tokens_per_step = self.B * self.T
    self.flops_per_step = flops.train_flops_per_token(self.model_cfg, self.T) * self.tokens_per_step
  def make_model(self): return nn.Transformer(self.model_cfg, rngs=nnx.Rngs(self.config["seed"]))
  def train_loss(self, model, b): return losses.lm_loss(model(b["tokens"]).logits_BTV, b["targets"], b["weights"])
  eval_loss = train_loss
  def batch_spec(self): return rows_fields(self.B, self.T)
  def tokenizer(self): return get_tokenizer("bytes")


class ToyData:
  def __init__(self, spec):
    self.spec, self.period = spec, spec.config["toy"]["period"]
    self.eval_set = loop.RowsEvalSet([self.row(-1 - i) for i in range(8)], spec.B)   # rows g < 0: held out
    self.train_batch = loop.RowsStream(self.row, spec.B).train_batch                  # row g of the seeded order
  def row(self, g):
    rng = np.random.default_rng([self.spec.config["seed"], g + 2 ** 20])
    block = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), self.period))
    ids = np.asarray(self.spec.tokenizer().encode(block * (self.spec.T // self.period + 2)), np.int32)
    return {"tokens": ids[:self.spec.T], "targets": ids[1:self.spec.T + 1], "weights": np.ones(self.spec.T, np.float32)}


def make_spec(cfg): return ToySpec(cfg)
def make_task(cfg):
  spec = ToySpec(cfg)
  return Task(spec, ToyData(spec))


def run(config, workdir):
  cfg = config_lib.to_dict(config)
  return loop.train(cfg, workdir, make_task(cfg))
