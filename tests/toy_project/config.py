"""The toy project's config:
``python -m launch.train --config tests/toy_project/config.py --workdir DIR``."""

from superpose.train.config import base_config, model_section


def get_config():
  c = base_config("tests.toy_project.trainer")  # the shared keys + the trainer's own `toy` section
  c.model = model_section("llama", vocab_size=257, d_model=32, num_layers=2, num_heads=4, d_ff=64)
  c.train.update(steps=6, seq_len=32, eval_every=3, checkpoint_every=3, progress=False)
  c.optim.update(lr=3e-3, warmup_steps=2)
  return c
