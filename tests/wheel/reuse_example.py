# Reuse the libraries in your own project: a sharded transformer trained by the shared loop.
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # 8 fake CPU devices
import jax
import numpy as np
from flax import nnx
from superpose import nn
from superpose.train import config as config_lib, flops, loop, losses, task

c = config_lib.base_config()
c.model = config_lib.model_section("llama", vocab_size=64, d_model=64, num_layers=2, num_heads=4)
c.mesh.ici = (2, 2, 2)  # data × fsdp × tensor: parameters sharded by their logical axes
c.train.update(steps=30, batch_size=8, seq_len=32, eval_every=0, checkpoint_every=0, progress=False)
c.optim.update(lr=3e-3, warmup_steps=5)
cfg = config_lib.to_dict(c)


class RepeatSpec:  # the model and loss, no data: predict a sequence that repeats every 4 tokens
  config, model_cfg, tokens_per_step = cfg, nn.from_dict(cfg["model"]), 8 * 32
  flops_per_step = flops.train_flops_per_token(model_cfg, 32) * tokens_per_step
  make_model = lambda self: nn.Transformer(self.model_cfg, rngs=nnx.Rngs(0))
  batch_spec = lambda self: task.rows_fields(8, 32)

  def train_loss(self, model, b):
    return losses.lm_loss(model(b["tokens"]).logits_BTV, b["targets"], b["weights"])

  eval_loss = train_loss


class RepeatData:  # host batches, a pure function of the step (no evaluation set)
  def train_batch(self, step, process_index, process_count):
    rng = np.random.default_rng(step)
    rows = np.tile(rng.integers(1, 64, (8 // process_count, 4), np.int32), 9)
    return dict(tokens=rows[:, :32], targets=rows[:, 1:33], weights=np.ones((len(rows), 32), "f4"))


result = loop.train(cfg, sys.argv[1], task.Task(RepeatSpec(), RepeatData()))
print(f"trained {result.step} steps on {jax.device_count()} devices")
