"""Reuse the libraries in your own project: a sharded transformer trained by the shared loop."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")   # 8 fake CPU devices
import jax
import numpy as np
from flax import nnx
from superpose import nn
from superpose.train import config as config_lib, flops, loop, losses, task


class RepeatSpec:   # the model and loss, no data: predict a sequence that repeats every 4 tokens
  def __init__(self, config):
    self.config, self.model_cfg = config, nn.from_dict(config["model"])
    self.tokens_per_step = config["train"]["batch_size"] * 32
    self.flops_per_step = flops.train_flops_per_token(self.model_cfg, 32) * self.tokens_per_step
  def make_model(self): return nn.Transformer(self.model_cfg, rngs=nnx.Rngs(0))
  def train_loss(self, model, b): return losses.lm_loss(model(b["tokens"]).logits_BTV, b["targets"], b["weights"])
  eval_loss = train_loss
  def batch_spec(self): return task.rows_fields(self.config["train"]["batch_size"], 32)


class RepeatData:   # host batches, a pure function of the step
  eval_set = None
  def train_batch(self, step, process_index, process_count):
    rows = np.tile(np.random.default_rng(step).integers(1, 64, (8 // process_count, 4)), 9).astype(np.int32)
    return {"tokens": rows[:, :32], "targets": rows[:, 1:33], "weights": np.ones((len(rows), 32), np.float32)}


c = config_lib.base_config()
c.model = config_lib.model_section("llama", vocab_size=64, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                   max_seq_len=32)
c.mesh.ici = (2, 2, 2)   # data × fsdp × tensor: parameters sharded by their logical axes
c.train.update(steps=30, batch_size=8, seq_len=32, eval_every=0, checkpoint_every=0, progress=False)
c.optim.update(lr=3e-3, warmup_steps=5)
cfg = config_lib.to_dict(c)
result = loop.train(cfg, sys.argv[1], task.Task(RepeatSpec(cfg), RepeatData()))
print(f"trained {result.step} steps on {jax.device_count()} devices")
