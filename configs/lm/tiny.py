"""Tiny byte-level GPT on the embedded Shakespeare sample — the default job (`make run`).

Command:
  python -m launch.train --config configs/lm/tiny.py --workdir workdirs/lm_tiny
Rerunning the same command resumes from the newest checkpoint (once finished, it only re-evaluates).
Expected on a 2-core CPU (README results table): about 5 minutes at ~7k tokens/s; validation loss
about 2.05 nats/byte (2.95 bits/byte, perplexity ≈ 7.7) on two held-out plays.

Variants (`configs/lm/tiny.py:<variant>`):
  (default)  4 layers, d 192, 4 heads, seq 256, batch 16, 500 steps (2.0 M tokens).
  smoke      2 layers, d 64, seq 64, batch 8, 20 steps: the test-suite size.
"""

from superpose.train.config import base_config, model_section


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "superpose.train.lm"
  model = dict(vocab_size=257, d_model=192, num_layers=4, num_heads=4, d_ff=768, max_seq_len=256)
  c.data.path = "sample:shakespeare.jsonl.gz"
  c.data.tokenizer = "bytes"
  c.data.val_documents = 2
  c.optim.update(
    dict(
      lr=3e-3,
      schedule="warmup_cosine",
      warmup_steps=50,
      min_lr_ratio=0.1,
      weight_decay=0.1,
      clip_norm=1.0,
    )
  )
  c.train.update(
    dict(
      steps=500,
      batch_size=16,
      seq_len=256,
      eval_every=100,
      eval_batches=8,
      log_every=50,
      checkpoint_every=100,
    )
  )
  if variant == "smoke":
    model.update(d_model=64, num_layers=2, num_heads=2, d_ff=256, max_seq_len=64)
    c.optim.warmup_steps = 5
    c.train.update(
      dict(
        steps=20,
        batch_size=8,
        seq_len=64,
        eval_every=10,
        eval_batches=2,
        log_every=5,
        checkpoint_every=5,
      )
    )
  elif variant:
    raise ValueError(f"configs/lm/tiny.py: unknown variant {variant!r} (known: '', 'smoke')")
  c.model = model_section("gpt2", **model)
  return c
