"""A project of its own in two files (WORKSPACE.md, "How to add a project"): its own data (rows of
bytes repeating a random block of ``config.toy.period`` letters) on the library's LM spec; the
shared loop trains, evaluates and checkpoints it."""

import numpy as np
from superpose.train import config as config_lib, loop
from superpose.train.lm import LMSpec
from superpose.train.task import Task

CONFIG_SECTIONS = {"toy": {"period": (3, "each row repeats a random block of this many letters")}}
make_spec = LMSpec  # data-free: the model, its losses and batch shapes (launch.plan, the loader)


class ToyData:
  def __init__(self, spec):
    c = spec.config
    self.T, self.period, self.seed = c["train"]["seq_len"], c["toy"]["period"], c["seed"]
    self.encode, B = spec.tokenizer().encode, c["train"]["batch_size"]
    self.eval_set = loop.RowsEvalSet([self.row(-1 - i) for i in range(8)], B)  # rows g < 0
    self.train_batch = loop.RowsStream(self.row, B).train_batch  # row g of the seeded order

  def row(self, g):
    rng, T = np.random.default_rng([self.seed, g + 2**20]), self.T
    block = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), self.period))
    ids = np.asarray(self.encode(block * (T // self.period + 2)), np.int32)
    return {"inputs": ids[:T], "targets": ids[1 : T + 1], "weights": np.ones(T, np.float32)}


def make_task(cfg):
  spec = LMSpec(cfg)
  return Task(spec, ToyData(spec))


def run(config, workdir):
  cfg = config_lib.to_dict(config)
  return loop.train(cfg, workdir, make_task(cfg))
